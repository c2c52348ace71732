// Package apitest checks HTTP exchanges with the jwks-cache daemon's
// control plane against its contract, api.Spec, with kin-openapi
// (github.com/getkin/kin-openapi): its openapi3 loader and its openapi3filter
// request and response validators. It is meant for tests; the daemon itself
// need not link it.
//
// A Checker loads and validates the document once and is safe for
// concurrent use. It routes by path alone: the document's servers entry
// (http://127.0.0.1:8080) is ignored, so requests to an httptest.Server on
// any address match.
//
//	c, err := apitest.New()
//	...
//	client := &http.Client{Transport: c.Transport(t, http.DefaultTransport)}
//
// Every response that passes through that client is then checked against
// the operation of its request, and a mismatch fails the test.
package apitest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/jwkscache/jwkscache/api"
)

// Load parses api.Spec and validates it as an OpenAPI document. It fails if
// the document does not declare OpenAPI 3.1, for which openapi3filter
// validates bodies with JSON Schema 2020-12.
func Load() (*openapi3.T, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(api.Spec())
	if err != nil {
		return nil, fmt.Errorf("apitest: load openapi.yaml: %w", err)
	}
	if !doc.IsOpenAPI31OrLater() {
		return nil, fmt.Errorf("apitest: openapi.yaml declares OpenAPI %q, not 3.1", doc.OpenAPI)
	}
	if err := doc.Validate(loader.Context); err != nil {
		return nil, fmt.Errorf("apitest: openapi.yaml is not valid: %w", err)
	}
	return doc, nil
}

// NewRouter returns a router that finds the operation of a request by its
// method and path, whatever its host and scheme. It routes on a shallow
// copy of doc without servers: kin-openapi's routers otherwise match the
// request's host and scheme against the servers entry.
func NewRouter(doc *openapi3.T) (routers.Router, error) {
	d := *doc
	d.Servers = nil
	return gorillamux.NewRouter(&d)
}

// Options are the openapi3filter options a Checker validates with:
// undocumented status codes are errors, and the bearerAuth scheme is
// satisfied by any "Authorization: Bearer <token>" header (the token
// itself is the daemon's business).
func Options() *openapi3filter.Options {
	return &openapi3filter.Options{
		IncludeResponseStatus: true,
		AuthenticationFunc:    Authenticate,
	}
}

// Authenticate is an openapi3filter.AuthenticationFunc for the document's
// one security scheme, HTTP bearer: it checks that the request carries a
// bearer token, not that the token is valid.
func Authenticate(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	s := in.SecurityScheme
	if s == nil || s.Type != "http" || !strings.EqualFold(s.Scheme, "bearer") {
		return fmt.Errorf("apitest: unsupported security scheme %q", in.SecuritySchemeName)
	}
	scheme, token, ok := strings.Cut(in.RequestValidationInput.Request.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return errors.New("apitest: no bearer token")
	}
	return nil
}

// Checker validates requests and responses against the contract.
type Checker struct {
	doc    *openapi3.T
	router routers.Router
}

// New loads the contract (see Load) and returns a Checker for it.
func New() (*Checker, error) {
	doc, err := Load()
	if err != nil {
		return nil, err
	}
	r, err := NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("apitest: router: %w", err)
	}
	return &Checker{doc: doc, router: r}, nil
}

// Doc returns the loaded document. Callers must not modify it.
func (c *Checker) Doc() *openapi3.T { return c.doc }

// Route returns the input for validating req and its response: the
// operation req addresses and its path parameters, unescaped. It fails only
// when no operation matches req's method and path; req itself may be
// invalid.
func (c *Checker) Route(req *http.Request) (*openapi3filter.RequestValidationInput, error) {
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		return nil, fmt.Errorf("apitest: %s %s: %w", req.Method, req.URL.Path, err)
	}
	// gorillamux matches the escaped path (so that a kid may hold "%2F")
	// and leaves the values escaped; validate what a handler sees.
	for name, v := range params {
		if u, err := url.PathUnescape(v); err == nil {
			params[name] = u
		}
	}
	return &openapi3filter.RequestValidationInput{
		Request:    req,
		PathParams: params,
		Route:      route,
		Options:    Options(),
	}, nil
}

// CheckRequest validates req against its operation: security (a bearer
// token where one is required), parameters and body. req's body is read and
// put back. The input it returns, nil only when no operation matches, serves
// for CheckResponse even when req is invalid: a test sends invalid requests
// on purpose to check the error answers.
func (c *Checker) CheckRequest(ctx context.Context, req *http.Request) (*openapi3filter.RequestValidationInput, error) {
	in, err := c.Route(req)
	if err != nil {
		return nil, err
	}
	return in, openapi3filter.ValidateRequest(ctx, in)
}

// CheckResponse validates a response to in's request: its status must be
// documented for the operation, its headers and body must match. body is
// the whole body. As openapi3filter does, it skips 304 responses and the
// responses to HEAD requests.
func (c *Checker) CheckResponse(ctx context.Context, in *openapi3filter.RequestValidationInput, status int, header http.Header, body []byte) error {
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in,
		Status:                 status,
		Header:                 header,
		Options:                in.Options,
	}
	out.SetBodyBytes(body)
	return openapi3filter.ValidateResponse(ctx, out)
}

// Transport returns an http.RoundTripper that sends each request with next
// and checks the response with CheckResponse, failing tb (with Errorf) on a
// mismatch or on a request that matches no operation. Requests are not
// validated, so that tests may send invalid ones. The caller gets the
// response with its body intact.
func (c *Checker) Transport(tb testing.TB, next http.RoundTripper) http.RoundTripper {
	return roundTripper{c: c, tb: tb, next: next}
}

type roundTripper struct {
	c    *Checker
	tb   testing.TB
	next http.RoundTripper
}

func (rt roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := rt.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	in, err := rt.c.Route(req)
	if err == nil {
		err = rt.c.CheckResponse(req.Context(), in, resp.StatusCode, resp.Header, body)
	}
	if err != nil {
		rt.tb.Errorf("contract: %s %s: %d: %v", req.Method, req.URL.RequestURI(), resp.StatusCode, err)
	}
	return resp, nil
}

package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/api"
	"github.com/jwkscache/jwkscache/api/apitest"
)

// loadChecker loads the contract once for all tests.
var loadChecker = sync.OnceValues(apitest.New)

func checker(t *testing.T) *apitest.Checker {
	t.Helper()
	c, err := loadChecker()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSpecIsTheFileOnDisk(t *testing.T) {
	disk, err := os.ReadFile("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(api.Spec(), disk) {
		t.Fatal("api.Spec() differs from openapi.yaml")
	}
	s := api.Spec()
	s[0] ^= 0xff
	if !bytes.Equal(api.Spec(), disk) {
		t.Fatal("changing the slice Spec returned changed the embedded document")
	}
}

func TestSpecIsOpenAPI31(t *testing.T) {
	doc := checker(t).Doc()
	if doc.OpenAPI != "3.1.0" {
		t.Errorf("openapi = %q, want 3.1.0", doc.OpenAPI)
	}
	if !doc.IsOpenAPI31OrLater() {
		t.Error("kin-openapi does not take the document for 3.1")
	}
	if doc.Info.Title != "jwks-cache control plane" || doc.Info.Version != "1.0.0" || doc.Info.License == nil {
		t.Errorf("info = %+v", doc.Info)
	}
	if len(doc.Servers) != 1 || doc.Servers[0].URL != "http://127.0.0.1:8080" {
		t.Errorf("servers = %v", doc.Servers)
	}
}

// contract is the list of operations: exactly these, with exactly these
// status codes and this security.
var contract = []struct {
	method, path, id string
	codes            []string
	security         string // bearer, public or optional
}{
	{"GET", "/tenants/{tenantId}/providers", "listProviders", codes("200 400 401 404"), "bearer"},
	{"PUT", "/tenants/{tenantId}/providers/{providerId}", "putProvider", codes("202 400 401 403 404 409 413 415"), "bearer"},
	{"DELETE", "/tenants/{tenantId}/providers/{providerId}", "deleteProvider", codes("204 400 401 404"), "bearer"},
	{"GET", "/tenants/{tenantId}/providers/{providerId}/jwks", "getJwks", codes("200 304 400 404 502 503"), "public"},
	{"POST", "/tenants/{tenantId}/providers/{providerId}/refresh", "refreshProvider", codes("202 400 401 404"), "bearer"},
	{"POST", "/tenants/{tenantId}/providers/{providerId}/keys/{kid}/deny", "denyKey", codes("204 400 401 404"), "bearer"},
	{"DELETE", "/tenants/{tenantId}/providers/{providerId}/keys/{kid}/deny", "allowKey", codes("204 400 401 404"), "bearer"},
	{"GET", "/tenants/{tenantId}/providers/{providerId}/status", "getProviderStatus", codes("200 400 401 404"), "bearer"},
	{"GET", "/healthz", "getHealthz", codes("200"), "public"},
	{"GET", "/readyz", "getReadyz", codes("200 503"), "public"},
	{"GET", "/metrics", "getMetrics", codes("200 401"), "optional"},
	{"GET", "/openapi.yaml", "getOpenAPI", codes("200"), "public"},
}

func codes(s string) []string { return strings.Fields(s) }

func TestOperationsAreTheContract(t *testing.T) {
	doc := checker(t).Doc()
	want := make(map[string]bool)
	for _, w := range contract {
		want[w.method+" "+w.path] = true
	}
	ids := make(map[string]string)
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			key := method + " " + path
			if !want[key] {
				t.Errorf("%s is not in the contract", key)
			}
			if op.OperationID == "" {
				t.Errorf("%s has no operationId", key)
			} else if other, dup := ids[op.OperationID]; dup {
				t.Errorf("%s and %s share operationId %s", key, other, op.OperationID)
			}
			ids[op.OperationID] = key
		}
	}
	for _, w := range contract {
		item := doc.Paths.Value(w.path)
		var op *openapi3.Operation
		if item != nil {
			op = item.GetOperation(w.method)
		}
		if op == nil {
			t.Errorf("%s %s is missing", w.method, w.path)
			continue
		}
		if op.OperationID != w.id {
			t.Errorf("%s %s: operationId %q, want %q", w.method, w.path, op.OperationID, w.id)
		}
		got := slices.Sorted(maps.Keys(op.Responses.Map()))
		if !slices.Equal(got, w.codes) {
			t.Errorf("%s %s: responses %v, want %v", w.method, w.path, got, w.codes)
		}
		var sec string
		switch s := op.Security; {
		case s == nil:
			sec = "unset (inherits the document's)"
		case len(*s) == 0:
			sec = "public"
		case reflect.DeepEqual(*s, openapi3.SecurityRequirements{{"bearerAuth": {}}}):
			sec = "bearer"
		case reflect.DeepEqual(*s, openapi3.SecurityRequirements{{}, {"bearerAuth": {}}}):
			sec = "optional"
		default:
			sec = fmt.Sprint(*s)
		}
		if sec != w.security {
			t.Errorf("%s %s: security %s, want %s", w.method, w.path, sec, w.security)
		}
		if slices.Contains(w.codes, "401") != (w.security != "public") {
			t.Errorf("%s %s: 401 documented = %v with security %s", w.method, w.path, slices.Contains(w.codes, "401"), w.security)
		}
	}
	s := doc.Components.SecuritySchemes["bearerAuth"]
	if s == nil || s.Value.Type != "http" || s.Value.Scheme != "bearer" {
		t.Errorf("bearerAuth = %+v, want type http, scheme bearer", s)
	}
}

func TestErrorAnswersAreErrorResponses(t *testing.T) {
	doc := checker(t).Doc()
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			for code, ref := range op.Responses.Map() {
				where := method + " " + path + " " + code
				r := ref.Value
				n, _ := strconv.Atoi(code)
				switch {
				case n >= 400:
					mt := r.Content["application/json"]
					if len(r.Content) != 1 || mt == nil || mt.Schema == nil || mt.Schema.Ref != "#/components/schemas/ErrorResponse" {
						t.Errorf("%s: content is not an ErrorResponse", where)
					}
				case n == 204 || n == 304:
					if len(r.Content) != 0 {
						t.Errorf("%s: has a body", where)
					}
				case n == 202 && op.OperationID == "refreshProvider":
					if len(r.Content) != 0 {
						t.Errorf("%s: has a body", where)
					}
				default:
					if len(r.Content) != 1 {
						t.Errorf("%s: %d media types, want 1", where, len(r.Content))
					}
				}
				if n == 401 {
					if h := r.Headers["WWW-Authenticate"]; h == nil || !h.Value.Required {
						t.Errorf("%s: no required WWW-Authenticate header", where)
					}
				}
			}
		}
	}
	for _, name := range []string{"ETag", "Last-Modified", "Cache-Control", "Age", "Retry-After", "WWW-Authenticate"} {
		if doc.Components.Headers[name] == nil {
			t.Errorf("components.headers has no %s", name)
		}
	}
}

// Sample bodies.

var (
	t0 = time.Date(2024, 5, 1, 12, 0, 0, 123456789, time.UTC)

	// goStatus has every member of jwkscache.ProviderStatus set.
	goStatus = jwkscache.ProviderStatus{
		TenantID: "acme", ProviderID: "auth0",
		JWKSURL: "https://acme.eu.auth0.com/.well-known/jwks.json", Issuer: "https://acme.eu.auth0.com/",
		State: jwkscache.StateReady, Stale: true, ErrorCount: 2,
		LastError: "jwkscache: acme/auth0: fetch https://acme.eu.auth0.com/.well-known/jwks.json: timeout", LastErrorClass: "timeout",
		LastRefresh: t0, NextRefresh: t0.Add(time.Minute), ExpiresAt: t0.Add(10 * time.Minute), StaleUntil: t0.Add(70 * time.Minute),
		TTLSource: "max-age", ETag: `"abc"`, LastModified: "Wed, 01 May 2024 12:00:00 GMT",
		Keys:               []jwkscache.KeyInfo{{KID: "k1", KTY: "RSA", Alg: "RS256", Use: "sig", Algs: []string{"RS256"}}, {KID: "k2", KTY: "OKP", Crv: "Ed25519", Algs: []string{"EdDSA"}}},
		SkippedKeys:        []jwkscache.SkippedKey{{KID: "hmac", Index: 2, Reason: jwkscache.SkipSymmetric}},
		SkippedKeysOmitted: 3, DeniedKIDs: []string{"k0"},
		Hits: 90, Misses: 10, HitRate: 0.9, StaleServeRatio: 0.25,
		LastSuccess: t0, Source: "network", EventsDropped: 1,
	}
	// controlPlaneMembers are the members the control plane adds to a
	// jwkscache.ProviderStatus.
	controlPlaneMembers = map[string]any{
		"metrics": []any{
			map[string]any{"name": "jwkscache_fetches_total", "value": 12, "labels": map[string]any{"tenant": "acme", "provider": "auth0", "result": "ok"}},
			map[string]any{"name": "jwkscache_keys", "value": 2.0, "labels": map[string]any{}},
		},
		"registrationVersion": "7",
		"storeError":          "store: timeout",
	}
)

// statusJSON returns the JSON of st with the control plane's members, each
// change applied: a nil value deletes the member.
func statusJSON(t *testing.T, st jwkscache.ProviderStatus, change map[string]any) map[string]any {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	maps.Copy(m, controlPlaneMembers)
	for k, v := range change {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	return m
}

// minimalStatus is a status with only the required members, as a new
// provider has it.
func minimalStatus(t *testing.T) map[string]any {
	m := statusJSON(t, jwkscache.ProviderStatus{
		TenantID: "acme", ProviderID: "auth0", JWKSURL: "https://idp.example/jwks", State: jwkscache.StateLoading,
		Keys: []jwkscache.KeyInfo{}, SkippedKeys: []jwkscache.SkippedKey{},
	}, map[string]any{"storeError": nil, "metrics": []any{}})
	return m
}

var jwks = map[string]any{
	"keys": []any{
		map[string]any{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw", "e": "AQAB", "x5c": []any{"MIIC+DCCAeCgAwIBAgIJ"}, "x5t": "dGVzdA", "x5t#S256": "dGVzdA"},
		map[string]any{"kty": "EC", "kid": "k2", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", "x-vendor": true},
		map[string]any{"kty": "OKP", "kid": "k3", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "key_ops": []any{"verify"}},
	},
	"stale":     false,
	"expiresAt": "2024-05-01T12:10:00Z",
}

func errorBody(code, message string, extra ...any) map[string]any {
	m := map[string]any{"error": code, "message": message}
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i].(string)] = extra[i+1]
	}
	return m
}

// with returns a copy of m (one level deep) with the changes applied: a nil
// value deletes the member.
func with(m map[string]any, kv ...any) map[string]any {
	out := maps.Clone(m)
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

// jwksWithKey returns the sample JWKS whose first key has the changes.
func jwksWithKey(kv ...any) map[string]any {
	keys := slices.Clone(jwks["keys"].([]any))
	keys[0] = with(keys[0].(map[string]any), kv...)
	return with(jwks, "keys", keys)
}

const (
	prov    = "/tenants/acme/providers/auth0"
	token   = "Bearer s3cret"
	jsonCT  = "application/json"
	etag    = `"q1w2e3"`
	httpDay = "Wed, 01 May 2024 12:00:00 GMT"
)

// hdr builds a header from name, value pairs.
func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

var (
	jsonH      = hdr("Content-Type", jsonCT)
	unauthH    = hdr("Content-Type", jsonCT, "WWW-Authenticate", `Bearer realm="jwks-cache"`)
	jwksH      = hdr("Content-Type", jsonCT, "ETag", etag, "Last-Modified", httpDay, "Cache-Control", "public, max-age=600", "Age", "42")
	versionH   = hdr("Content-Type", jsonCT, "ETag", `"7"`)
	retryH     = hdr("Content-Type", jsonCT, "Retry-After", "2")
	goodReg    = `{"jwksUrl":"https://acme.eu.auth0.com/.well-known/jwks.json","minTtl":"PT1M","retryPolicy":{"deadline":"PT10S","jitter":"decorrelated"}}`
	notFound   = errorBody("not_found", "provider acme/auth0 is not registered")
	badRequest = errorBody("invalid_request", "bad tenantId", "details", map[string]any{"tenantId": `"a.b": only [A-Za-z0-9-] allowed`})
	unauth     = errorBody("unauthorized", "a bearer token is required")
)

// exchange is one request and the response to check against the contract.
type exchange struct {
	name    string
	method  string
	target  string
	reqH    http.Header
	reqBody string
	badReq  bool // the request is meant to break the contract
	status  int
	respH   http.Header
	body    any // marshalled to JSON unless a string or []byte
}

func (x exchange) request() *http.Request {
	var body io.Reader
	if x.reqBody != "" {
		body = strings.NewReader(x.reqBody)
	}
	req := httptest.NewRequest(x.method, x.target, body)
	for k, v := range x.reqH {
		req.Header[k] = v
	}
	return req
}

func (x exchange) responseBody(t *testing.T) []byte {
	switch b := x.body.(type) {
	case nil:
		return nil
	case string:
		return []byte(b)
	case []byte:
		return b
	}
	b, err := json.Marshal(x.body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func validExchanges(t *testing.T) []exchange {
	auth := hdr("Authorization", token)
	put := hdr("Authorization", token, "Content-Type", jsonCT)
	full := statusJSON(t, goStatus, nil)
	return []exchange{
		// PUT
		{name: "put 202", method: "PUT", target: prov, reqH: put, reqBody: goodReg, status: 202, respH: versionH, body: minimalStatus(t)},
		{name: "put 202 issuer only, If-Match", method: "PUT", target: prov, reqH: hdr("Authorization", token, "Content-Type", jsonCT, "If-Match", `"6"`), reqBody: `{"issuer":"https://acme.eu.auth0.com/"}`, status: 202, respH: versionH, body: full},
		{name: "put 400 registration", method: "PUT", target: prov, reqH: put, reqBody: goodReg, status: 400, respH: jsonH,
			body: errorBody("invalid_registration", "minTtl: must be at least 30s", "details", map[string]any{"minTtl": "must be at least 30s, got 10s", "retryPolicy.deadline": "must be at least attemptTimeout (3s), got 1s"})},
		{name: "put 400 bad tenant", method: "PUT", target: "/tenants/a.b/providers/auth0", reqH: put, reqBody: goodReg, badReq: true, status: 400, respH: jsonH, body: badRequest},
		{name: "put 401", method: "PUT", target: prov, reqH: jsonH, reqBody: goodReg, badReq: true, status: 401, respH: unauthH, body: unauth},
		{name: "put 403", method: "PUT", target: prov, reqH: put, reqBody: `{"jwksUrl":"http://idp.example/jwks"}`, status: 403, respH: jsonH,
			body: errorBody("security_policy", "http is refused", "details", map[string]any{"jwksUrl": "http is refused; use https"})},
		{name: "put 404 other tenant", method: "PUT", target: prov, reqH: put, reqBody: goodReg, status: 404, respH: jsonH, body: notFound},
		{name: "put 409", method: "PUT", target: prov, reqH: hdr("Authorization", token, "Content-Type", jsonCT, "If-Match", `"6"`), reqBody: goodReg, status: 409, respH: jsonH, body: errorBody("conflict", "registration version is 7, not 6")},
		{name: "put 413", method: "PUT", target: prov, reqH: put, reqBody: goodReg, status: 413, respH: jsonH, body: errorBody("too_large", "body over 64 KiB")},
		{name: "put 415", method: "PUT", target: prov, reqH: hdr("Authorization", token, "Content-Type", "text/plain"), reqBody: "jwksUrl=x", badReq: true, status: 415, respH: jsonH, body: errorBody("unsupported_media_type", "the body must be application/json")},
		// DELETE
		{name: "delete 204", method: "DELETE", target: prov, reqH: auth, status: 204},
		{name: "delete 400", method: "DELETE", target: "/tenants/acme/providers/" + strings.Repeat("p", 65), reqH: auth, badReq: true, status: 400, respH: jsonH, body: badRequest},
		{name: "delete 401", method: "DELETE", target: prov, badReq: true, status: 401, respH: unauthH, body: unauth},
		{name: "delete 404", method: "DELETE", target: prov, reqH: auth, status: 404, respH: jsonH, body: notFound},
		// GET jwks
		{name: "jwks 200", method: "GET", target: prov + "/jwks", status: 200, respH: jwksH, body: jwks},
		{name: "jwks 200 kid, no-cache", method: "GET", target: prov + "/jwks?kid=k1", reqH: hdr("Cache-Control", "no-cache"), status: 200, respH: hdr("Content-Type", "application/json; charset=utf-8", "ETag", `""`, "Last-Modified", httpDay, "Cache-Control", "max-age=0", "Age", "0"),
			body: with(jwks, "keys", []any{}, "stale", true)},
		{name: "jwks 304", method: "GET", target: prov + "/jwks", reqH: hdr("If-None-Match", etag, "If-Modified-Since", httpDay), status: 304, respH: hdr("ETag", etag, "Last-Modified", httpDay, "Cache-Control", "max-age=600", "Age", "42")},
		{name: "jwks 400 bad provider", method: "GET", target: "/tenants/acme/providers/a$b/jwks", badReq: true, status: 400, respH: jsonH, body: badRequest},
		{name: "jwks 400 empty kid", method: "GET", target: prov + "/jwks?kid=", badReq: true, status: 400, respH: jsonH, body: errorBody("invalid_request", "kid: empty")},
		{name: "jwks 404 kid", method: "GET", target: prov + "/jwks?kid=rotated", status: 404, respH: jsonH, body: errorBody("not_found", `no key "rotated"`)},
		{name: "jwks 502", method: "GET", target: prov + "/jwks", status: 502, respH: jsonH, body: errorBody("no_keys", "no usable keys: timeout", "errorClass", "timeout")},
		{name: "jwks 502 all denied", method: "GET", target: prov + "/jwks", status: 502, respH: jsonH, body: errorBody("no_keys", "every key is denied")},
		{name: "jwks 503", method: "GET", target: prov + "/jwks", status: 503, respH: retryH, body: errorBody("loading", "first load still running")},
		// refresh
		{name: "refresh 202", method: "POST", target: prov + "/refresh", reqH: auth, status: 202},
		{name: "refresh 400", method: "POST", target: "/tenants/acme_corp/providers/auth0/refresh", reqH: auth, badReq: true, status: 400, respH: jsonH, body: badRequest},
		{name: "refresh 401", method: "POST", target: prov + "/refresh", reqH: hdr("Authorization", "Basic dTpw"), badReq: true, status: 401, respH: unauthH, body: unauth},
		{name: "refresh 404", method: "POST", target: prov + "/refresh", reqH: auth, status: 404, respH: jsonH, body: notFound},
		// deny
		{name: "deny 204", method: "POST", target: prov + "/keys/k1/deny", reqH: auth, status: 204},
		{name: "deny 204 escaped kid", method: "POST", target: prov + "/keys/a%2Fb%20c/deny", reqH: auth, status: 204},
		{name: "deny 400 long kid", method: "POST", target: prov + "/keys/" + strings.Repeat("k", 1025) + "/deny", reqH: auth, badReq: true, status: 400, respH: jsonH, body: errorBody("invalid_request", "kid: over 1024 characters")},
		{name: "deny 401", method: "POST", target: prov + "/keys/k1/deny", badReq: true, status: 401, respH: unauthH, body: unauth},
		{name: "deny 404", method: "POST", target: prov + "/keys/k1/deny", reqH: auth, status: 404, respH: jsonH, body: notFound},
		{name: "allow 204", method: "DELETE", target: prov + "/keys/k1/deny", reqH: auth, status: 204},
		{name: "allow 400", method: "DELETE", target: "/tenants/acme/providers/auth%2F0/keys/k1/deny", reqH: auth, badReq: true, status: 400, respH: jsonH, body: badRequest},
		{name: "allow 401", method: "DELETE", target: prov + "/keys/k1/deny", badReq: true, status: 401, respH: unauthH, body: unauth},
		{name: "allow 404", method: "DELETE", target: prov + "/keys/k1/deny", reqH: auth, status: 404, respH: jsonH, body: notFound},
		// status
		{name: "status 200", method: "GET", target: prov + "/status", reqH: auth, status: 200, respH: versionH, body: full},
		{name: "status 200 minimal", method: "GET", target: prov + "/status", reqH: auth, status: 200, respH: versionH, body: minimalStatus(t)},
		{name: "status 400", method: "GET", target: "/tenants/acme/providers/auth.0/status", reqH: auth, badReq: true, status: 400, respH: jsonH, body: badRequest},
		{name: "status 401", method: "GET", target: prov + "/status", badReq: true, status: 401, respH: unauthH, body: unauth},
		{name: "status 404", method: "GET", target: prov + "/status", reqH: auth, status: 404, respH: jsonH, body: notFound},
		// list
		{name: "list 200", method: "GET", target: "/tenants/acme/providers", reqH: auth, status: 200, respH: jsonH, body: map[string]any{"providers": []any{full, minimalStatus(t)}}},
		{name: "list 200 empty", method: "GET", target: "/tenants/acme/providers", reqH: auth, status: 200, respH: jsonH, body: map[string]any{"providers": []any{}}},
		{name: "list 400", method: "GET", target: "/tenants/" + strings.Repeat("t", 65) + "/providers", reqH: auth, badReq: true, status: 400, respH: jsonH, body: badRequest},
		{name: "list 401", method: "GET", target: "/tenants/acme/providers", badReq: true, status: 401, respH: unauthH, body: unauth},
		{name: "list 404 other tenant", method: "GET", target: "/tenants/globex/providers", reqH: auth, status: 404, respH: jsonH, body: errorBody("not_found", "no such tenant")},
		// operations
		{name: "healthz", method: "GET", target: "/healthz", status: 200, respH: jsonH, body: map[string]any{"status": "ok"}},
		{name: "readyz 200", method: "GET", target: "/readyz", status: 200, respH: jsonH, body: map[string]any{"status": "ok"}},
		{name: "readyz 503", method: "GET", target: "/readyz", status: 503, respH: jsonH, body: errorBody("not_ready", "restoring registrations")},
		{name: "metrics 200", method: "GET", target: "/metrics", status: 200, respH: hdr("Content-Type", "text/plain; version=0.0.4; charset=utf-8"), body: "# TYPE jwkscache_up gauge\njwkscache_up 1\n"},
		{name: "metrics 200 token", method: "GET", target: "/metrics", reqH: auth, status: 200, respH: hdr("Content-Type", "text/plain; version=0.0.4"), body: "jwkscache_up 1\n"},
		{name: "metrics 401", method: "GET", target: "/metrics", status: 401, respH: unauthH, body: unauth},
		{name: "openapi.yaml", method: "GET", target: "/openapi.yaml", status: 200, respH: hdr("Content-Type", "application/yaml"), body: api.Spec()},
	}
}

// TestExchanges validates a sample request and response of every
// operation and status code: ValidateRequest and ValidateResponse work on
// this document, error answers included.
func TestExchanges(t *testing.T) {
	c := checker(t)
	ctx := context.Background()
	covered := make(map[string]bool)
	for _, x := range validExchanges(t) {
		t.Run(x.name, func(t *testing.T) {
			req := x.request()
			in, err := c.CheckRequest(ctx, req)
			if in == nil {
				t.Fatalf("no route: %v", err)
			}
			switch {
			case x.badReq && err == nil:
				t.Error("ValidateRequest accepted a request that breaks the contract")
			case !x.badReq && err != nil:
				t.Errorf("ValidateRequest: %v", err)
			}
			if x.reqBody != "" {
				if b, _ := io.ReadAll(req.Body); string(b) != x.reqBody {
					t.Errorf("request body after validation = %q, want it intact", b)
				}
			}
			if err := c.CheckResponse(ctx, in, x.status, x.respH, x.responseBody(t)); err != nil {
				t.Errorf("ValidateResponse: %v", err)
			}
			covered[in.Route.Method+" "+in.Route.Path+" "+strconv.Itoa(x.status)] = true
		})
	}
	for _, w := range contract {
		for _, code := range w.codes {
			if !covered[w.method+" "+w.path+" "+code] {
				t.Errorf("no sample exchange for %s %s %s", w.method, w.path, code)
			}
		}
	}
}

// TestWrongResponsesFail checks that ValidateResponse refuses responses
// that break the contract.
func TestWrongResponsesFail(t *testing.T) {
	c := checker(t)
	auth := hdr("Authorization", token)
	full := statusJSON(t, goStatus, nil)
	status := func(change ...any) exchange {
		return exchange{method: "GET", target: prov + "/status", reqH: auth, status: 200, respH: versionH, body: with(full, change...)}
	}
	key := func(kv ...any) exchange {
		return exchange{method: "GET", target: prov + "/jwks", status: 200, respH: jwksH, body: jwksWithKey(kv...)}
	}
	jwksHeaders := func(kv ...string) exchange {
		h := jwksH.Clone()
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "" {
				h.Del(kv[i])
			} else {
				h.Set(kv[i], kv[i+1])
			}
		}
		return exchange{method: "GET", target: prov + "/jwks", status: 200, respH: h, body: jwks}
	}
	errorAnswer := func(status int, h http.Header, body any) exchange {
		return exchange{method: "GET", target: prov + "/status", reqH: auth, status: status, respH: h, body: body}
	}
	metric := func(m map[string]any) exchange {
		return status("metrics", []any{m})
	}
	tests := map[string]exchange{
		"state Bogus":                       status("state", "Bogus"),
		"state lower case":                  status("state", "ready"),
		"missing registrationVersion":       status("registrationVersion", nil),
		"missing keys":                      status("keys", nil),
		"missing metrics":                   status("metrics", nil),
		"missing lastError":                 status("lastError", nil),
		"unknown member":                    status("bogus", 1),
		"member in another case":            status("tenantID", "acme"),
		"keys null":                         status("keys", nil, "keys", json.RawMessage("null")),
		"hitRate over 1":                    status("hitRate", 1.5),
		"staleServeRatio negative":          status("staleServeRatio", -0.1),
		"errorCount a string":               status("errorCount", "2"),
		"errorCount fractional":             status("errorCount", 1.5),
		"hits negative":                     status("hits", -1),
		"lastRefresh not a date-time":       status("lastRefresh", "yesterday"),
		"expiresAt without zone":            status("expiresAt", "2024-05-01T12:00:00"),
		"nextRefresh February 30":           status("nextRefresh", "2024-02-30T12:00:00Z"),
		"lastErrorClass unknown":            status("lastErrorClass", "dns"),
		"source unknown":                    status("source", "cache"),
		"tenantId bad":                      status("tenantId", "acme.corp"),
		"registrationVersion with a quote":  status("registrationVersion", `7"`),
		"registrationVersion empty":         status("registrationVersion", ""),
		"skippedKeysOmitted zero":           status("skippedKeysOmitted", 0),
		"keyInfo kty oct":                   status("keys", []any{map[string]any{"kid": "k", "kty": "oct"}}),
		"keyInfo unknown member":            status("keys", []any{map[string]any{"kid": "k", "kty": "RSA", "n": "x"}}),
		"keyInfo without kid":               status("keys", []any{map[string]any{"kty": "RSA"}}),
		"skippedKey reason unknown":         status("skippedKeys", []any{map[string]any{"kid": "k", "index": 0, "reason": "weird"}}),
		"skippedKey without index":          status("skippedKeys", []any{map[string]any{"kid": "k", "reason": "duplicate"}}),
		"metric without labels":             metric(map[string]any{"name": "a", "value": 1}),
		"metric label not a string":         metric(map[string]any{"name": "a", "value": 1, "labels": map[string]any{"le": 0.5}}),
		"metric name bad":                   metric(map[string]any{"name": "a-b", "value": 1, "labels": map[string]any{}}),
		"metric value a string":             metric(map[string]any{"name": "a", "value": "NaN", "labels": map[string]any{}}),
		"status without ETag":               {method: "GET", target: prov + "/status", reqH: auth, status: 200, respH: jsonH, body: full},
		"status ETag unquoted":              {method: "GET", target: prov + "/status", reqH: auth, status: 200, respH: hdr("Content-Type", jsonCT, "ETag", "7"), body: full},
		"put 202 without ETag":              {method: "PUT", target: prov, reqH: hdr("Authorization", token, "Content-Type", jsonCT), reqBody: goodReg, status: 202, respH: jsonH, body: full},
		"list without providers":            {method: "GET", target: "/tenants/acme/providers", reqH: auth, status: 200, respH: jsonH, body: map[string]any{}},
		"list with a bad status":            {method: "GET", target: "/tenants/acme/providers", reqH: auth, status: 200, respH: jsonH, body: map[string]any{"providers": []any{with(full, "state", "Bogus")}}},
		"list an array":                     {method: "GET", target: "/tenants/acme/providers", reqH: auth, status: 200, respH: jsonH, body: []any{full}},
		"jwks private d":                    key("d", "c2VjcmV0"),
		"jwks symmetric k":                  key("kty", "oct", "k", "c2VjcmV0"),
		"jwks without kty":                  key("kty", nil),
		"jwks use enc":                      key("use", "enc"),
		"jwks n not base64url":              key("n", "a+b/"),
		"jwks unknown top-level member":     {method: "GET", target: prov + "/jwks", status: 200, respH: jwksH, body: with(jwks, "extra", 1)},
		"jwks without stale":                {method: "GET", target: prov + "/jwks", status: 200, respH: jwksH, body: with(jwks, "stale", nil)},
		"jwks without expiresAt":            {method: "GET", target: prov + "/jwks", status: 200, respH: jwksH, body: with(jwks, "expiresAt", nil)},
		"jwks without ETag":                 jwksHeaders("ETag", ""),
		"jwks weak ETag":                    jwksHeaders("ETag", `W/"abc"`),
		"jwks without Cache-Control":        jwksHeaders("Cache-Control", ""),
		"jwks Cache-Control without maxage": jwksHeaders("Cache-Control", "no-store"),
		"jwks without Age":                  jwksHeaders("Age", ""),
		"jwks Age negative":                 jwksHeaders("Age", "-1"),
		"jwks Last-Modified RFC 850":        jwksHeaders("Last-Modified", "Wednesday, 01-May-24 12:00:00 GMT"),
		"jwks without Last-Modified":        jwksHeaders("Last-Modified", ""),
		"jwks text/html":                    jwksHeaders("Content-Type", "text/html"),
		"jwks 503 without Retry-After":      {method: "GET", target: prov + "/jwks", status: 503, respH: jsonH, body: errorBody("loading", "loading")},
		"jwks 502 unknown errorClass":       {method: "GET", target: prov + "/jwks", status: 502, respH: jsonH, body: errorBody("no_keys", "x", "errorClass", "dns")},
		"jwks 401 undocumented":             {method: "GET", target: prov + "/jwks", status: 401, respH: unauthH, body: unauth},
		"error code unknown":                errorAnswer(404, jsonH, errorBody("missing", "no such provider")),
		"error without message":             errorAnswer(404, jsonH, map[string]any{"error": "not_found"}),
		"error empty message":               errorAnswer(404, jsonH, errorBody("not_found", "")),
		"error unknown member":              errorAnswer(404, jsonH, errorBody("not_found", "x", "status", 404)),
		"error detail not a string":         errorAnswer(404, jsonH, errorBody("not_found", "x", "details", map[string]any{"minTtl": 1})),
		"error not JSON":                    errorAnswer(404, hdr("Content-Type", "text/plain"), "not found"),
		"401 without WWW-Authenticate":      errorAnswer(401, jsonH, unauth),
		"401 Basic challenge":               errorAnswer(401, hdr("Content-Type", jsonCT, "WWW-Authenticate", `Basic realm="x"`), unauth),
		"500 undocumented":                  errorAnswer(500, jsonH, errorBody("not_found", "x")),
		"403 on status undocumented":        errorAnswer(403, jsonH, errorBody("security_policy", "x")),
		"healthz not ok":                    {method: "GET", target: "/healthz", status: 200, respH: jsonH, body: map[string]any{"status": "degraded"}},
		"readyz 503 not an error":           {method: "GET", target: "/readyz", status: 503, respH: jsonH, body: map[string]any{"status": "ok"}},
		"openapi.yaml without openapi":      {method: "GET", target: "/openapi.yaml", status: 200, respH: hdr("Content-Type", "application/yaml"), body: "info: {}\npaths: {}\n"},
		"openapi.yaml as JSON":              {method: "GET", target: "/openapi.yaml", status: 200, respH: jsonH, body: `{"openapi":"3.1.0","info":{},"paths":{}}`},
	}
	ctx := context.Background()
	for _, name := range slices.Sorted(maps.Keys(tests)) {
		x := tests[name]
		t.Run(name, func(t *testing.T) {
			in, err := c.Route(x.request())
			if err != nil {
				t.Fatal(err)
			}
			err = c.CheckResponse(ctx, in, x.status, x.respH, x.responseBody(t))
			if err == nil {
				t.Fatal("ValidateResponse accepted a response that breaks the contract")
			}
			t.Log(firstLine(err))
		})
	}
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// TestWrongRequestsFail checks that ValidateRequest refuses requests that
// break the contract.
func TestWrongRequestsFail(t *testing.T) {
	c := checker(t)
	put := func(body string) exchange {
		return exchange{method: "PUT", target: prov, reqH: hdr("Authorization", token, "Content-Type", jsonCT), reqBody: body}
	}
	tests := map[string]exchange{
		"put no body":                    put(""),
		"put neither jwksUrl nor issuer": put(`{"minTtl":"PT1M"}`),
		"put unknown member":             put(`{"jwksUrl":"https://a.example/k","bogus":1}`),
		"put member in another case":     put(`{"jwksURL":"https://a.example/k"}`),
		"put duration a number":          put(`{"jwksUrl":"https://a.example/k","minTtl":30}`),
		"put duration Go syntax":         put(`{"jwksUrl":"https://a.example/k","minTtl":"30s"}`),
		"put duration with months":       put(`{"jwksUrl":"https://a.example/k","maxTtl":"P1M"}`),
		"put jitter unknown":             put(`{"jwksUrl":"https://a.example/k","retryPolicy":{"jitter":"random"}}`),
		"put retryPolicy unknown":        put(`{"jwksUrl":"https://a.example/k","retryPolicy":{"retries":1}}`),
		"put maxRetries 11":              put(`{"jwksUrl":"https://a.example/k","retryPolicy":{"maxRetries":11}}`),
		"put maxRedirects 11":            put(`{"jwksUrl":"https://a.example/k","maxRedirects":11}`),
		"put maxRedirects negative":      put(`{"jwksUrl":"https://a.example/k","maxRedirects":-1}`),
		"put maxResponseBytes 0":         put(`{"jwksUrl":"https://a.example/k","maxResponseBytes":0}`),
		"put allowHttp a string":         put(`{"jwksUrl":"https://a.example/k","allowHttp":"true"}`),
		"put allowedDomains upper case":  put(`{"jwksUrl":"https://a.example/k","allowedDomains":["Example.com"]}`),
		"put allowedDomains dot":         put(`{"jwksUrl":"https://a.example/k","allowedDomains":["example.com."]}`),
		"put allowedDomains wildcard":    put(`{"jwksUrl":"https://a.example/k","allowedDomains":["*.example.com"]}`),
		"put pinnedSpki short":           put(`{"jwksUrl":"https://a.example/k","pinnedSpki":["AAAA"]}`),
		"put tenantId bad":               put(`{"jwksUrl":"https://a.example/k","tenantId":"a_b"}`),
		"put not an object":              put(`["https://a.example/k"]`),
		"put If-Match empty":             {method: "PUT", target: prov, reqH: hdr("Authorization", token, "Content-Type", jsonCT, "If-Match", ""), reqBody: goodReg},
		"put text/plain":                 {method: "PUT", target: prov, reqH: hdr("Authorization", token, "Content-Type", "text/plain"), reqBody: goodReg},
		"put no token":                   {method: "PUT", target: prov, reqH: hdr("Content-Type", jsonCT), reqBody: goodReg},
		"status Basic auth":              {method: "GET", target: prov + "/status", reqH: hdr("Authorization", "Basic dTpw")},
		"status empty token":             {method: "GET", target: prov + "/status", reqH: hdr("Authorization", "Bearer ")},
		"jwks long kid":                  {method: "GET", target: prov + "/jwks?kid=" + strings.Repeat("k", 1025)},
		"jwks bad tenant":                {method: "GET", target: "/tenants/" + strings.Repeat("t", 65) + "/providers/p/jwks"},
		"deny bad provider":              {method: "POST", target: "/tenants/acme/providers/a.b/keys/k/deny", reqH: hdr("Authorization", token)},
	}
	ctx := context.Background()
	for _, name := range slices.Sorted(maps.Keys(tests)) {
		x := tests[name]
		t.Run(name, func(t *testing.T) {
			in, err := c.CheckRequest(ctx, x.request())
			if in == nil {
				t.Fatalf("no route: %v", err)
			}
			if err == nil {
				t.Fatal("ValidateRequest accepted a request that breaks the contract")
			}
			t.Log(firstLine(err))
		})
	}
	for _, target := range []string{"/tenants/acme/providers/auth0/keys", "/tenants/acme", "/v1/healthz", "/tenants/acme/providers/auth0/jwks/extra"} {
		if _, err := c.Route(httptest.NewRequest("GET", target, nil)); err == nil {
			t.Errorf("GET %s found a route", target)
		}
	}
	if _, err := c.Route(httptest.NewRequest("PATCH", prov, nil)); err == nil {
		t.Error("PATCH found a route")
	}
}

// TestRoutesIgnoreHost checks that routing works on any host and scheme,
// as it must for an httptest.Server.
func TestRoutesIgnoreHost(t *testing.T) {
	c := checker(t)
	for _, u := range []string{"http://127.0.0.1:8080/healthz", "http://127.0.0.1:41234/healthz", "https://jwks.internal/healthz", "/healthz"} {
		if _, err := c.Route(httptest.NewRequest("GET", u, nil)); err != nil {
			t.Errorf("GET %s: %v", u, err)
		}
	}
}

// TestPathParamsUnescaped checks that path parameters are validated as a
// handler sees them (r.PathValue): unescaped.
func TestPathParamsUnescaped(t *testing.T) {
	c := checker(t)
	for target, want := range map[string]string{
		prov + "/keys/a%2Fb%20c/deny":                           "a/b c",
		prov + "/keys/%E2%82%AC/deny":                           "€",
		prov + "/keys/" + strings.Repeat("%2F", 1024) + "/deny": strings.Repeat("/", 1024),
	} {
		req := httptest.NewRequest("POST", target, nil)
		req.Header.Set("Authorization", token)
		in, err := c.CheckRequest(context.Background(), req)
		if err != nil {
			t.Errorf("%s: %v", target, err)
			continue
		}
		if got := in.PathParams["kid"]; got != want {
			t.Errorf("%s: kid %q, want %q", target, got, want)
		}
	}
	req := httptest.NewRequest("GET", "/tenants/acm%65/providers", nil)
	req.Header.Set("Authorization", token)
	if in, err := c.CheckRequest(context.Background(), req); err != nil || in.PathParams["tenantId"] != "acme" {
		t.Errorf("acm%%65: %v", err)
	}
}

// jsonNames returns the JSON member names of struct type t, and those that
// may be omitted.
func jsonNames(t reflect.Type) (names, optional []string) {
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		names = append(names, name)
		if strings.Contains(opts, "omitempty") || strings.Contains(opts, "omitzero") {
			optional = append(optional, name)
		}
	}
	return names, optional
}

func schema(t *testing.T, name string) *openapi3.Schema {
	t.Helper()
	s := checker(t).Doc().Components.Schemas[name]
	if s == nil {
		t.Fatalf("no schema %s", name)
	}
	return s.Value
}

// TestSchemasMatchGoTypes checks that the status schemas list every JSON
// member of their Go types, with the same optionality, and no other.
func TestSchemasMatchGoTypes(t *testing.T) {
	for _, tt := range []struct {
		schema string
		typ    reflect.Type
		extra  map[string]bool // member: required
	}{
		{"ProviderStatus", reflect.TypeFor[jwkscache.ProviderStatus](), map[string]bool{"metrics": true}},
		{"KeyInfo", reflect.TypeFor[jwkscache.KeyInfo](), nil},
		{"SkippedKey", reflect.TypeFor[jwkscache.SkippedKey](), nil},
	} {
		s := schema(t, tt.schema)
		names, optional := jsonNames(tt.typ)
		var req []string
		for _, n := range names {
			if !slices.Contains(optional, n) {
				req = append(req, n)
			}
		}
		for n, r := range tt.extra {
			names = append(names, n)
			if r {
				req = append(req, n)
			}
		}
		slices.Sort(names)
		slices.Sort(req)
		if got := slices.Sorted(maps.Keys(s.Properties)); !slices.Equal(got, names) {
			t.Errorf("%s: properties %v, want %v", tt.schema, got, names)
		}
		if got := slices.Sorted(slices.Values(s.Required)); !slices.Equal(got, req) {
			t.Errorf("%s: required %v, want %v", tt.schema, got, req)
		}
		if s.AdditionalProperties.Has == nil || *s.AdditionalProperties.Has {
			t.Errorf("%s: additionalProperties is not false", tt.schema)
		}
	}
	// State: every name the Go type marshals.
	var states []any
	for s := jwkscache.StateEmpty; ; s++ {
		b, err := s.MarshalText()
		if err != nil {
			break
		}
		states = append(states, string(b))
	}
	if got := schema(t, "State").Enum; !reflect.DeepEqual(got, states) {
		t.Errorf("State enum %v, want %v", got, states)
	}
}

// TestRegistrationSchemaMatchesGo checks the Registration schema against
// jwkscache.Registration's JSON form both ways: what Go writes validates and
// uses every property, and what the schema allows Go reads.
func TestRegistrationSchemaMatchesGo(t *testing.T) {
	c := checker(t)
	full := jwkscache.Registration{
		TenantID: "acme", ProviderID: "auth0",
		JWKSURL: "https://acme.eu.auth0.com/.well-known/jwks.json", Issuer: "https://acme.eu.auth0.com/",
		AllowHTTP: true, AllowedDomains: []string{"auth0.com"},
		RefreshEarly: time.Minute, StaleWhileError: -1, MinTTL: 45 * time.Second, MaxTTL: 36 * time.Hour,
		MaxResponseBytes: 1 << 16, NegativeCacheTTL: 90 * time.Second, MaxRedirects: 5,
		PinnedSPKI:     []string{"47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"},
		PrefetchJitter: 1500 * time.Millisecond,
		Retry: jwkscache.RetryPolicy{
			MaxRetries: -1, AttemptTimeout: 2 * time.Second, InitialBackoff: 100 * time.Millisecond,
			MaxBackoff: time.Second, Deadline: 30 * time.Second, Jitter: jwkscache.JitterNone,
		},
	}
	if err := full.Validate(); err != nil {
		t.Fatalf("sample registration: %v", err)
	}
	b, err := json.Marshal(full)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	reg := schema(t, "Registration")
	if got, want := slices.Sorted(maps.Keys(m)), slices.Sorted(maps.Keys(reg.Properties)); !slices.Equal(got, want) {
		t.Errorf("Go writes %v, schema has %v", got, want)
	}
	rp := schema(t, "RetryPolicy")
	if got, want := slices.Sorted(maps.Keys(m["retryPolicy"].(map[string]any))), slices.Sorted(maps.Keys(rp.Properties)); !slices.Equal(got, want) {
		t.Errorf("Go writes retryPolicy %v, schema has %v", got, want)
	}
	req := httptest.NewRequest("PUT", prov, bytes.NewReader(b))
	req.Header.Set("Authorization", token)
	req.Header.Set("Content-Type", jsonCT)
	if _, err := c.CheckRequest(context.Background(), req); err != nil {
		t.Errorf("the JSON Go writes does not validate: %v\n%s", err, b)
	}
	// Go reads the JSON that validates, the "off" values included.
	var back jwkscache.Registration
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("Go does not read back %s: %v", b, err)
	}
	if !reflect.DeepEqual(back, full) {
		t.Errorf("round trip: got %+v, want %+v", back, full)
	}
	for _, x := range validExchanges(t) {
		if x.method != "PUT" || x.badReq || x.status != 202 {
			continue
		}
		var r jwkscache.Registration
		if err := json.Unmarshal([]byte(x.reqBody), &r); err != nil {
			t.Errorf("Go does not read %s: %v", x.reqBody, err)
		}
	}
}

// durationCorpus holds strings on both sides of the ISO-8601 rules.
var durationCorpus = []string{
	"PT0S", "PT30S", "PT0.25S", "PT0,25S", "PT1H", "PT1H30M", "PT1H30M15.5S", "P1D", "P1W", "P1W2D", "P1DT2H", "P1W1DT1H1M1S",
	"P1.5D", "P0.5W", "PT1.5H", "PT1.5M", "P007D", "PT100000S", "P1DT0S",
	"", "P", "PT", "P1", "P1DT", "PT1", "1D", "p1d", "pt1s", "PT1s", "P1Y", "P1M", "PT1Y", "PT1D", "P1H", "P1S", "PT1M1H", "P1D1W",
	"PT1H1H", "P1.5DT1H", "PT1.5H1M", "P.5D", "P1.D", "PT1..5S", "PT1.5.5S", "-PT1S", "P-1D", "PT+1S", "PT 1S", "PT1S ", " PT1S",
	"PTT1S", "P1DTT1S", "P1TD", "PT1,5,5S", "PT1e3S", "P1W1W", "PT1S1S", "PT1M1M",
}

// TestDurationPatternMatchesGo checks the Duration pattern against the
// parser of the JSON form: they agree on every string but those too long
// for a time.Duration, which only Go refuses.
func TestDurationPatternMatchesGo(t *testing.T) {
	pattern := regexp.MustCompile(schema(t, "Duration").Pattern)
	goAccepts := func(s string) (bool, string) {
		doc, _ := json.Marshal(map[string]any{"jwksUrl": "https://a.example/k", "minTtl": s})
		var r jwkscache.Registration
		err := json.Unmarshal(doc, &r)
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	}
	check := func(s string) {
		ok, msg := goAccepts(s)
		if match := pattern.MatchString(s); match != ok && !(match && strings.Contains(msg, "too long")) {
			t.Errorf("%q: pattern matches %v, Go accepts %v (%s)", s, match, ok, msg)
		}
	}
	for _, s := range durationCorpus {
		check(s)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	const alphabet = "PTWDHMSY0159.,-"
	for range 20000 {
		b := []byte{'P'}
		for range rng.IntN(9) {
			b = append(b, alphabet[rng.IntN(len(alphabet))])
		}
		check(string(b))
	}
	if ok, msg := goAccepts("P99999999W"); ok || !strings.Contains(msg, "too long") || !pattern.MatchString("P99999999W") {
		t.Errorf("P99999999W: Go accepts %v (%s)", ok, msg)
	}
}

// recordingTB records Errorf calls.
type recordingTB struct {
	testing.TB
	errs []string
}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// TestTransport checks the RoundTripper of apitest against a live server:
// a conforming answer passes, a wrong one is reported, and the caller gets
// the body intact either way.
func TestTransport(t *testing.T) {
	c := checker(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			w.Header().Set("Content-Type", jsonCT)
			io.WriteString(w, `{"status":"ok"}`)
		case "/openapi.yaml":
			w.Header().Set("Content-Type", "application/yaml")
			w.Write(api.Spec())
		case "/readyz":
			w.Header().Set("Content-Type", jsonCT)
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"status":"starting"}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	for _, tt := range []struct {
		path string
		errs int
	}{
		{"/healthz", 0},
		{"/openapi.yaml", 0},
		{"/readyz", 1},  // 503 without an ErrorResponse
		{"/nowhere", 1}, // no such operation
		{"/metrics", 1}, // 404 is not documented
	} {
		rec := &recordingTB{TB: t}
		client := &http.Client{Transport: c.Transport(rec, http.DefaultTransport)}
		resp, err := client.Get(srv.URL + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || len(body) == 0 {
			t.Errorf("GET %s: body %q, %v", tt.path, body, err)
		}
		if len(rec.errs) != tt.errs {
			t.Errorf("GET %s: %d contract errors, want %d: %q", tt.path, len(rec.errs), tt.errs, rec.errs)
		}
	}
}

package controlplane_test

import (
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/controlplane"
)

// specOperations returns "METHOD path" of every operation of the contract.
func specOperations(t *testing.T) map[string][]string {
	t.Helper()
	ops := make(map[string][]string) // path -> methods
	for path, item := range checker(t).Doc().Paths.Map() {
		for method := range item.Operations() {
			ops[path] = append(ops[path], method)
		}
	}
	return ops
}

// rawResp sends a request that matches no operation of the contract (so
// that apitest cannot route it) and checks that the answer is an
// ErrorResponse by the contract's schema.
func rawResp(t *testing.T, e *env, method, target string, kv ...string) *resp {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Add(kv[i], kv[i+1])
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	res := rec.Result()
	b, _ := io.ReadAll(res.Body)
	if method != http.MethodHead {
		checkErrorResponse(t, e, b)
	}
	return &resp{status: res.StatusCode, header: res.Header, body: b}
}

// checkErrorResponse validates b against the ErrorResponse schema.
func checkErrorResponse(t *testing.T, e *env, b []byte) {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Errorf("not JSON: %q", b)
		return
	}
	if err := e.c.Doc().Components.Schemas["ErrorResponse"].Value.VisitJSON(v); err != nil {
		t.Errorf("not an ErrorResponse: %s: %v", b, err)
	}
}

// fill returns path with valid values for its parameters.
func fill(path string) string {
	return strings.NewReplacer("{tenantId}", "acme", "{providerId}", "auth0", "{kid}", "k1").Replace(path)
}

// The handler serves exactly the operations of the contract: its route
// table matches the document both ways, every documented method of every
// path is served, every other method gets 405 with Allow, and paths
// outside the document get 404.
func TestRoutesAreTheContract(t *testing.T) {
	e := newEnv(t, func(_ *jwkscache.Options, co *controlplane.Options) {
		co.Metrics = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			io.WriteString(w, "jwkscache_up 1\n")
		})
	})
	e.register(t, "acme", "auth0", "k1")
	ops := specOperations(t)

	var spec []string
	for path, methods := range ops {
		for _, m := range methods {
			spec = append(spec, m+" "+path)
		}
	}
	slices.Sort(spec)
	got := controlplane.Routes(e.h)
	slices.Sort(got)
	if !slices.Equal(got, spec) {
		t.Errorf("the handler routes\n%v\nthe contract has\n%v", got, spec)
	}

	probe := []string{"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"}
	for _, path := range slices.Sorted(maps.Keys(ops)) {
		methods := ops[path]
		target := fill(path)
		getStatus := 0
		for _, method := range probe {
			documented := slices.Contains(methods, method)
			switch {
			case documented:
				body, kv := "", admin
				if method == "PUT" {
					body, kv = `{"jwksUrl":"https://idp.test/acme/auth0"}`, hdrs(admin, asJSON)
				}
				r := e.do(t, method, target, body, kv...)
				if method == "GET" {
					getStatus = r.status
				}
				if r.status == http.StatusMethodNotAllowed || r.status == http.StatusNotFound && strings.Contains(string(r.body), "no such route") {
					t.Errorf("%s %s: %d %s: a documented operation is not served", method, target, r.status, clip(r.body))
				}
			case method == "HEAD" && slices.Contains(methods, "GET"):
				// net/http answers HEAD with the GET handler (and drops
				// the body).
				r := rawResp(t, e, method, target, admin...)
				if r.status != getStatus {
					t.Errorf("HEAD %s: %d, GET got %d", target, r.status, getStatus)
				}
			default:
				r := rawResp(t, e, method, target, admin...)
				if r.status != http.StatusMethodNotAllowed {
					t.Errorf("%s %s: %d, want 405", method, target, r.status)
					continue
				}
				want := slices.Clone(methods)
				if slices.Contains(want, "GET") {
					want = append(want, "HEAD")
				}
				allow := strings.Split(r.header.Get("Allow"), ", ")
				slices.Sort(allow)
				slices.Sort(want)
				if !slices.Equal(allow, want) {
					t.Errorf("%s %s: Allow %v, want %v", method, target, allow, want)
				}
				if code := r.errorCode(t); code != "invalid_request" {
					t.Errorf("%s %s: error %q", method, target, code)
				}
			}
		}
	}

	// Paths the contract lacks: 404 not_found, whatever the method.
	for _, target := range []string{
		"/", "/tenants", "/tenants/acme", "/tenants/acme/", "/tenants/acme/providers/",
		"/tenants/acme/providers/auth0/", "/tenants/acme/providers/auth0/keys",
		"/tenants/acme/providers/auth0/keys/k1", "/tenants/acme/providers/auth0/keys/k1/allow",
		"/tenants/acme/providers/auth0/jwks/extra", "/tenants/acme/providers/auth0/status/x",
		"/tenants/acme/providers/auth0/refresh/now", "/v1/healthz", "/healthz/", "/health",
		"/openapi.json", "/metrics/x", "/debug/pprof/", "/tenants//providers",
		"/tenants/acme/../acme/providers", "/tenants/acme/./providers", "/tenants/acme/providers/auth0/jwks.json",
		"/TENANTS/acme/providers", "/tenants/acme/Providers",
	} {
		if _, err := e.c.Route(httptest.NewRequest("GET", target, nil)); err == nil {
			t.Errorf("%s is an operation of the contract; fix the probe list", target)
		}
		for _, method := range []string{"GET", "POST", "DELETE"} {
			r := rawResp(t, e, method, target, admin...)
			if r.status != http.StatusNotFound || r.errorCode(t) != "not_found" {
				t.Errorf("%s %s: %d %s, want 404 not_found", method, target, r.status, clip(r.body))
			}
			if r.header.Get("Location") != "" {
				t.Errorf("%s %s: redirects to %s", method, target, r.header.Get("Location"))
			}
		}
	}
}

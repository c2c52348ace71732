package controlplane_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jwkscache/jwkscache/controlplane"
	"github.com/jwkscache/jwkscache/internal/testidp"
)

var cacheControlRE = regexp.MustCompile(`^public, max-age=([0-9]+)$`)

// maxAgeOf returns the max-age of a jwks answer.
func maxAgeOf(t *testing.T, h http.Header) int64 {
	t.Helper()
	m := cacheControlRE.FindStringSubmatch(h.Get("Cache-Control"))
	if m == nil {
		t.Fatalf("Cache-Control %q", h.Get("Cache-Control"))
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

func TestJWKSHeaders(t *testing.T) {
	e := newEnv(t)
	e.register(t, "acme", "auth0", "k1", "k2")
	sj, err := e.m.JWKS(context.Background(), "acme", "auth0")
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	r := e.doValid(t, "GET", prov+"/jwks", "")
	after := time.Now()
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if string(r.body) != string(sj.Body) {
		t.Errorf("body %s, the Manager serves %s", r.body, sj.Body)
	}
	h := r.header
	if h.Get("Content-Type") != "application/json" || h.Get("ETag") != sj.ETag || h.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("headers %v", h)
	}
	if h.Get("Content-Length") != strconv.Itoa(len(sj.Body)) {
		t.Errorf("Content-Length %s", h.Get("Content-Length"))
	}
	lm, err := http.ParseTime(h.Get("Last-Modified"))
	if err != nil || !lm.Equal(sj.LastModified.Truncate(time.Second)) {
		t.Errorf("Last-Modified %s, document's %v", h.Get("Last-Modified"), sj.LastModified)
	}
	// max-age is the remaining freshness, Age the time since the fetch.
	maxAge := maxAgeOf(t, h)
	if hi, lo := int64(sj.ExpiresAt.Sub(before)/time.Second), int64(sj.ExpiresAt.Sub(after)/time.Second); maxAge > hi || maxAge < lo {
		t.Errorf("max-age %d, want in [%d, %d]", maxAge, lo, hi)
	}
	age, err := strconv.ParseInt(h.Get("Age"), 10, 64)
	if lo, hi := int64(before.Sub(sj.FetchedAt)/time.Second), int64(after.Sub(sj.FetchedAt)/time.Second); err != nil || age < lo || age > hi {
		t.Errorf("Age %s, want in [%d, %d]", h.Get("Age"), lo, hi)
	}
	if maxAge > 3600 || maxAge < 3500 {
		t.Errorf("max-age %d for a one-hour key set", maxAge)
	}
	if kids := kidsOf(t, r.body); !slices.Equal(kids, []string{"k1", "k2"}) {
		t.Errorf("kids %v", kids)
	}
}

// check304 checks a 304: no body, and the headers of the 200 it stands for.
func check304(t *testing.T, r, ok *resp) {
	t.Helper()
	if r.status != http.StatusNotModified {
		t.Fatalf("%d %s, want 304", r.status, r.body)
	}
	if len(r.body) != 0 {
		t.Errorf("304 with a body: %q", r.body)
	}
	for _, name := range []string{"ETag", "Last-Modified", "Age"} {
		if r.header.Get(name) != ok.header.Get(name) {
			t.Errorf("304 %s %q, 200 had %q", name, r.header.Get(name), ok.header.Get(name))
		}
	}
	maxAgeOf(t, r.header)
}

func TestJWKSConditional(t *testing.T) {
	e := newEnv(t)
	e.register(t, "acme", "auth0", "k1")
	ok := e.doValid(t, "GET", prov+"/jwks", "")
	etag, lastMod := ok.header.Get("ETag"), ok.header.Get("Last-Modified")
	lm, _ := http.ParseTime(lastMod)
	opaque := strings.Trim(etag, `"`)
	fetches := e.idp.Requests("/acme/auth0")
	for _, tt := range []struct {
		name string
		kv   []string
		want int
	}{
		{"If-None-Match", []string{"If-None-Match", etag}, 304},
		{"weak", []string{"If-None-Match", `W/` + etag}, 304},
		{"list", []string{"If-None-Match", `"a", W/"b", ` + etag}, 304},
		{"two lines", []string{"If-None-Match", `"a"`, "If-None-Match", etag}, 304},
		{"star", []string{"If-None-Match", "*"}, 304},
		{"other", []string{"If-None-Match", `"` + opaque + `x"`}, 200},
		{"unquoted", []string{"If-None-Match", opaque}, 200},
		{"prefix", []string{"If-None-Match", etag[:len(etag)-2] + `"`}, 200},
		{"If-Modified-Since equal", []string{"If-Modified-Since", lastMod}, 304},
		{"If-Modified-Since later", []string{"If-Modified-Since", lm.Add(time.Hour).Format(http.TimeFormat)}, 304},
		{"If-Modified-Since earlier", []string{"If-Modified-Since", lm.Add(-time.Second).Format(http.TimeFormat)}, 200},
		{"If-Modified-Since garbage", []string{"If-Modified-Since", "yesterday"}, 200},
		{"If-None-Match wins", []string{"If-None-Match", `"other"`, "If-Modified-Since", lm.Add(time.Hour).Format(http.TimeFormat)}, 200},
		{"If-None-Match wins too", []string{"If-None-Match", etag, "If-Modified-Since", lm.Add(-time.Hour).Format(http.TimeFormat)}, 304},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := e.doValid(t, "GET", prov+"/jwks", "", tt.kv...)
			if tt.want == 304 {
				check304(t, r, ok)
				return
			}
			if r.status != 200 || string(r.body) != string(ok.body) {
				t.Errorf("%d %s, want 200", r.status, r.body)
			}
		})
	}
	if got := e.idp.Requests("/acme/auth0"); got != fetches {
		t.Errorf("conditional requests fetched %d times", got-fetches)
	}
}

func TestJWKSKid(t *testing.T) {
	e := newEnv(t)
	e.register(t, "acme", "auth0", "k1", "k2", "a/b")
	full := e.doValid(t, "GET", prov+"/jwks", "")
	r := e.doValid(t, "GET", prov+"/jwks?kid=k2", "")
	if r.status != 200 || !slices.Equal(kidsOf(t, r.body), []string{"k2"}) {
		t.Fatalf("?kid=k2: %d %s", r.status, r.body)
	}
	if r.header.Get("ETag") == full.header.Get("ETag") {
		t.Error("the narrowed document has the whole set's ETag")
	}
	check304(t, e.doValid(t, "GET", prov+"/jwks?kid=k2", "", "If-None-Match", r.header.Get("ETag")), r)
	if r := e.doValid(t, "GET", prov+"/jwks?kid=a%2Fb", ""); r.status != 200 || !slices.Equal(kidsOf(t, r.body), []string{"a/b"}) {
		t.Errorf("?kid=a%%2Fb: %d %s", r.status, r.body)
	}
	// A kid the set lacks: one revalidation, then 404; asked again, the
	// negative cache answers without a fetch.
	fetches := e.idp.Requests("/acme/auth0")
	for i := range 3 {
		r := e.doValid(t, "GET", prov+"/jwks?kid=nope", "")
		if r.status != http.StatusNotFound || r.errorCode(t) != "not_found" {
			t.Errorf("?kid=nope: %d %s", r.status, r.body)
		}
		if got := e.idp.Requests("/acme/auth0"); got != fetches+1 {
			t.Errorf("request %d: %d fetches, want 1", i, got-fetches)
		}
	}
	// A denied kid: 404 at once, without a fetch, and out of the set.
	if r := e.doValid(t, "POST", prov+"/keys/k1/deny", "", admin...); r.status != http.StatusNoContent {
		t.Fatal(r.status)
	}
	fetches = e.idp.Requests("/acme/auth0")
	if r := e.doValid(t, "GET", prov+"/jwks?kid=k1", ""); r.status != http.StatusNotFound || r.errorCode(t) != "not_found" {
		t.Errorf("denied ?kid=k1: %d %s", r.status, r.body)
	}
	r = e.doValid(t, "GET", prov+"/jwks", "")
	if kids := kidsOf(t, r.body); !slices.Equal(kids, []string{"k2", "a/b"}) {
		t.Errorf("kids after the denial %v", kids)
	}
	if r.header.Get("ETag") == full.header.Get("ETag") {
		t.Error("the ETag did not change with the denial")
	}
	if r := e.doValid(t, "GET", prov+"/jwks", "", "If-None-Match", full.header.Get("ETag")); r.status != 200 {
		t.Errorf("the ETag of before the denial: %d", r.status)
	}
	if got := e.idp.Requests("/acme/auth0"); got != fetches {
		t.Errorf("a denied kid fetched %d times", got-fetches)
	}
	// Every key denied: 502 no_keys.
	for _, kid := range []string{"k2", "a%2Fb"} {
		e.doValid(t, "POST", prov+"/keys/"+kid+"/deny", "", admin...)
	}
	if r := e.doValid(t, "GET", prov+"/jwks", ""); r.status != http.StatusBadGateway || r.errorCode(t) != "no_keys" {
		t.Errorf("every key denied: %d %s", r.status, r.body)
	}
	if r := e.doValid(t, "GET", "/tenants/acme/providers/nope/jwks", ""); r.status != http.StatusNotFound {
		t.Errorf("jwks of nothing: %d", r.status)
	}
}

// While the first load runs (the IdP holds it), GET .../jwks answers 503
// loading with Retry-After once its wait is over.
func TestJWKSLoading(t *testing.T) {
	e := newEnv(t)
	controlplane.SetWaits(e.h, 50*time.Millisecond, 50*time.Millisecond)
	release := e.gate.hold(t)
	e.serveKeys("/acme/auth0", "k1")
	if r := e.doValid(t, "PUT", prov, `{"jwksUrl":"https://idp.test/acme/auth0"}`, hdrs(admin, asJSON)...); r.status != http.StatusAccepted {
		t.Fatal(r.status)
	}
	e.gate.await(t) // the first load is at the IdP, held
	for range 2 {
		r := e.doValid(t, "GET", prov+"/jwks", "")
		if r.status != http.StatusServiceUnavailable || r.errorCode(t) != "loading" || r.header.Get("Retry-After") != "1" {
			t.Errorf("while loading: %d %s %v", r.status, r.body, r.header)
		}
	}
	release()
	controlplane.SetWaits(e.h, 20*time.Second, 2*time.Second) // a bound on a hang
	if r := e.doValid(t, "GET", prov+"/jwks", ""); r.status != http.StatusOK {
		t.Errorf("after the load: %d %s", r.status, r.body)
	}
}

// A provider whose loads fail answers 502 no_keys with the error's class.
func TestJWKSNoKeys(t *testing.T) {
	e := newEnv(t)
	for _, tt := range []struct {
		name, class string
		setup       func(path string)
	}{
		{"status", "status", func(p string) { e.idp.SetFault(p, testidp.Fault{Status: 404}) }},
		{"parse", "parse", func(p string) { e.idp.SetBody(p, []byte("<html>login</html>"), "text/html") }},
		{"no usable key", "no_keys", func(p string) {
			e.idp.SetBody(p, []byte(`{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0c2VjcmV0c2VjcmV0"}]}`), "application/json")
		}},
		{"network", "network", func(p string) { e.idp.SetFault(p, testidp.Fault{Refuse: true}) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := "/acme/" + tt.class
			tt.setup(path)
			target := "/tenants/acme/providers/" + strings.ReplaceAll(tt.class, "_", "-")
			body := `{"jwksUrl":"https://idp.test` + path + `","retryPolicy":{"maxRetries":0}}`
			if r := e.doValid(t, "PUT", target, body, hdrs(admin, asJSON)...); r.status != http.StatusAccepted {
				t.Fatalf("PUT: %d %s", r.status, r.body)
			}
			for range 2 { // the first waits for the load, the next meets its failure
				r := e.doValid(t, "GET", target+"/jwks", "")
				if r.status != http.StatusBadGateway || r.errorCode(t) != "no_keys" || r.json(t)["errorClass"] != tt.class {
					t.Errorf("%d %s", r.status, r.body)
				}
			}
		})
	}
}

// The rotation: a plain GET answers from memory; Cache-Control: no-cache
// and an unknown ?kid= revalidate with the IdP, within the provider's
// budget (2); past it, the answer comes from memory without a fetch.
func TestJWKSRotation(t *testing.T) {
	e := newEnv(t)
	e.register(t, "acme", "auth0", "k1")
	const path = "/acme/auth0"
	fetches := e.idp.Requests(path)
	count := func(want int) {
		t.Helper()
		if got := e.idp.Requests(path) - fetches; got != want {
			t.Errorf("%d fetches, want %d", got, want)
		}
	}
	kids := func(r *resp) []string {
		t.Helper()
		if r.status != http.StatusOK {
			t.Fatalf("%d %s", r.status, r.body)
		}
		return kidsOf(t, r.body)
	}

	e.idp.AddKey(path, testidp.NewKey("ES256", "k2"))
	if got := kids(e.doValid(t, "GET", prov+"/jwks", "")); !slices.Equal(got, []string{"k1"}) {
		t.Errorf("plain GET after the rotation: %v", got)
	}
	count(0)
	if got := kids(e.doValid(t, "GET", prov+"/jwks", "", "Cache-Control", "no-cache")); !slices.Equal(got, []string{"k1", "k2"}) {
		t.Errorf("no-cache: %v", got)
	}
	count(1)
	if got := kids(e.doValid(t, "GET", prov+"/jwks", "")); !slices.Equal(got, []string{"k1", "k2"}) {
		t.Errorf("plain GET after the revalidation: %v", got)
	}
	e.idp.AddKey(path, testidp.NewKey("ES256", "k3"))
	if got := kids(e.doValid(t, "GET", prov+"/jwks?kid=k3", "")); !slices.Equal(got, []string{"k3"}) {
		t.Errorf("?kid=k3: %v", got)
	}
	count(2)
	// The budget is spent: from memory, at once.
	e.idp.AddKey(path, testidp.NewKey("ES256", "k4"))
	for _, cc := range []string{"no-cache", "max-age=0", "No-Cache, no-store", `max-age="0"`} {
		r := e.doValid(t, "GET", prov+"/jwks", "", "Cache-Control", cc)
		if got := kids(r); !slices.Equal(got, []string{"k1", "k2", "k3"}) {
			t.Errorf("%s past the budget: %v", cc, got)
		}
		if r.header.Get("Age") == "" {
			t.Error("no Age")
		}
	}
	if r := e.doValid(t, "GET", prov+"/jwks?kid=k4", ""); r.status != http.StatusNotFound {
		t.Errorf("?kid=k4 past the budget: %d %s", r.status, r.body)
	}
	count(2)
	// Other directives do not revalidate.
	e.doValid(t, "GET", prov+"/jwks", "", "Cache-Control", "max-age=10, no-store, only-if-cached")
	count(2)
}

// A revalidation slower than its wait is left to finish in the background:
// the answer comes from memory.
func TestJWKSRevalidationTimeout(t *testing.T) {
	e := newEnv(t)
	e.register(t, "acme", "auth0", "k1")
	controlplane.SetWaits(e.h, 20*time.Second, 50*time.Millisecond)
	e.idp.AddKey("/acme/auth0", testidp.NewKey("ES256", "k2"))
	release := e.gate.hold(t)
	e.gate.drain()
	r := e.doValid(t, "GET", prov+"/jwks", "", "Cache-Control", "no-cache")
	if r.status != http.StatusOK || !slices.Equal(kidsOf(t, r.body), []string{"k1"}) {
		t.Errorf("%d %s", r.status, r.body)
	}
	e.gate.await(t) // the revalidation reached the IdP, and is held there
	release()
}

// POST .../refresh never joins a fetch already running: with a fetch held
// at the IdP, a POST gets 202, and another fetch reaches the IdP after it.
func TestRefreshNeverJoins(t *testing.T) {
	e := newEnv(t)
	e.register(t, "acme", "auth0", "k1")
	release := e.gate.hold(t)
	e.gate.drain()
	done := make(chan error, 1)
	go func() { done <- e.m.Refresh(context.Background(), "acme", "auth0") }()
	e.gate.await(t) // the earlier fetch is at the IdP
	atPost := e.gate.n.Load()
	if r := e.doValid(t, "POST", prov+"/refresh", "", admin...); r.status != http.StatusAccepted {
		t.Fatalf("POST refresh: %d %s", r.status, r.body)
	}
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.gate.await(t) // a second fetch, begun after the POST
	if n := e.gate.n.Load(); n != atPost+1 {
		t.Errorf("%d fetches after the POST, want 1", n-atPost)
	}
}

// Over a real server: net/http's own handling of 304, HEAD and bodies.
func TestOverHTTP(t *testing.T) {
	e := newEnv(t)
	srv := httptest.NewServer(e.h)
	defer srv.Close()
	client := &http.Client{Transport: e.c.Transport(t, srv.Client().Transport)}
	do := func(method, path, body string, kv ...string) *http.Response {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, srv.URL+path, rd)
		for i := 0; i+1 < len(kv); i += 2 {
			req.Header.Add(kv[i], kv[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	e.serveKeys("/acme/auth0", "k1")
	if r := do("PUT", prov, `{"jwksUrl":"https://idp.test/acme/auth0"}`, hdrs(admin, asJSON)...); r.StatusCode != http.StatusAccepted {
		t.Fatalf("PUT: %d", r.StatusCode)
	}
	ok := do("GET", prov+"/jwks", "")
	if ok.StatusCode != 200 || ok.ContentLength <= 0 {
		t.Fatalf("GET: %d, %d bytes", ok.StatusCode, ok.ContentLength)
	}
	if r := do("GET", prov+"/jwks", "", "If-None-Match", ok.Header.Get("ETag")); r.StatusCode != http.StatusNotModified || r.Header.Get("ETag") != ok.Header.Get("ETag") {
		t.Errorf("304: %d %v", r.StatusCode, r.Header)
	}
	if r := do("GET", prov+"/status", "", wrong...); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("401: %d", r.StatusCode)
	}
	if r := do("GET", prov+"/status", "", admin...); r.StatusCode != http.StatusOK {
		t.Errorf("status: %d", r.StatusCode)
	}
	if r := do("DELETE", prov, "", admin...); r.StatusCode != http.StatusNoContent {
		t.Errorf("DELETE: %d", r.StatusCode)
	}
	if r := do("GET", "/healthz", ""); r.StatusCode != http.StatusOK {
		t.Errorf("healthz: %d", r.StatusCode)
	}
}

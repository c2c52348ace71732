package controlplane_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/api"
	"github.com/jwkscache/jwkscache/controlplane"
)

const prov = "/tenants/acme/providers/auth0"

func TestPutRegisters(t *testing.T) {
	e := newEnv(t)
	e.serveKeys("/acme/auth0", "k1")
	body := `{"jwksUrl":"https://idp.test/acme/auth0","minTtl":"PT1M","retryPolicy":{"deadline":"PT10S","jitter":"decorrelated"}}`
	r := e.doValid(t, "PUT", prov, body, hdrs(admin, asJSON)...)
	if r.status != http.StatusAccepted {
		t.Fatalf("PUT: %d %s", r.status, r.body)
	}
	st := r.json(t)
	v := e.version(t, "acme", "auth0")
	if st["registrationVersion"] != v || r.header.Get("ETag") != strconv.Quote(v) {
		t.Errorf("ETag %s, body version %v, Manager %s", r.header.Get("ETag"), st["registrationVersion"], v)
	}
	if st["tenantId"] != "acme" || st["providerId"] != "auth0" || st["jwksUrl"] != "https://idp.test/acme/auth0" {
		t.Errorf("status %v", st)
	}
	if s := st["state"]; s != "Empty" && s != "Loading" && s != "Ready" {
		t.Errorf("state %v", s)
	}
	if _, ok := st["metrics"].([]any); !ok {
		t.Errorf("metrics %v", st["metrics"])
	}
	if r.header.Get("Cache-Control") != "no-store" || r.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("headers %v", r.header)
	}
	// The same registration again: the same version. Members naming the
	// path's own ids are accepted.
	r = e.doValid(t, "PUT", prov, `{"tenantId":"acme","providerId":"auth0",`+body[1:], hdrs(admin, asJSON)...)
	if r.status != http.StatusAccepted || r.header.Get("ETag") != strconv.Quote(v) {
		t.Errorf("PUT again: %d ETag %s, want %q", r.status, r.header.Get("ETag"), v)
	}
	// Another registration: another version; the tenant token may do it.
	r = e.doValid(t, "PUT", prov, `{"jwksUrl":"https://idp.test/acme/auth0","minTtl":"PT2M"}`, hdrs(acme, asJSON)...)
	if r.status != http.StatusAccepted || r.header.Get("ETag") == strconv.Quote(v) {
		t.Errorf("update: %d ETag %s", r.status, r.header.Get("ETag"))
	}
	if got := e.version(t, "acme", "auth0"); r.header.Get("ETag") != strconv.Quote(got) {
		t.Errorf("ETag %s, Manager %s", r.header.Get("ETag"), got)
	}
}

func TestPutBodyIDsMustMatchPath(t *testing.T) {
	e := newEnv(t)
	for _, tt := range []struct{ body, field string }{
		{`{"tenantId":"globex","jwksUrl":"https://idp.test/k"}`, "tenantId"},
		{`{"providerId":"other","jwksUrl":"https://idp.test/k"}`, "providerId"},
		{`{"tenantId":"a_b","jwksUrl":"https://idp.test/k"}`, "tenantId"},
	} {
		r := e.do(t, "PUT", prov, tt.body, hdrs(admin, asJSON)...)
		if r.status != http.StatusBadRequest || r.errorCode(t) != "invalid_registration" {
			t.Errorf("%s: %d %s", tt.body, r.status, r.body)
			continue
		}
		if d, _ := r.json(t)["details"].(map[string]any); d[tt.field] == nil {
			t.Errorf("%s: details %v lack %s", tt.body, d, tt.field)
		}
	}
	if n := len(e.m.Statuses()); n != 0 {
		t.Errorf("%d providers registered", n)
	}
}

// A refused registration names every bad field, whatever kind of problem
// each has: a rule of its own, a type, an unknown or repeated member, an
// empty or null value.
func TestPutListsEveryInvalidField(t *testing.T) {
	e := newEnv(t)
	body := `{
		"jwksUrl": "https://idp.test/acme/auth0",
		"minTtl": "PT10S",
		"maxTtl": "PT5S",
		"refreshEarly": "PT0.5S",
		"negativeCacheTtl": "30s",
		"maxRedirects": "three",
		"allowedDomains": ["idp.test", "Bad.example"],
		"pinnedSpki": ["AAAA"],
		"retryPolicy": {"attemptTimeout": "PT5S", "deadline": "PT1S", "jitter": "random", "retries": 1},
		"minTTL": "PT1M",
		"issuer": "",
		"prefetchJitter": null,
		"maxResponseBytes": 0
	}`
	r := e.do(t, "PUT", prov, body, hdrs(admin, asJSON)...)
	if r.status != http.StatusBadRequest || r.errorCode(t) != "invalid_registration" {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if r.reqErr == nil {
		t.Error("the contract accepts the body")
	}
	details, _ := r.json(t)["details"].(map[string]any)
	want := []string{
		"minTtl", "maxTtl", "refreshEarly", "negativeCacheTtl", "maxRedirects", "allowedDomains[1]",
		"pinnedSpki", "retryPolicy.deadline", "retryPolicy.jitter", "retryPolicy.retries", "minTTL",
		"issuer", "prefetchJitter", "maxResponseBytes",
	}
	for _, f := range want {
		if details[f] == nil {
			t.Errorf("details lack %s", f)
		}
	}
	if len(details) != len(want) {
		t.Errorf("details %v, want exactly %v", details, want)
	}
	if !strings.Contains(details["minTTL"].(string), `did you mean "minTtl"`) {
		t.Errorf("minTTL: %v", details["minTTL"])
	}
	t.Logf("%s", r.body)
	if _, err := e.m.Status("acme", "auth0"); err == nil {
		t.Error("registered")
	}

	// Bodies that are no registration object at all.
	for _, body := range []string{"", "null", "[]", `"x"`, "{", `{"jwksUrl":"https://idp.test/k"} {}`, `{"jwksUrl":"https://idp.test/k"}]`} {
		r := e.do(t, "PUT", prov, body, hdrs(admin, asJSON)...)
		if r.status != http.StatusBadRequest || r.errorCode(t) != "invalid_registration" {
			t.Errorf("%q: %d %s", body, r.status, r.body)
		}
	}
	// A repeated member.
	r = e.do(t, "PUT", prov, `{"jwksUrl":"https://idp.test/k","jwksUrl":"https://idp.test/j"}`, hdrs(admin, asJSON)...)
	if d, _ := r.json(t)["details"].(map[string]any); r.status != http.StatusBadRequest || d["jwksUrl"] == nil {
		t.Errorf("repeated: %d %s", r.status, r.body)
	}
	// Another provider's issuer.
	e.register(t, "acme", "first", "k1")
	e.doValid(t, "PUT", "/tenants/acme/providers/first", `{"jwksUrl":"https://idp.test/acme/first","issuer":"https://idp.test/"}`, hdrs(admin, asJSON)...)
	r = e.doValid(t, "PUT", prov, `{"jwksUrl":"https://idp.test/acme/auth0","issuer":"https://idp.test/"}`, hdrs(admin, asJSON)...)
	if d, _ := r.json(t)["details"].(map[string]any); r.status != http.StatusBadRequest || d["issuer"] == nil {
		t.Errorf("issuer taken: %d %s", r.status, r.body)
	}
}

func TestPutSecurityPolicy(t *testing.T) {
	e := newEnv(t, func(mo *jwkscache.Options, _ *controlplane.Options) {
		mo.AllowedDomains = []string{"idp.test"}
	})
	for _, tt := range []struct {
		name, body string
		fields     []string
	}{
		{"http", `{"jwksUrl":"http://idp.test/jwks"}`, []string{"jwksUrl"}},
		{"http allowed by the registration only", `{"jwksUrl":"http://idp.test/jwks","allowHttp":true}`, []string{"jwksUrl"}},
		{"host outside the allowlist", `{"jwksUrl":"https://evil.example/jwks"}`, []string{"jwksUrl"}},
		{"host outside the registration's allowlist", `{"jwksUrl":"https://idp.test/jwks","allowedDomains":["other.test"]}`, []string{"jwksUrl"}},
		{"IP literal", `{"jwksUrl":"https://10.1.2.3/jwks"}`, []string{"jwksUrl"}},
		{"IPv6 literal", `{"jwksUrl":"https://[::1]/jwks"}`, []string{"jwksUrl"}},
		{"metadata address", `{"issuer":"https://169.254.169.254/"}`, []string{"issuer"}},
		{"userinfo", `{"jwksUrl":"https://user:pass@idp.test/jwks"}`, []string{"jwksUrl"}},
		{"numeric host", `{"jwksUrl":"https://0x7f000001/jwks"}`, []string{"jwksUrl"}},
		{"with format errors", `{"jwksUrl":"http://idp.test/jwks","minTtl":"PT1S","bogus":1}`, []string{"jwksUrl", "minTtl", "bogus"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(t, "PUT", prov, tt.body, hdrs(admin, asJSON)...)
			if r.status != http.StatusForbidden || r.errorCode(t) != "security_policy" {
				t.Fatalf("%d %s", r.status, r.body)
			}
			d, _ := r.json(t)["details"].(map[string]any)
			for _, f := range tt.fields {
				if d[f] == nil {
					t.Errorf("details %v lack %s", d, f)
				}
			}
			if strings.Contains(string(r.body), "pass") {
				t.Errorf("the answer quotes the userinfo: %s", r.body)
			}
			if _, err := e.m.Status("acme", "auth0"); err == nil {
				t.Error("registered")
			}
		})
	}
}

func TestPutIfMatch(t *testing.T) {
	e := newEnv(t)
	put := func(body string, ifMatch ...string) *resp {
		kv := hdrs(admin, asJSON)
		for _, v := range ifMatch {
			kv = append(kv, "If-Match", v)
		}
		return e.do(t, "PUT", prov, body, kv...)
	}
	reg1 := `{"jwksUrl":"https://idp.test/acme/auth0"}`
	reg2 := `{"jwksUrl":"https://idp.test/acme/auth0","minTtl":"PT2M"}`
	reg3 := `{"jwksUrl":"https://idp.test/acme/auth0","minTtl":"PT3M"}`

	// On a provider that does not exist, any If-Match is a conflict.
	for _, im := range []string{`"abc"`, "*"} {
		if r := put(reg1, im); r.status != http.StatusConflict || r.errorCode(t) != "conflict" {
			t.Errorf("If-Match %s on nothing: %d %s", im, r.status, r.body)
		}
	}
	if _, err := e.m.Status("acme", "auth0"); err == nil {
		t.Fatal("registered by a conditional PUT")
	}
	e.serveKeys("/acme/auth0", "k1")
	r := put(reg1)
	v1 := e.version(t, "acme", "auth0")
	if r.status != http.StatusAccepted || r.header.Get("ETag") != strconv.Quote(v1) {
		t.Fatalf("PUT: %d %s", r.status, r.header.Get("ETag"))
	}
	// A mismatch changes nothing.
	for _, im := range []string{`"0123456789abcdef"`, `W/` + strconv.Quote(v1), `""`, `"*"`, `"x", "y"`} {
		r := put(reg2, im)
		if r.status != http.StatusConflict || r.errorCode(t) != "conflict" {
			t.Errorf("If-Match %s: %d %s", im, r.status, r.body)
		}
		if got := e.version(t, "acme", "auth0"); got != v1 {
			t.Fatalf("If-Match %s changed the version to %s", im, got)
		}
	}
	// The ETag of GET .../status matches.
	st := e.doValid(t, "GET", prov+"/status", "", admin...)
	if st.header.Get("ETag") != strconv.Quote(v1) {
		t.Fatalf("status ETag %s, want %q", st.header.Get("ETag"), v1)
	}
	r = put(reg2, st.header.Get("ETag"))
	v2 := e.version(t, "acme", "auth0")
	if r.status != http.StatusAccepted || v2 == v1 || r.header.Get("ETag") != strconv.Quote(v2) {
		t.Fatalf("If-Match the current version: %d ETag %s, version %s", r.status, r.header.Get("ETag"), v2)
	}
	// The old version no longer matches.
	if r := put(reg3, strconv.Quote(v1)); r.status != http.StatusConflict {
		t.Errorf("stale If-Match: %d", r.status)
	}
	// A list matches by any member, across header lines too.
	r = put(reg3, `"nope", `+strconv.Quote(v2))
	v3 := e.version(t, "acme", "auth0")
	if r.status != http.StatusAccepted || v3 == v2 {
		t.Errorf("list: %d", r.status)
	}
	if r := put(reg1, `"nope"`, strconv.Quote(v3)); r.status != http.StatusAccepted {
		t.Errorf("two header lines: %d %s", r.status, r.body)
	}
	// * matches an existing provider.
	if r := put(reg2, "*"); r.status != http.StatusAccepted {
		t.Errorf("*: %d %s", r.status, r.body)
	}
	// A bad registration is 400 whatever its If-Match.
	for _, im := range []string{`"nope"`, `"a", "b"`, `""`, `"*"`, "*"} {
		if r := put(`{"jwksUrl":"https://idp.test/acme/auth0","minTtl":"PT1S"}`, im); r.status != http.StatusBadRequest {
			t.Errorf("bad registration, If-Match %s: %d %s", im, r.status, r.body)
		}
	}
	// Malformed.
	for _, im := range []string{"abc", `"abc`, `"a" "b"`, "", strings.Repeat(`"a",`, 300)} {
		r := put(reg2, im)
		if r.status != http.StatusBadRequest || r.errorCode(t) != "invalid_request" {
			t.Errorf("If-Match %q: %d %s", im, r.status, r.body)
		}
	}
}

func TestPutTooLarge(t *testing.T) {
	e := newEnv(t)
	e.serveKeys("/acme/auth0", "k1")
	reg := `{"jwksUrl":"https://idp.test/acme/auth0"}`
	pad := func(n int) string { return reg[:1] + strings.Repeat(" ", n-len(reg)) + reg[1:] }
	if r := e.doValid(t, "PUT", prov, pad(64<<10), hdrs(admin, asJSON)...); r.status != http.StatusAccepted {
		t.Errorf("64 KiB: %d %s", r.status, r.body)
	}
	if r := e.do(t, "PUT", prov, pad(64<<10+1), hdrs(admin, asJSON)...); r.status != http.StatusRequestEntityTooLarge || r.errorCode(t) != "too_large" {
		t.Errorf("64 KiB + 1: %d %s", r.status, r.body)
	}
	// Without a Content-Length, the cap applies while reading.
	req := httptest.NewRequest("PUT", prov, strings.NewReader(pad(1<<20)))
	req.ContentLength = -1
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set("Content-Type", "application/json")
	in, _ := e.c.CheckRequest(context.Background(), req)
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	b, _ := io.ReadAll(rec.Result().Body)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("streamed 1 MiB: %d %s", rec.Code, b)
	}
	if err := e.c.CheckResponse(context.Background(), in, rec.Code, rec.Result().Header, b); err != nil {
		t.Error(err)
	}
}

func TestPutUnsupportedMediaType(t *testing.T) {
	e := newEnv(t)
	e.serveKeys("/acme/auth0", "k1")
	reg := `{"jwksUrl":"https://idp.test/acme/auth0"}`
	for _, ct := range []string{"", "text/plain", "application/x-www-form-urlencoded", "application/merge-patch+json", "application/json; charset=latin1", "application/json;;", "json"} {
		kv := admin
		if ct != "" {
			kv = hdrs(admin, []string{"Content-Type", ct})
		}
		r := e.do(t, "PUT", prov, reg, kv...)
		if r.status != http.StatusUnsupportedMediaType || r.errorCode(t) != "unsupported_media_type" {
			t.Errorf("%q: %d %s", ct, r.status, r.body)
		}
	}
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "Application/JSON; charset=UTF-8"} {
		if r := e.do(t, "PUT", prov, reg, hdrs(admin, []string{"Content-Type", ct})...); r.status != http.StatusAccepted {
			t.Errorf("%q: %d %s", ct, r.status, r.body)
		}
	}
}

// A tenant token on another tenant's PUT gets the same 404 as a provider
// that does not exist, and registers nothing.
func TestPutOtherTenant(t *testing.T) {
	e := newEnv(t)
	real := e.doValid(t, "DELETE", "/tenants/globex/providers/auth0", "", admin...)
	r := e.doValid(t, "PUT", "/tenants/globex/providers/auth0", `{"jwksUrl":"https://idp.test/k"}`, hdrs(acme, asJSON)...)
	if r.status != http.StatusNotFound || string(r.body) != string(real.body) {
		t.Errorf("PUT with another tenant's token: %d %s; a real 404 is %s", r.status, r.body, real.body)
	}
	// Even with a body that would be refused otherwise.
	r = e.do(t, "PUT", "/tenants/globex/providers/auth0", `{"bogus":1}`, hdrs(acme, []string{"Content-Type", "text/plain"})...)
	if r.status != http.StatusNotFound || string(r.body) != string(real.body) {
		t.Errorf("bad PUT with another tenant's token: %d %s", r.status, r.body)
	}
	if n := len(e.m.TenantStatuses("globex")); n != 0 {
		t.Errorf("%d providers registered", n)
	}
}

func TestDelete(t *testing.T) {
	e := newEnv(t)
	e.register(t, "acme", "auth0", "k1")
	if r := e.doValid(t, "DELETE", prov, "", acme...); r.status != http.StatusNoContent || len(r.body) != 0 {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	if _, err := e.m.Status("acme", "auth0"); err == nil {
		t.Error("still registered")
	}
	if r := e.doValid(t, "DELETE", prov, "", acme...); r.status != http.StatusNotFound || r.errorCode(t) != "not_found" {
		t.Errorf("DELETE again: %d %s", r.status, r.body)
	}
	if r := e.doValid(t, "GET", prov+"/jwks", ""); r.status != http.StatusNotFound {
		t.Errorf("jwks after DELETE: %d", r.status)
	}
}

func TestRefresh(t *testing.T) {
	e := newEnv(t)
	e.register(t, "acme", "auth0", "k1")
	e.gate.drain()
	if r := e.doValid(t, "POST", prov+"/refresh", "", acme...); r.status != http.StatusAccepted || len(r.body) != 0 {
		t.Fatalf("refresh: %d %s", r.status, r.body)
	}
	if p := e.gate.await(t); p != "/acme/auth0" {
		t.Errorf("the refresh fetched %s", p)
	}
	if r := e.doValid(t, "POST", "/tenants/acme/providers/nope/refresh", "", acme...); r.status != http.StatusNotFound {
		t.Errorf("refresh of nothing: %d", r.status)
	}
}

func TestDenyAllow(t *testing.T) {
	e := newEnv(t)
	e.register(t, "acme", "auth0", "k1", "k2", "a/b c")
	if r := e.doValid(t, "POST", prov+"/keys/k1/deny", "", acme...); r.status != http.StatusNoContent || len(r.body) != 0 {
		t.Fatalf("deny: %d %s", r.status, r.body)
	}
	if r := e.doValid(t, "POST", prov+"/keys/k1/deny", "", acme...); r.status != http.StatusNoContent {
		t.Errorf("deny again: %d", r.status)
	}
	if r := e.doValid(t, "POST", prov+"/keys/a%2Fb%20c/deny", "", acme...); r.status != http.StatusNoContent {
		t.Errorf("deny an escaped kid: %d", r.status)
	}
	st, _ := e.m.Status("acme", "auth0")
	if !slices.Equal(st.DeniedKIDs, []string{"a/b c", "k1"}) {
		t.Errorf("denied %v", st.DeniedKIDs)
	}
	if kids := kidsOf(t, e.doValid(t, "GET", prov+"/jwks", "").body); !slices.Equal(kids, []string{"k2"}) {
		t.Errorf("jwks kids %v", kids)
	}
	if r := e.doValid(t, "DELETE", prov+"/keys/k1/deny", "", acme...); r.status != http.StatusNoContent || len(r.body) != 0 {
		t.Fatalf("allow: %d %s", r.status, r.body)
	}
	if r := e.doValid(t, "DELETE", prov+"/keys/never-denied/deny", "", acme...); r.status != http.StatusNoContent {
		t.Errorf("allow a kid never denied: %d", r.status)
	}
	if kids := kidsOf(t, e.doValid(t, "GET", prov+"/jwks", "").body); !slices.Equal(kids, []string{"k1", "k2"}) {
		t.Errorf("jwks kids %v", kids)
	}
	// A kid of exactly 1024 bytes is fine; over is 400.
	if r := e.doValid(t, "POST", prov+"/keys/"+strings.Repeat("k", 1024)+"/deny", "", acme...); r.status != http.StatusNoContent {
		t.Errorf("1024-byte kid: %d", r.status)
	}
	for _, method := range []string{"POST", "DELETE"} {
		if r := e.do(t, method, prov+"/keys/"+strings.Repeat("k", 1025)+"/deny", "", acme...); r.status != http.StatusBadRequest || r.errorCode(t) != "invalid_request" {
			t.Errorf("%s 1025-byte kid: %d %s", method, r.status, r.body)
		}
		if r := e.doValid(t, method, "/tenants/acme/providers/nope/keys/k1/deny", "", acme...); r.status != http.StatusNotFound {
			t.Errorf("%s on nothing: %d", method, r.status)
		}
	}
}

func TestStatus(t *testing.T) {
	e := newEnv(t)
	e.register(t, "acme", "auth0", "k1")
	r := e.doValid(t, "GET", prov+"/status", "", acme...)
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	st := r.json(t)
	if r.header.Get("ETag") != strconv.Quote(e.version(t, "acme", "auth0")) || st["state"] != "Ready" {
		t.Errorf("ETag %s, status %v", r.header.Get("ETag"), st)
	}
	metrics, _ := st["metrics"].([]any)
	if len(metrics) == 0 {
		t.Error("no metrics")
	}
	for _, m := range metrics {
		labels := m.(map[string]any)["labels"].(map[string]any)
		if labels["tenant"] != "acme" || labels["provider"] != "auth0" {
			t.Errorf("metric of another provider: %v", m)
		}
	}
	if r := e.doValid(t, "GET", "/tenants/acme/providers/nope/status", "", acme...); r.status != http.StatusNotFound {
		t.Errorf("status of nothing: %d", r.status)
	}
}

func TestList(t *testing.T) {
	e := newEnv(t)
	e.register(t, "acme", "b", "k1")
	e.register(t, "acme", "a", "k1")
	e.register(t, "globex", "c", "k1")
	r := e.doValid(t, "GET", "/tenants/acme/providers", "", acme...)
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	var ids []string
	for _, p := range r.json(t)["providers"].([]any) {
		ids = append(ids, p.(map[string]any)["providerId"].(string))
	}
	if !slices.Equal(ids, []string{"a", "b"}) {
		t.Errorf("providers %v", ids)
	}
	r = e.doValid(t, "GET", "/tenants/initech/providers", "", admin...)
	if r.status != http.StatusOK || string(r.body) != `{"providers":[]}` {
		t.Errorf("a tenant without providers: %d %s", r.status, r.body)
	}
	// Another tenant's list: 404, whether it has providers or not.
	for _, tenant := range []string{"globex", "initech"} {
		r := e.doValid(t, "GET", "/tenants/"+tenant+"/providers", "", acme...)
		if r.status != http.StatusNotFound || r.errorCode(t) != "not_found" {
			t.Errorf("%s with acme's token: %d %s", tenant, r.status, r.body)
		}
	}
}

// Path parameters are checked before anything else, the token included.
func TestPathParamsFirst(t *testing.T) {
	e := newEnv(t)
	for _, tt := range []struct{ method, target, field string }{
		{"GET", "/tenants/a.b/providers", "tenantId"},
		{"GET", "/tenants/" + strings.Repeat("t", 65) + "/providers", "tenantId"},
		{"PUT", "/tenants/acme_corp/providers/auth0", "tenantId"},
		{"DELETE", "/tenants/acme/providers/auth%2F0", "providerId"},
		{"GET", "/tenants/acme/providers/a$b/jwks", "providerId"},
		{"GET", "/tenants/acme/providers/" + strings.Repeat("p", 65) + "/status", "providerId"},
		{"POST", "/tenants/acme/providers/a.b/refresh", "providerId"},
		{"POST", "/tenants/acme/providers/auth0/keys/" + strings.Repeat("k", 1025) + "/deny", "kid"},
		{"DELETE", "/tenants/a.b/providers/a.b/keys/k/deny", "providerId"},
	} {
		r := e.do(t, tt.method, tt.target, "")
		if r.status != http.StatusBadRequest || r.errorCode(t) != "invalid_request" {
			t.Errorf("%s %s: %d %s", tt.method, tt.target, r.status, r.body)
			continue
		}
		if d, _ := r.json(t)["details"].(map[string]any); d[tt.field] == nil {
			t.Errorf("%s %s: details %v", tt.method, tt.target, d)
		}
	}
	for _, q := range []string{"kid=", "kid=" + strings.Repeat("k", 1025), "kid=a&kid=b", "kid=%zz"} {
		if r := e.do(t, "GET", prov+"/jwks?"+q, ""); r.status != http.StatusBadRequest || r.errorCode(t) != "invalid_request" {
			t.Errorf("?%s: %d %s", q, r.status, r.body)
		}
	}
}

func TestOperationsRoutes(t *testing.T) {
	e := newEnv(t)
	if r := e.doValid(t, "GET", "/healthz", ""); r.status != http.StatusOK || string(r.body) != `{"status":"ok"}` {
		t.Errorf("healthz: %d %s", r.status, r.body)
	}
	if r := e.doValid(t, "GET", "/readyz", ""); r.status != http.StatusOK {
		t.Errorf("readyz without providers: %d %s", r.status, r.body)
	}
	e.register(t, "acme", "auth0", "k1")
	if r := e.doValid(t, "GET", "/readyz", ""); r.status != http.StatusOK {
		t.Errorf("readyz: %d %s", r.status, r.body)
	}
	// A provider without keys: not ready.
	release := e.gate.hold(t)
	e.serveKeys("/acme/cold", "k1")
	if r := e.doValid(t, "PUT", "/tenants/acme/providers/cold", `{"jwksUrl":"https://idp.test/acme/cold"}`, hdrs(admin, asJSON)...); r.status != http.StatusAccepted {
		t.Fatalf("PUT: %d", r.status)
	}
	if r := e.doValid(t, "GET", "/readyz", ""); r.status != http.StatusServiceUnavailable || r.errorCode(t) != "not_ready" || !strings.Contains(string(r.body), "acme/cold") {
		t.Errorf("readyz with a cold provider: %d %s", r.status, r.body)
	}
	release()
	r := e.doValid(t, "GET", "/openapi.yaml", "")
	if r.status != http.StatusOK || string(r.body) != string(api.Spec()) || r.header.Get("Content-Type") != "application/yaml" {
		t.Errorf("openapi.yaml: %d %s", r.status, r.header)
	}
	if r.header.Get("Cache-Control") != "no-store" || r.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("openapi.yaml headers %v", r.header)
	}
	// No Metrics handler: 404 (which the contract does not list for
	// /metrics; checked against ErrorResponse only).
	if r := rawResp(t, e, "GET", "/metrics"); r.status != http.StatusNotFound {
		t.Errorf("metrics without a handler: %d", r.status)
	}
}

func TestReadyFunc(t *testing.T) {
	var ready error
	e := newEnv(t, func(_ *jwkscache.Options, co *controlplane.Options) {
		co.Ready = func() error { return ready }
	})
	if r := e.doValid(t, "GET", "/readyz", ""); r.status != http.StatusOK {
		t.Errorf("ready: %d", r.status)
	}
	ready = errStr("restoring registrations")
	r := e.doValid(t, "GET", "/readyz", "")
	if r.status != http.StatusServiceUnavailable || r.errorCode(t) != "not_ready" || r.json(t)["message"] != "restoring registrations" {
		t.Errorf("not ready: %d %s", r.status, r.body)
	}
}

type errStr string

func (e errStr) Error() string { return string(e) }

func TestMetrics(t *testing.T) {
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		io.WriteString(w, "jwkscache_up 1\n")
	})
	open := newEnv(t, func(_ *jwkscache.Options, co *controlplane.Options) { co.Metrics = metrics })
	if r := open.doValid(t, "GET", "/metrics", ""); r.status != http.StatusOK || string(r.body) != "jwkscache_up 1\n" {
		t.Errorf("public metrics: %d %s", r.status, r.body)
	}
	protected := newEnv(t, func(_ *jwkscache.Options, co *controlplane.Options) {
		co.Metrics, co.ProtectMetrics = metrics, true
	})
	for _, tt := range []struct {
		kv     []string
		status int
	}{
		{nil, 401}, {wrong, 401}, {acme, 401}, {admin, 200},
	} {
		r := protected.do(t, "GET", "/metrics", "", tt.kv...)
		if r.status != tt.status {
			t.Errorf("%v: %d, want %d", tt.kv, r.status, tt.status)
		}
	}
}

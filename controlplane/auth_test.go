package controlplane_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/controlplane"
)

// operation is a request of the auth matrix.
type operation struct {
	name, method, target, body string
	json                       bool
}

func mutations(tenant string) []operation {
	p := "/tenants/" + tenant + "/providers/auth0"
	return []operation{
		{"put", "PUT", p, `{"jwksUrl":"https://idp.test/` + tenant + `/other"}`, true},
		{"delete", "DELETE", p, "", false},
		{"refresh", "POST", p + "/refresh", "", false},
		{"deny", "POST", p + "/keys/k1/deny", "", false},
		{"allow", "DELETE", p + "/keys/k2/deny", "", false},
		{"status", "GET", p + "/status", "", false},
		{"list", "GET", "/tenants/" + tenant + "/providers", "", false},
	}
}

// Every mutation and status read, without a token, with a wrong one and
// with another tenant's, is refused (401, 401, 404) and changes nothing:
// the registration, the denials and the IdP's request count stay.
func TestAuthMatrix(t *testing.T) {
	e := newEnv(t)
	e.register(t, "acme", "auth0", "k1", "k2")
	if r := e.doValid(t, "POST", prov+"/keys/k2/deny", "", admin...); r.status != http.StatusNoContent {
		t.Fatal(r.status)
	}
	before, _ := e.m.Status("acme", "auth0")
	fetches := e.idp.Requests("/acme/auth0")
	// A real 404 of each route, for a provider that does not exist, to
	// compare the other tenant's answers with.
	realNotFound := map[string]string{}
	for _, op := range mutations("acme") {
		target := strings.Replace(op.target, "/auth0", "/ghost", 1)
		if op.name == "list" || op.name == "put" {
			continue // no real 404: a tenant's list is 200, a PUT creates
		}
		r := e.doValid(t, op.method, target, op.body, admin...)
		if r.status != http.StatusNotFound {
			t.Fatalf("%s of a missing provider: %d", op.name, r.status)
		}
		realNotFound[op.name] = strings.Replace(string(r.body), "ghost", "auth0", 1)
	}
	realNotFound["put"] = realNotFound["delete"] // the same provider's

	for _, op := range mutations("acme") {
		for _, cred := range []struct {
			name   string
			kv     []string
			status int
			chall  string
		}{
			{"no token", nil, 401, `Bearer realm="jwks-cache"`},
			{"Basic", []string{"Authorization", "Basic YWRtaW46YWRtaW4="}, 401, `Bearer realm="jwks-cache"`},
			{"empty bearer", []string{"Authorization", "Bearer "}, 401, `Bearer realm="jwks-cache"`},
			{"wrong token", wrong, 401, `Bearer realm="jwks-cache", error="invalid_token"`},
			{"admin token with a suffix", []string{"Authorization", "Bearer " + adminToken + "x"}, 401, `Bearer realm="jwks-cache", error="invalid_token"`},
			{"admin token prefix", []string{"Authorization", "Bearer " + adminToken[:len(adminToken)-1]}, 401, `Bearer realm="jwks-cache", error="invalid_token"`},
			{"two tokens", hdrs(admin, admin), 401, `Bearer realm="jwks-cache", error="invalid_token"`},
			{"other tenant", globex, 404, ""},
		} {
			kv := cred.kv
			if op.json {
				kv = hdrs(kv, asJSON)
			}
			r := e.do(t, op.method, op.target, op.body, kv...)
			if r.status != cred.status {
				t.Errorf("%s, %s: %d %s, want %d", op.name, cred.name, r.status, r.body, cred.status)
				continue
			}
			switch cred.status {
			case 401:
				if got := r.header.Get("WWW-Authenticate"); got != cred.chall {
					t.Errorf("%s, %s: WWW-Authenticate %q, want %q", op.name, cred.name, got, cred.chall)
				}
				if r.errorCode(t) != "unauthorized" {
					t.Errorf("%s, %s: %s", op.name, cred.name, r.body)
				}
			case 404:
				want := realNotFound[op.name]
				if op.name == "list" {
					want = `{"error":"not_found","message":"no such tenant"}`
				}
				if string(r.body) != want {
					t.Errorf("%s, %s: %s, a real 404 is %s", op.name, cred.name, r.body, want)
				}
			}
			for _, tok := range []string{adminToken, acmeToken, globexToken, wrongToken} {
				if strings.Contains(string(r.body), tok) || strings.Contains(strings.Join(r.header.Values("WWW-Authenticate"), ""), tok) {
					t.Errorf("%s, %s: the answer holds a token", op.name, cred.name)
				}
			}
		}
	}
	after, err := e.m.Status("acme", "auth0")
	if err != nil {
		t.Fatalf("the provider is gone: %v", err)
	}
	if after.RegistrationVersion != before.RegistrationVersion || after.JWKSURL != before.JWKSURL {
		t.Errorf("registration changed: %s -> %s", before.RegistrationVersion, after.RegistrationVersion)
	}
	if !slices.Equal(after.DeniedKIDs, before.DeniedKIDs) {
		t.Errorf("denials changed: %v -> %v", before.DeniedKIDs, after.DeniedKIDs)
	}
	// Settle any fetch a refused request might have started, then count:
	// exactly the one fetch of this Refresh.
	if err := e.m.Refresh(context.Background(), "acme", "auth0"); err != nil {
		t.Fatal(err)
	}
	if got := e.idp.Requests("/acme/auth0"); got != fetches+1 {
		t.Errorf("IdP requests %d, want %d: a refused request fetched", got, fetches+1)
	}
	if n := e.idp.Requests("/acme/other"); n != 0 {
		t.Errorf("the refused PUT's URL was fetched %d times", n)
	}
}

// Valid tokens: the admin token everywhere, a tenant token on its tenant;
// the scheme is case-insensitive.
func TestAuthAccepts(t *testing.T) {
	e := newEnv(t)
	e.register(t, "acme", "auth0", "k1")
	e.register(t, "globex", "auth0", "k1")
	for _, tt := range []struct {
		target string
		kv     []string
	}{
		{"/tenants/acme/providers/auth0/status", admin},
		{"/tenants/globex/providers/auth0/status", admin},
		{"/tenants/acme/providers/auth0/status", acme},
		{"/tenants/globex/providers/auth0/status", globex},
		{"/tenants/acme/providers/auth0/status", []string{"Authorization", "bearer " + acmeToken}},
		{"/tenants/acme/providers/auth0/status", []string{"Authorization", "BEARER  " + acmeToken + " "}},
	} {
		if r := e.do(t, "GET", tt.target, "", tt.kv...); r.status != http.StatusOK {
			t.Errorf("%s %v: %d %s", tt.target, tt.kv, r.status, r.body)
		}
	}
	// Public routes need no token, and ignore a wrong one.
	for _, target := range []string{prov + "/jwks", "/healthz", "/readyz", "/openapi.yaml"} {
		for _, kv := range [][]string{nil, wrong, globex} {
			if r := e.do(t, "GET", target, "", kv...); r.status != http.StatusOK {
				t.Errorf("%s %v: %d", target, kv, r.status)
			}
		}
	}
}

func TestDisableAuth(t *testing.T) {
	e := newEnv(t, func(_ *jwkscache.Options, co *controlplane.Options) {
		*co = controlplane.Options{DisableAuth: true}
	})
	e.register(t, "acme", "auth0", "k1")
	for _, op := range mutations("acme") {
		var kv []string
		if op.json {
			kv = asJSON
		}
		if r := e.do(t, op.method, op.target, op.body, kv...); r.status >= 400 && r.status != http.StatusNotFound {
			t.Errorf("%s without a token: %d %s", op.name, r.status, r.body)
		}
	}
}

func TestNewValidatesOptions(t *testing.T) {
	m, err := jwkscache.New(jwkscache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	const secret = "sup3r-secret-token"
	for _, tt := range []struct {
		name string
		opts controlplane.Options
	}{
		{"empty admin token", controlplane.Options{AdminTokens: []string{""}}},
		{"empty tenant token", controlplane.Options{TenantTokens: map[string][]string{"acme": {""}}}},
		{"token with a space", controlplane.Options{AdminTokens: []string{secret + " x"}}},
		{"token with a newline", controlplane.Options{AdminTokens: []string{secret + "\n"}}},
		{"token twice", controlplane.Options{AdminTokens: []string{secret}, TenantTokens: map[string][]string{"acme": {secret}}}},
		{"bad tenant id", controlplane.Options{TenantTokens: map[string][]string{"a.b": {secret}}}},
		{"empty tenant id", controlplane.Options{TenantTokens: map[string][]string{"": {secret}}}},
		{"long tenant id", controlplane.Options{TenantTokens: map[string][]string{strings.Repeat("t", 65): {secret}}}},
		{"tokens and DisableAuth", controlplane.Options{DisableAuth: true, AdminTokens: []string{secret}}},
		{"ProtectMetrics without admin", controlplane.Options{ProtectMetrics: true, TenantTokens: map[string][]string{"acme": {secret}}}},
	} {
		_, err := controlplane.New(m, tt.opts)
		if err == nil {
			t.Errorf("%s: accepted", tt.name)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%s: the error quotes the token: %v", tt.name, err)
		}
	}
	if _, err := controlplane.New(nil, controlplane.Options{}); err == nil {
		t.Error("nil Manager accepted")
	}
	if _, err := controlplane.New(m, controlplane.Options{AdminTokens: []string{secret}, TenantTokens: map[string][]string{"acme": {"other"}}}); err != nil {
		t.Error(err)
	}
}

// The access log names the request, never its token or body.
func TestLogs(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e := newEnv(t, func(_ *jwkscache.Options, co *controlplane.Options) { co.Logger = logger })
	e.register(t, "acme", "auth0", "k1")
	e.do(t, "GET", prov+"/status", "", wrong...)
	e.do(t, "GET", prov+"/status", "", acme...)
	e.do(t, "PUT", prov, `{"jwksUrl":"https://idp.test/acme/auth0","minTtl":"PT1S"}`, hdrs(acme, asJSON)...)
	e.do(t, "GET", prov+"/jwks?kid=k1", "")
	out := buf.String()
	for _, tok := range []string{adminToken, acmeToken, wrongToken, "PT1S", "Authorization", `"kty"`} {
		if strings.Contains(out, tok) {
			t.Errorf("the log holds %q:\n%s", tok, out)
		}
	}
	for _, want := range []string{"status=401", "status=200", "status=400", "caller=refused", `caller="tenant acme"`, "path=/tenants/acme/providers/auth0/jwks"} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %q:\n%s", want, out)
		}
	}
}

package jwkshttp_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/jwkscachetest"
	"github.com/jwkscache/jwkscache/jwkshttp"
)

const audience = "https://api.example.com"

// env is a protected API for two tenants, each with its own IdP on
// loopback TLS, and a third tenant whose IdP is down from the start.
type env struct {
	m            *jwkscache.Manager
	acme, globex *jwkscachetest.IdP
	down         *jwkscachetest.IdP
	srv          *httptest.Server
	mu           sync.Mutex
	refused      []error // what OnError saw
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{}
	start := func() *jwkscachetest.IdP {
		idp := jwkscachetest.New()
		if err := idp.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(idp.Close)
		return idp
	}
	e.acme, e.globex, e.down = start(), start(), start()
	e.down.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Status: http.StatusServiceUnavailable})
	m, err := jwkscache.New(jwkscache.Options{
		RootCAs:          e.acme.CertPool(),
		AllowedAddresses: e.acme.AllowedAddresses(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	e.m = m
	for tenant, idp := range map[string]*jwkscachetest.IdP{"acme": e.acme, "globex": e.globex, "initech": e.down} {
		reg := jwkscache.Registration{TenantID: tenant, ProviderID: "main", JWKSURL: idp.JWKSURL(), Issuer: idp.Issuer(),
			Retry: jwkscache.RetryPolicy{MaxRetries: -1}}
		if err := m.Register(context.Background(), reg); err != nil {
			t.Fatal(err)
		}
	}
	mw := jwkshttp.New(m, jwkshttp.Options{
		Tenant:   func(r *http.Request) (string, error) { return r.PathValue("tenant"), nil },
		Audience: audience,
		Realm:    "api",
		OnError: func(_ *http.Request, _ int, err error) {
			e.mu.Lock()
			e.refused = append(e.refused, err)
			e.mu.Unlock()
		},
	})
	mux := http.NewServeMux()
	mux.Handle("GET /t/{tenant}/me", mw.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		claims, ok := jwkshttp.ClaimsAs[jwt.MapClaims](r.Context())
		if !ok {
			http.Error(w, "no claims", http.StatusInternalServerError)
			return
		}
		sub, _ := claims.GetSubject()
		fmt.Fprintf(w, "hello %s of %s", sub, r.PathValue("tenant"))
	})))
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	return e
}

// call makes a request for tenant with the Authorization header auth ("" =
// none) and returns the status, WWW-Authenticate, Retry-After and body.
func (e *env) call(t *testing.T, tenant, auth string) (int, string, string, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.srv.URL+"/t/"+tenant+"/me", nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate"), resp.Header.Get("Retry-After"), string(body)
}

func TestMiddleware(t *testing.T) {
	e := newEnv(t)
	acmeClaims := func() jwt.RegisteredClaims { return e.acme.Claims("alice", audience) }
	hs256 := e.acme.SigningKey().SignHMACWithPublicKey(acmeClaims())
	expired := acmeClaims()
	expired.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute))
	wrongAud := e.acme.Claims("alice", "https://other.example.com")
	wrongIss := acmeClaims()
	wrongIss.Issuer = e.globex.Issuer()
	noExp := acmeClaims()
	noExp.ExpiresAt = nil

	type want struct {
		status  int
		errCode string // error= of WWW-Authenticate, "" for none
	}
	for _, c := range []struct {
		name   string
		tenant string
		auth   string
		want   want
	}{
		{"valid", "acme", "Bearer " + e.acme.Token(acmeClaims()), want{200, ""}},
		{"scheme is case-insensitive", "acme", "bearer " + e.acme.Token(acmeClaims()), want{200, ""}},
		{"other tenant's IdP, valid", "globex", "Bearer " + e.globex.Token(e.globex.Claims("bob", audience)), want{200, ""}},
		{"no token", "acme", "", want{401, ""}},
		{"basic auth", "acme", "Basic YWxpY2U6c2VjcmV0", want{401, ""}},
		{"bearer with two tokens", "acme", "Bearer a b", want{400, "invalid_request"}},
		{"empty bearer", "acme", "Bearer ", want{400, "invalid_request"}},
		{"expired", "acme", "Bearer " + e.acme.Token(expired), want{401, "invalid_token"}},
		{"no expiry", "acme", "Bearer " + e.acme.Token(noExp), want{401, "invalid_token"}},
		{"wrong audience", "acme", "Bearer " + e.acme.Token(wrongAud), want{401, "invalid_token"}},
		{"wrong issuer", "acme", "Bearer " + e.acme.Token(wrongIss), want{401, "invalid_token"}},
		{"alg none", "acme", "Bearer " + jwkscachetest.UnsignedToken(acmeClaims(), map[string]any{"kid": e.acme.SigningKey().KID}), want{401, "invalid_token"}},
		{"HS256 with the public key", "acme", "Bearer " + hs256, want{401, "invalid_token"}},
		{"other tenant's token", "acme", "Bearer " + e.globex.Token(e.globex.Claims("bob", audience)), want{401, "invalid_token"}},
		{"tenant's token on another tenant", "globex", "Bearer " + e.acme.Token(acmeClaims()), want{401, "invalid_token"}},
		{"garbage", "acme", "Bearer not.a.jwt", want{401, "invalid_token"}},
		{"IdP down, cold", "initech", "Bearer " + e.down.Token(e.down.Claims("carol", audience)), want{503, ""}},
	} {
		t.Run(c.name, func(t *testing.T) {
			status, auth, retry, body := e.call(t, c.tenant, c.auth)
			if status != c.want.status {
				t.Fatalf("status %d (%q), want %d", status, body, c.want.status)
			}
			tok := strings.TrimPrefix(strings.TrimPrefix(c.auth, "Bearer "), "bearer ")
			if len(tok) > 20 && (strings.Contains(body, tok) || strings.Contains(auth, tok)) {
				t.Errorf("the response echoes the token")
			}
			switch status {
			case 200:
				if !strings.HasPrefix(body, "hello ") {
					t.Errorf("body %q, want the handler's greeting with the verified subject", body)
				}
			case 503:
				if retry == "" || auth != "" {
					t.Errorf("503 with Retry-After %q and WWW-Authenticate %q, want a Retry-After and no challenge", retry, auth)
				}
			default:
				if !strings.HasPrefix(auth, `Bearer realm="api"`) {
					t.Errorf("WWW-Authenticate %q, want a Bearer challenge with the realm", auth)
				}
				if got := strings.Contains(auth, `error="`+c.want.errCode+`"`); c.want.errCode != "" && !got || c.want.errCode == "" && strings.Contains(auth, "error=") {
					t.Errorf("WWW-Authenticate %q, want error %q", auth, c.want.errCode)
				}
			}
		})
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.refused) == 0 {
		t.Fatal("OnError saw no refusal")
	}
}

// A rotated kid verifies on first sight; with the IdP then down, keys
// already in memory keep verifying (warm: 200) while a cold tenant gets
// 503 with Retry-After.
func TestMiddlewareRotationAndOutage(t *testing.T) {
	e := newEnv(t)
	claims := e.acme.Claims("alice", audience)
	if status, _, _, body := e.call(t, "acme", "Bearer "+e.acme.Token(claims)); status != 200 {
		t.Fatalf("before rotation: %d %q", status, body)
	}
	rotated := e.acme.JWKS().Rotate("ES256")
	if status, _, _, body := e.call(t, "acme", "Bearer "+rotated.Sign(claims)); status != 200 {
		t.Fatalf("rotated kid: %d %q", status, body)
	}
	e.acme.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Status: http.StatusServiceUnavailable})
	if status, _, _, body := e.call(t, "acme", "Bearer "+rotated.Sign(claims)); status != 200 {
		t.Fatalf("IdP down, warm: %d %q, want 200", status, body)
	}
	// An unknown kid during the outage: the refresh it needs fails, so
	// keys are unavailable (503), not the token at fault.
	other := jwkscachetest.NewKey("ES256", "never-published")
	if status, _, retry, _ := e.call(t, "acme", "Bearer "+other.Sign(claims)); status != 503 || retry == "" {
		t.Errorf("unknown kid during the outage: %d (Retry-After %q), want 503", status, retry)
	}
}

// The wrapped handler never runs for a refused request, and the verified
// claims of one request never leak into another.
func TestMiddlewareHandlerOnlyWithClaims(t *testing.T) {
	idp := jwkscachetest.New()
	if err := idp.Start(); err != nil {
		t.Fatal(err)
	}
	defer idp.Close()
	m, err := jwkscache.New(jwkscache.Options{RootCAs: idp.CertPool(), AllowedAddresses: idp.AllowedAddresses()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Register(context.Background(), jwkscache.Registration{TenantID: "acme", ProviderID: "main", JWKSURL: idp.JWKSURL()}); err != nil {
		t.Fatal(err)
	}
	calls := 0
	h := jwkshttp.New(m, jwkshttp.Options{
		Tenant:   func(*http.Request) (string, error) { return "acme", nil },
		Provider: func(*http.Request) string { return "main" },
	}).Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		if _, ok := jwkshttp.Claims(r.Context()); !ok {
			t.Error("handler ran without claims")
		}
	}))
	for _, auth := range []string{"", "Bearer x.y.z", "Bearer " + idp.Token(idp.Claims("a"))} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	if calls != 1 {
		t.Errorf("handler ran %d times, want once (for the valid token)", calls)
	}
	if _, ok := jwkshttp.Claims(context.Background()); ok {
		t.Error("Claims found claims in a bare context")
	}
	var tenantErr = errors.New("no tenant")
	h = jwkshttp.New(m, jwkshttp.Options{Tenant: func(*http.Request) (string, error) { return "", tenantErr }}).Wrap(http.NotFoundHandler())
	rec := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Authorization", "Bearer "+idp.Token(idp.Claims("a")))
	h.ServeHTTP(rec, r)
	if rec.Code != http.StatusUnauthorized {
		t.Errorf("tenant function error: %d, want 401", rec.Code)
	}
}

// BenchmarkMiddleware compares the middleware with a handler that calls
// jwt.Parse through the Manager by hand and puts the claims in the context
// the same way: the middleware must add no allocation of its own.
func BenchmarkMiddleware(b *testing.B) {
	idp := jwkscachetest.New()
	idp.JWKS().Set(jwkscachetest.NewKey("ES256", "bench"))
	m, err := jwkscache.New(jwkscache.Options{HTTPClient: idp.Client()})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	reg := jwkscache.Registration{TenantID: "acme", ProviderID: "main", JWKSURL: jwkscachetest.InMemoryURL + jwkscachetest.JWKSPath, Issuer: idp.Issuer()}
	if err := m.Register(context.Background(), reg); err != nil {
		b.Fatal(err)
	}
	if err := m.Refresh(context.Background(), "acme", "main"); err != nil {
		b.Fatal(err)
	}
	raw := idp.Token(idp.Claims("alice", audience))
	type ctxKey struct{}
	parser := jwt.NewParser(jwt.WithValidMethods(jwkshttp.DefaultValidMethods), jwt.WithExpirationRequired(), jwt.WithAudience(audience))
	// next is called through an interface in both, as the middleware must:
	// a handler the compiler can inline would keep the request copy of
	// WithContext on the stack and flatter the baseline.
	var noop http.Handler = http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	byHand := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, err := parser.ParseWithClaims(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "), jwt.MapClaims{},
			m.TenantKeyfuncContext(r.Context(), "acme"))
		if err != nil || !tok.Valid {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		noop.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, tok.Claims)))
	})
	mw := jwkshttp.New(m, jwkshttp.Options{Tenant: func(*http.Request) (string, error) { return "acme", nil }, Audience: audience}).Wrap(noop)
	for _, c := range []struct {
		name string
		h    http.Handler
	}{{"jwt.Parse", byHand}, {"middleware", mw}} {
		b.Run(c.name, func(b *testing.B) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.Header.Set("Authorization", "Bearer "+raw)
			w := httptest.NewRecorder()
			b.ReportAllocs()
			for b.Loop() {
				c.h.ServeHTTP(w, r)
				if w.Code != http.StatusOK {
					b.Fatalf("status %d", w.Code)
				}
			}
		})
	}
}

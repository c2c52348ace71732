package jwkscache_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/internal/testidp"
	"github.com/jwkscache/jwkscache/jwkscachetest"
)

// tkManager returns a Manager answered in memory by idp (for synctest).
func tkManager(t *testing.T, idp *testidp.IdP) *jwkscache.Manager {
	t.Helper()
	m, err := jwkscache.New(jwkscache.Options{HTTPClient: idp.Client()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// tkClaims are valid claims from iss.
func tkClaims(iss string) jwt.RegisteredClaims {
	c := kfClaims()
	c.Issuer = iss
	return c
}

// TenantKeyfunc picks the tenant's provider by the token's iss: each
// provider's tokens verify with its own keys only, and a token whose iss
// no provider of the tenant has fails without any fetch (issue 7, item 2).
func TestTenantKeyfuncRoutesByIssuer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		m := tkManager(t, idp)
		keys := map[string]*testidp.Key{}
		for i, name := range []string{"auth0", "okta", "entra"} {
			path := "/" + name + "/jwks.json"
			keys[name] = testidp.NewKey([]string{"RS256", "ES256", "EdDSA"}[i], name+"-1")
			idp.SetKeys(path, keys[name])
			idp.SetHeader(path, "Cache-Control", "max-age=300")
			if err := m.Register(t.Context(), jwkscache.Registration{TenantID: "acme", ProviderID: name,
				JWKSURL: "https://idp.test" + path, Issuer: "https://" + name + ".test/"}); err != nil {
				t.Fatal(err)
			}
		}
		// Another tenant with a provider of its own issuer.
		idp.SetKeys("/other/jwks.json", testidp.NewKey("ES256", "other-1"))
		if err := m.Register(t.Context(), jwkscache.Registration{TenantID: "globex", ProviderID: "own",
			JWKSURL: "https://idp.test/other/jwks.json", Issuer: "https://globex.test/"}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		kf := m.TenantKeyfunc("acme")
		parse := func(raw string) error {
			_, err := jwt.Parse(raw, kf, jwt.WithValidMethods(kfAllAlgs))
			return err
		}
		for name, k := range keys {
			if err := parse(k.Sign(tkClaims("https://" + name + ".test/"))); err != nil {
				t.Errorf("%s token: %v", name, err)
			}
		}
		// okta's key under auth0's issuer: routed to auth0, whose keys lack it.
		before := idp.TotalRequests()
		if err := parse(keys["okta"].Sign(tkClaims("https://auth0.test/"))); err == nil {
			t.Error("a token signed by okta's key verified under auth0's issuer")
		}
		for _, iss := range []string{"https://unknown.test/", "", "https://globex.test/", "https://auth0.test"} {
			err := parse(keys["auth0"].Sign(tkClaims(iss)))
			if !errors.Is(err, jwt.ErrTokenInvalidIssuer) || !errors.Is(err, jwkscache.ErrNotRegistered) {
				t.Errorf("iss %q: %v, want ErrTokenInvalidIssuer and ErrNotRegistered", iss, err)
			}
			if jwkscache.KeysUnavailable(err) {
				t.Errorf("iss %q: an unknown issuer is reported as keys unavailable", iss)
			}
		}
		// The unknown kid under auth0 spent one refresh; the unknown
		// issuers spent none.
		if got := idp.TotalRequests() - before; got != 1 {
			t.Errorf("%d IdP requests for the refused tokens, want 1 (okta's kid under auth0)", got)
		}
		// Unregistering a provider removes its route.
		if err := m.Unregister(t.Context(), "acme", "okta"); err != nil {
			t.Fatal(err)
		}
		if err := parse(keys["okta"].Sign(tkClaims("https://okta.test/"))); !errors.Is(err, jwt.ErrTokenInvalidIssuer) {
			t.Errorf("okta token after Unregister: %v, want ErrTokenInvalidIssuer", err)
		}
	})
}

// Two providers of one tenant may not share an Issuer; other tenants may,
// and a provider keeps, changes or frees its own (issue 7, item 2).
func TestRegisterRefusesDuplicateIssuer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := testidp.NewDefault()
		m := tkManager(t, idp)
		reg := func(tenant, provider, iss string) error {
			return m.Register(t.Context(), jwkscache.Registration{TenantID: tenant, ProviderID: provider,
				JWKSURL: "https://idp.test" + testidp.DefaultPath, Issuer: iss})
		}
		const a, b = "https://a.test/", "https://b.test/"
		if err := reg("acme", "p1", a); err != nil {
			t.Fatal(err)
		}
		err := reg("acme", "p2", a)
		var re *jwkscache.RegistrationError
		if !errors.Is(err, jwkscache.ErrInvalidRegistration) || !errors.As(err, &re) || len(re.Fields) != 1 || re.Fields[0].Field != "issuer" {
			t.Fatalf("second provider with the same issuer: %v, want a RegistrationError on issuer", err)
		}
		if _, err := m.Status("acme", "p2"); !errors.Is(err, jwkscache.ErrNotRegistered) {
			t.Errorf("the refused provider was registered: %v", err)
		}
		for _, step := range []struct {
			name                  string
			tenant, provider, iss string
			wantErr               bool
		}{
			{"other tenant, same issuer", "globex", "p1", a, false},
			{"same provider again", "acme", "p1", a, false},
			{"p1 moves to b", "acme", "p1", b, false},
			{"a is free now", "acme", "p2", a, false},
			{"b is taken by p1", "acme", "p3", b, true},
			{"no issuer twice is fine", "acme", "p4", "", false},
			{"no issuer twice is fine (2)", "acme", "p5", "", false},
		} {
			if err := reg(step.tenant, step.provider, step.iss); (err != nil) != step.wantErr {
				t.Errorf("%s: Register = %v, want error %v", step.name, err, step.wantErr)
			}
		}
		if err := m.Unregister(t.Context(), "acme", "p1"); err != nil {
			t.Fatal(err)
		}
		if err := reg("acme", "p3", b); err != nil {
			t.Errorf("b after p1 was unregistered: %v", err)
		}
	})
}

// KeyfuncContext ends every wait with the request's context: a cold load
// and an unknown kid's refresh against a hung IdP return when the context
// ends, with its error in the chain, while Keyfunc waits for the
// registration's Deadline (issue 7, item 1).
func TestKeyfuncContextEndsWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		m := tkManager(t, idp)
		// The IdP hangs from the start, so the background first load that
		// Register starts hangs too, and the lookups below join it.
		idp.SetFault(testidp.DefaultPath, testidp.Fault{Delay: time.Hour})
		if err := m.Register(t.Context(), jwkscache.Registration{TenantID: "acme", ProviderID: "idp", JWKSURL: "https://idp.test" + testidp.DefaultPath}); err != nil {
			t.Fatal(err)
		}
		raw := keys[1].Sign(kfClaims())
		for _, c := range []struct {
			name   string
			kf     func() (jwt.Keyfunc, context.CancelFunc)
			budget time.Duration
			cause  error
		}{
			{"context, cold load", func() (jwt.Keyfunc, context.CancelFunc) {
				ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				return m.KeyfuncContext(ctx, "acme", "idp"), cancel
			}, 500 * time.Millisecond, context.DeadlineExceeded},
			{"no context, cold load", func() (jwt.Keyfunc, context.CancelFunc) {
				return m.Keyfunc("acme", "idp"), func() {}
			}, jwkscache.DefaultDeadline - 500*time.Millisecond, nil}, // joins the fetch begun 500ms earlier, which ends at its Deadline
		} {
			kf, cancel := c.kf()
			start := time.Now()
			_, err := jwt.Parse(raw, kf, jwt.WithValidMethods(kfAllAlgs))
			cancel()
			if took := time.Since(start); took != c.budget {
				t.Errorf("%s: returned after %v, want %v", c.name, took, c.budget)
			}
			if err == nil || c.cause != nil && !errors.Is(err, c.cause) {
				t.Errorf("%s: error %v, want one wrapping %v", c.name, err, c.cause)
			}
			if !jwkscache.KeysUnavailable(err) {
				t.Errorf("%s: KeysUnavailable(%v) = false, want true", c.name, err)
			}
			synctest.Wait()
		}
		// Warm, then an unknown kid whose refresh hangs.
		idp.ClearFault(testidp.DefaultPath)
		if err := m.Refresh(t.Context(), "acme", "idp"); err != nil {
			t.Fatal(err)
		}
		idp.SetFault(testidp.DefaultPath, testidp.Fault{Delay: time.Hour})
		rotated := testidp.NewKey("ES256", "rotated-1")
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := jwt.Parse(rotated.Sign(kfClaims()), m.KeyfuncContext(ctx, "acme", "idp"), jwt.WithValidMethods(kfAllAlgs))
		if took := time.Since(start); took != 300*time.Millisecond || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("unknown kid with a hung refresh: %v after %v, want DeadlineExceeded after 300ms", err, took)
		}
		// Known kids keep verifying from memory meanwhile.
		if _, err := jwt.Parse(raw, m.KeyfuncContext(ctx, "acme", "idp"), jwt.WithValidMethods(kfAllAlgs)); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("known kid: %v", err)
		}
	})
}

// KeysUnavailable applies one precedence to errors that match several
// sentinels (issue 7, item 3).
func TestKeysUnavailablePrecedence(t *testing.T) {
	upstream := &jwkscache.FetchError{TenantID: "t", ProviderID: "p", URL: "https://idp.test/jwks", Class: jwkscache.ClassStatus, StatusCode: 503}
	blocked := &jwkscache.FetchError{TenantID: "t", ProviderID: "p", URL: "https://idp.test/jwks", Class: jwkscache.ClassBlockedAddress}
	pin := &jwkscache.FetchError{TenantID: "t", ProviderID: "p", URL: "https://idp.test/jwks", Class: jwkscache.ClassPin}
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"unknown kid", fmt.Errorf("kid: %w", jwkscache.ErrKeyNotFound), false},
		{"unknown kid during an outage", fmt.Errorf("kid: %w (refresh failed: %w)", jwkscache.ErrKeyNotFound, upstream), true},
		{"unknown kid, pin mismatch", fmt.Errorf("kid: %w (refresh failed: %w)", jwkscache.ErrKeyNotFound, pin), true},
		{"no keys, blocked address", fmt.Errorf("%w: %w", jwkscache.ErrNoKeys, blocked), true},
		{"no keys", jwkscache.ErrNoKeys, true},
		{"denied", jwkscache.ErrKeyDenied, false},
		{"not registered", jwkscache.ErrNotRegistered, false},
		{"closed", jwkscache.ErrClosed, true},
		{"deadline", fmt.Errorf("wait: %w", context.DeadlineExceeded), true},
		{"wrong issuer", jwt.ErrTokenInvalidIssuer, false},
		{"expired", fmt.Errorf("%w: %w", jwt.ErrTokenInvalidClaims, jwt.ErrTokenExpired), false},
		{"signature", jwt.ErrTokenSignatureInvalid, false},
	} {
		if got := jwkscache.KeysUnavailable(c.err); got != c.want {
			t.Errorf("%s: KeysUnavailable(%v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}

// BenchmarkTenantKeyfunc compares issuer routing with a provider's
// Keyfunc on a warm key: routing adds one map lookup and no allocation.
func BenchmarkTenantKeyfunc(b *testing.B) {
	k := testidp.NewKey("ES256", "bench-ES256")
	e := newKFEnv(b, jwkscache.Registration{Issuer: "https://idp.test/"}, k)
	e.warm(b)
	// A tenant with 1,000 providers: the route must not scan them.
	for i := range 999 {
		if err := e.m.Register(context.Background(), jwkscache.Registration{TenantID: kfTenant, ProviderID: fmt.Sprintf("p%d", i),
			JWKSURL: e.url + kfPath, Issuer: fmt.Sprintf("https://idp%d.test/", i)}); err != nil {
			b.Fatal(err)
		}
		if _, err := e.m.Resolve(context.Background(), kfTenant, fmt.Sprintf("p%d", i)); err != nil {
			b.Fatal(err) // loaded, so no background work runs during the benchmark
		}
	}
	tok, _, err := jwt.NewParser().ParseUnverified(k.Sign(tkClaims("https://idp.test/")), jwt.MapClaims{})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		kf   jwt.Keyfunc
	}{
		{"provider", e.m.Keyfunc(kfTenant, kfProvider)},
		{"tenant", e.m.TenantKeyfunc(kfTenant)},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.kf(tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Every refusal of Keyfunc names the tenant, provider and URL: the token's
// faults (kid header type, algorithm, issuer) included.
func TestKeyfuncErrorsNameProvider(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		m := tkManager(t, idp)
		url := "https://idp.test" + testidp.DefaultPath
		if err := m.Register(t.Context(), jwkscache.Registration{TenantID: "acme", ProviderID: "idp", JWKSURL: url, Issuer: "https://idp.test/"}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		for name, raw := range map[string]string{
			"wrong issuer":     keys[1].Sign(tkClaims("https://evil.test/")),
			"alg none":         jwkscachetest.UnsignedToken(tkClaims("https://idp.test/"), map[string]any{"kid": keys[1].KID}),
			"kid not a string": keys[1].SignWith(tkClaims("https://idp.test/"), map[string]any{"kid": 7}),
		} {
			_, err := jwt.Parse(raw, m.Keyfunc("acme", "idp"))
			var pe *jwkscache.ProviderError
			if !errors.As(err, &pe) || pe.TenantID != "acme" || pe.ProviderID != "idp" || pe.URL != url {
				t.Errorf("%s: %v, want a ProviderError naming acme/idp and %s", name, err, url)
			}
		}
	})
}

package jwkscachetest_test

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"

	jwt "github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/jwkscachetest"
	"github.com/jwkscache/jwkscache/jwkscachetest/idpconfig"
)

// managerFor returns a Manager trusting p, with p's main key set
// registered as acme/main (by JWKS URL, or by issuer only through
// discovery), closed when the test ends.
func managerFor(t *testing.T, p *jwkscachetest.IdP, discovery bool) *jwkscache.Manager {
	t.Helper()
	m, err := jwkscache.New(idpconfig.ManagerOptions(p))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	reg := idpconfig.Registration(p, "acme", "main")
	if discovery {
		reg.JWKSURL = ""
	}
	if err := m.Register(t.Context(), reg); err != nil {
		t.Fatalf("Register: %v", err)
	}
	return m
}

// parse verifies raw with m's Keyfunc, accepting the asymmetric algorithms
// of the IdP and audience "api".
func parse(m *jwkscache.Manager, raw string, opts ...jwt.ParserOption) (*jwt.Token, error) {
	opts = append([]jwt.ParserOption{
		jwt.WithValidMethods([]string{"RS256", "PS256", "ES256", "EdDSA"}),
		jwt.WithAudience("api"),
	}, opts...)
	return jwt.Parse(raw, m.Keyfunc("acme", "main"), opts...)
}

// A Manager verifies the IdP's tokens over TLS and refuses the usual bad
// ones.
func TestManagerVerifiesOverTLS(t *testing.T) {
	p := jwkscachetest.New()
	start(t, p, true)
	m := managerFor(t, p, false)

	good := p.Claims("alice", "api")
	tok, err := parse(m, p.Token(good))
	if err != nil {
		t.Fatalf("valid token: %v", err)
	}
	if sub, _ := tok.Claims.GetSubject(); sub != "alice" {
		t.Errorf("sub = %q", sub)
	}

	expired := good
	expired.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute))
	wrongAud := good
	wrongAud.Audience = jwt.ClaimStrings{"other"}
	wrongIss := good
	wrongIss.Issuer = "https://evil.test"
	signer := p.SigningKey()
	cases := []struct {
		name string
		raw  string
		want error // nil: any error
	}{
		{"expired", p.Token(expired), jwt.ErrTokenExpired},
		{"wrong audience", p.Token(wrongAud), jwt.ErrTokenInvalidAudience},
		{"wrong issuer", p.Token(wrongIss), jwt.ErrTokenInvalidIssuer},
		{"alg none", jwkscachetest.UnsignedToken(good, map[string]any{"kid": signer.KID}), jwt.ErrTokenSignatureInvalid},
		{"HS256 with the public key", signer.SignHMACWithPublicKey(good), jwt.ErrTokenSignatureInvalid},
		{"unpublished key", jwkscachetest.NewUniqueKey("RS256", "rogue").Sign(good), jwkscache.ErrKeyNotFound},
		{"published kid, other key", jwkscachetest.NewUniqueKey("RS256", signer.KID).Sign(good), jwt.ErrTokenSignatureInvalid},
	}
	for _, tc := range cases {
		if _, err := parse(m, tc.raw); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	// The Manager refuses the confusion tokens on its own too, without
	// WithValidMethods.
	for _, raw := range []string{cases[3].raw, cases[4].raw} {
		if _, err := jwt.Parse(raw, m.Keyfunc("acme", "main")); !errors.Is(err, jwkscache.ErrKeyNotFound) {
			t.Errorf("without WithValidMethods: err = %v", err)
		}
	}
}

// Both kinds of rotation reach a Manager: an immediate one through the
// unknown kid of the first token, a pre-published one through a refresh
// before the switch, after which no fetch is needed.
func TestManagerRotation(t *testing.T) {
	p := jwkscachetest.New()
	start(t, p, true)
	m := managerFor(t, p, false)
	old := p.Token(p.Claims("alice", "api"))
	if _, err := parse(m, old); err != nil {
		t.Fatal(err)
	}

	// Immediate.
	before := p.Requests(jwkscachetest.JWKSPath)
	p.JWKS().Rotate("ES256")
	if _, err := parse(m, p.Token(p.Claims("alice", "api"))); err != nil {
		t.Fatalf("after an immediate rotation: %v", err)
	}
	if _, err := parse(m, old); err != nil {
		t.Fatalf("previous key after an immediate rotation: %v", err)
	}
	if got := p.Requests(jwkscachetest.JWKSPath) - before; got != 1 {
		t.Errorf("immediate rotation cost %d fetches, want 1", got)
	}

	// Pre-published.
	next := p.JWKS().PrePublish("EdDSA")
	if err := m.Refresh(t.Context(), "acme", "main"); err != nil {
		t.Fatal(err)
	}
	before = p.Requests(jwkscachetest.JWKSPath)
	p.JWKS().SetSigningKey(next)
	if _, err := parse(m, p.Token(p.Claims("alice", "api"))); err != nil {
		t.Fatalf("after a pre-published rotation: %v", err)
	}
	if got := p.Requests(jwkscachetest.JWKSPath) - before; got != 0 {
		t.Errorf("pre-published rotation cost %d fetches, want 0", got)
	}

	// Removal: once refreshed, the Manager drops the old keys.
	p.JWKS().RemoveOld()
	if err := m.Refresh(t.Context(), "acme", "main"); err != nil {
		t.Fatal(err)
	}
	if _, err := parse(m, old); !errors.Is(err, jwkscache.ErrKeyNotFound) {
		t.Errorf("removed key: err = %v", err)
	}
}

// A registration by issuer alone finds the key set through the IdP's
// discovery document.
func TestManagerDiscovery(t *testing.T) {
	p := jwkscachetest.New()
	start(t, p, true)
	m := managerFor(t, p, true)
	if _, err := parse(m, p.Token(p.Claims("alice", "api"))); err != nil {
		t.Fatal(err)
	}
	if p.Requests(jwkscachetest.DiscoveryPath) != 1 || p.Requests(jwkscachetest.JWKSPath) != 1 {
		t.Errorf("requests = %v", p.RequestCounts())
	}
}

func TestManagerStartHTTP(t *testing.T) {
	p := jwkscachetest.New()
	start(t, p, false)
	m := managerFor(t, p, false)
	if _, err := parse(m, p.Token(p.Claims("alice", "api"))); err != nil {
		t.Fatal(err)
	}
}

// An IdP that is not started serves a Manager in memory, inside a synctest
// bubble, where a real server could not be used.
func TestManagerInMemorySynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := jwkscachetest.New()
		m := managerFor(t, p, false)
		if _, err := parse(m, p.Token(p.Claims("alice", "api"))); err != nil {
			t.Fatal(err)
		}

		// A slow key set: the Manager waits on the fake clock.
		p.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Delay: 2 * time.Second, Count: 1})
		p.JWKS().Rotate("ES256")
		begin := time.Now()
		if _, err := parse(m, p.Token(p.Claims("alice", "api"))); err != nil {
			t.Fatalf("after rotation: %v", err)
		}
		if d := time.Since(begin); d != 2*time.Second {
			t.Errorf("verification took %v of fake time, want 2s", d)
		}

		// Past the max-age, the Manager revalidates with a 304.
		before := p.Requests(jwkscachetest.JWKSPath)
		time.Sleep(jwkscachetest.DefaultMaxAge + time.Minute)
		synctest.Wait()
		if got := p.Requests(jwkscachetest.JWKSPath); got <= before {
			t.Errorf("no refresh within max-age: requests %d", got)
		}
		if p.LastRequest(jwkscachetest.JWKSPath).Get("If-None-Match") != p.ETag(jwkscachetest.JWKSPath) {
			t.Errorf("refresh headers = %v", p.LastRequest(jwkscachetest.JWKSPath))
		}
	})
}

package jwkscachetest_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	jwt "github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache/jwkscachetest"
)

// fetchJWKS fetches the main key set of p in memory.
func fetchJWKS(t *testing.T, p *jwkscachetest.IdP) jose.JSONWebKeySet {
	t.Helper()
	_, body := mustGet(t, p.Client(), p.JWKSURL())
	return parseJWKS(t, body)
}

// verifyJOSE verifies tok with go-jose against the key of set named by the
// token's kid, and returns the payload.
func verifyJOSE(t *testing.T, tok, alg string, set jose.JSONWebKeySet) []byte {
	t.Helper()
	jws, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
	if err != nil {
		t.Fatalf("go-jose: parsing %s token: %v", alg, err)
	}
	kid := jws.Signatures[0].Header.KeyID
	keys := set.Key(kid)
	if len(keys) != 1 {
		t.Fatalf("go-jose: kid %q matches %d published keys", kid, len(keys))
	}
	payload, err := jws.Verify(keys[0])
	if err != nil {
		t.Fatalf("go-jose: verifying %s token: %v", alg, err)
	}
	return payload
}

// verifyJWT verifies tok with golang-jwt against the key of set named by
// the token's kid.
func verifyJWT(t *testing.T, tok, alg string, set jose.JSONWebKeySet) *jwt.Token {
	t.Helper()
	parsed, err := jwt.Parse(tok, func(tok *jwt.Token) (any, error) {
		kid, _ := tok.Header["kid"].(string)
		keys := set.Key(kid)
		if len(keys) != 1 {
			return nil, jwt.ErrTokenUnverifiable
		}
		return keys[0].Key, nil
	}, jwt.WithValidMethods([]string{alg}))
	if err != nil {
		t.Fatalf("golang-jwt: verifying %s token: %v", alg, err)
	}
	return parsed
}

// Tokens minted by the IdP, with every algorithm, verify with both go-jose
// and golang-jwt against the key set the IdP publishes, over TLS.
func TestTokenEveryAlgorithm(t *testing.T) {
	for _, alg := range allAlgs {
		t.Run(alg, func(t *testing.T) {
			p := jwkscachetest.New()
			base := start(t, p, true)
			k := jwkscachetest.NewKey(alg, "sig-"+alg)
			p.JWKS().SetSigningKey(k)
			if p.SigningKey() != k {
				t.Fatalf("SigningKey = %v", p.SigningKey())
			}
			_, body := mustGet(t, tlsClient(t, p, ""), base+jwkscachetest.JWKSPath)
			set := parseJWKS(t, body)

			tok := p.Token(jwt.MapClaims{"sub": "alice"})
			if payload := verifyJOSE(t, tok, alg, set); !strings.Contains(string(payload), `"sub":"alice"`) {
				t.Errorf("payload = %s", payload)
			}
			parsed := verifyJWT(t, tok, alg, set)
			if parsed.Header["kid"] != k.KID || parsed.Header["alg"] != alg || parsed.Header["typ"] != "JWT" {
				t.Errorf("header = %v", parsed.Header)
			}

			noKID := p.TokenWithoutKID(jwt.MapClaims{"sub": "bob"})
			parsed, err := jwt.Parse(noKID, func(*jwt.Token) (any, error) { return k.Public.Key, nil }, jwt.WithValidMethods([]string{alg}))
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := parsed.Header["kid"]; ok {
				t.Errorf("TokenWithoutKID header = %v", parsed.Header)
			}

			extra := p.TokenWithHeader(jwt.MapClaims{}, map[string]any{"typ": "at+jwt", "x5u": "https://evil.test/"})
			parsed = verifyJWT(t, extra, alg, set)
			if parsed.Header["typ"] != "at+jwt" || parsed.Header["x5u"] != "https://evil.test/" || parsed.Header["kid"] != k.KID {
				t.Errorf("TokenWithHeader header = %v", parsed.Header)
			}
		})
	}
}

func TestTokenWithHeaderRemovesAndOverrides(t *testing.T) {
	p := jwkscachetest.New()
	tok := p.TokenWithHeader(jwt.MapClaims{}, map[string]any{"kid": nil, "alg": "ES256"})
	parsed, _, err := jwt.NewParser().ParseUnverified(tok, jwt.MapClaims{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := parsed.Header["kid"]; ok || parsed.Header["alg"] != "ES256" {
		t.Errorf("header = %v", parsed.Header)
	}
	// The header lies: the signature is still RS256.
	if _, err := jwt.Parse(tok, func(*jwt.Token) (any, error) { return p.SigningKey().Public.Key, nil }); err == nil {
		t.Error("token with a lying alg verified")
	}
}

func TestTokenWithoutSigningKeyPanics(t *testing.T) {
	for name, p := range map[string]*jwkscachetest.IdP{
		"empty":   jwkscachetest.NewEmpty(),
		"removed": func() *jwkscachetest.IdP { p := jwkscachetest.New(); p.JWKS().Remove("k1"); return p }(),
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if r := recover(); r == nil || !strings.Contains(r.(string), "no signing key at /jwks.json") {
					t.Errorf("recovered %v", r)
				}
			}()
			p.Token(jwt.MapClaims{})
		})
	}
}

func TestClaims(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := jwkscachetest.New()
		c := p.Claims("alice", "api", "web")
		if c.Issuer != jwkscachetest.InMemoryURL || c.Subject != "alice" || len(c.Audience) != 2 || c.Audience[1] != "web" {
			t.Errorf("claims = %+v", c)
		}
		if !c.IssuedAt.Equal(time.Now()) || !c.ExpiresAt.Equal(time.Now().Add(time.Hour)) || c.NotBefore != nil {
			t.Errorf("times = %v %v %v", c.IssuedAt, c.ExpiresAt, c.NotBefore)
		}
		if c := p.Claims("bob"); c.Audience != nil {
			t.Errorf("no audience: %v", c.Audience)
		}
		set := fetchJWKS(t, p)
		verifyJWT(t, p.Token(c), "RS256", set)

		// Negative tests are a matter of claims.
		c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Second))
		_, err := jwt.Parse(p.Token(c), func(*jwt.Token) (any, error) { return p.SigningKey().Public.Key, nil })
		if !errors.Is(err, jwt.ErrTokenExpired) {
			t.Errorf("expired token: %v", err)
		}
	})
}

func TestUnsignedToken(t *testing.T) {
	p := jwkscachetest.New()
	tok := jwkscachetest.UnsignedToken(p.Claims("alice"), map[string]any{"kid": "k1", "typ": nil})
	if !strings.HasSuffix(tok, ".") || strings.Count(tok, ".") != 2 {
		t.Fatalf("token = %q", tok)
	}
	parsed, _, err := jwt.NewParser().ParseUnverified(tok, jwt.MapClaims{})
	if err != nil {
		t.Fatal(err)
	}
	if parsed.Header["alg"] != "none" || parsed.Header["kid"] != "k1" || parsed.Header["typ"] != nil {
		t.Errorf("header = %v", parsed.Header)
	}
	if _, err := jwt.Parse(tok, func(*jwt.Token) (any, error) { return p.SigningKey().Public.Key, nil }); err == nil {
		t.Error("alg=none token verified")
	}
}

func TestSignHMACWithPublicKey(t *testing.T) {
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		t.Run(alg, func(t *testing.T) {
			k := jwkscachetest.NewKey(alg, "victim")
			pemKey := k.PublicKeyPEM()
			if !strings.HasPrefix(string(pemKey), "-----BEGIN PUBLIC KEY-----\n") {
				t.Fatalf("PEM = %q", pemKey)
			}
			tok := k.SignHMACWithPublicKey(jwt.MapClaims{"sub": "mallory"})

			// The MAC is HMAC-SHA256 of the signing input under the PEM bytes.
			i := strings.LastIndexByte(tok, '.')
			mac := hmac.New(sha256.New, pemKey)
			mac.Write([]byte(tok[:i]))
			if got := base64.RawURLEncoding.EncodeToString(mac.Sum(nil)); got != tok[i+1:] {
				t.Errorf("MAC = %s, want %s", tok[i+1:], got)
			}
			// A verifier that lets the token choose HS256 and hands it the
			// public key falls for it; one that pins the algorithm does not.
			if _, err := jwt.Parse(tok, func(*jwt.Token) (any, error) { return pemKey, nil }); err != nil {
				t.Errorf("naive verifier refused the confusion token: %v", err)
			}
			if _, err := jwt.Parse(tok, func(*jwt.Token) (any, error) { return k.Public.Key, nil }, jwt.WithValidMethods([]string{alg})); err == nil {
				t.Error("confusion token verified under the pinned algorithm")
			}
		})
	}
}

package jwkscache_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/netip"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/internal/testidp"
)

// The tests of this file verify real tokens through Manager.Keyfunc against
// a testidp server on loopback TLS, the way a service uses the library.

const (
	kfTenant   = "acme"
	kfProvider = "idp"
	kfPath     = "/jwks.json"
)

// kfAllAlgs are the JWS algorithms the cache verifies.
var kfAllAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// kfEnv is a Manager with one provider (kfTenant, kfProvider) registered
// on a TLS testidp serving keys at kfPath.
type kfEnv struct {
	idp *testidp.IdP
	m   *jwkscache.Manager
	url string // the server's base URL, https://127.0.0.1:port
}

// newKFEnv starts a TLS IdP serving keys and returns a Manager with the
// provider registered (not yet loaded) with reg's optional fields.
func newKFEnv(tb testing.TB, reg jwkscache.Registration, keys ...*testidp.Key) *kfEnv {
	tb.Helper()
	idp := testidp.New()
	idp.SetKeys(kfPath, keys...)
	return newKFEnvIdP(tb, reg, idp)
}

// newKFEnvIdP is newKFEnv for an IdP whose content the caller has set up
// at kfPath. The content must be final: Register starts the first fetch.
func newKFEnvIdP(tb testing.TB, reg jwkscache.Registration, idp *testidp.IdP) *kfEnv {
	tb.Helper()
	idp.SetHeader(kfPath, "Cache-Control", "max-age=300")
	srv := idp.StartTLS(tb)
	m := newKFManager(tb, idp)
	reg.TenantID, reg.ProviderID, reg.JWKSURL = kfTenant, kfProvider, srv.URL+kfPath
	if err := m.Register(context.Background(), reg); err != nil {
		tb.Fatalf("Register: %v", err)
	}
	return &kfEnv{idp: idp, m: m, url: srv.URL}
}

// newKFManager returns a Manager trusting idp's CA and allowing loopback.
func newKFManager(tb testing.TB, idp *testidp.IdP) *jwkscache.Manager {
	tb.Helper()
	m, err := jwkscache.New(jwkscache.Options{
		RootCAs:          idp.CertPool(),
		AllowedAddresses: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	})
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() { _ = m.Close() })
	return m
}

// parse verifies raw through the provider's Keyfunc, allowing every
// supported algorithm.
func (e *kfEnv) parse(raw string, opts ...jwt.ParserOption) (*jwt.Token, error) {
	opts = append([]jwt.ParserOption{jwt.WithValidMethods(kfAllAlgs)}, opts...)
	return jwt.Parse(raw, e.m.Keyfunc(kfTenant, kfProvider), opts...)
}

// warm loads the provider's keys so that later request counts start from a
// known point: after a Refresh has completed, no first load is pending and
// the next scheduled refresh is minutes away.
func (e *kfEnv) warm(tb testing.TB) {
	tb.Helper()
	if err := e.m.Refresh(context.Background(), kfTenant, kfProvider); err != nil {
		tb.Fatalf("Refresh: %v", err)
	}
}

// kfClaims are valid claims for one hour.
func kfClaims() jwt.RegisteredClaims {
	now := time.Now()
	return jwt.RegisteredClaims{
		Subject:   "alice",
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)),
	}
}

// mustVerify fails the test unless raw verifies.
func (e *kfEnv) mustVerify(tb testing.TB, raw string) *jwt.Token {
	tb.Helper()
	tok, err := e.parse(raw)
	if err != nil {
		tb.Fatalf("token refused: %v", err)
	}
	if !tok.Valid {
		tb.Fatal("token not valid")
	}
	return tok
}

// mustRefuse fails the test unless raw is refused, and returns the error.
func (e *kfEnv) mustRefuse(tb testing.TB, raw string) error {
	tb.Helper()
	tok, err := e.parse(raw)
	if err == nil {
		tb.Fatalf("token accepted (header %v), want refused", tok.Header)
	}
	return err
}

func TestKeyfuncVerifiesEveryAlgorithm(t *testing.T) {
	keys := make([]*testidp.Key, 0, len(kfAllAlgs))
	for _, alg := range kfAllAlgs {
		keys = append(keys, testidp.NewKey(alg, "key-"+alg))
	}
	e := newKFEnv(t, jwkscache.Registration{}, keys...)
	for _, k := range keys {
		t.Run(k.Alg, func(t *testing.T) {
			tok := e.mustVerify(t, k.Sign(kfClaims()))
			if got := tok.Method.Alg(); got != k.Alg {
				t.Errorf("verified with %s, want %s", got, k.Alg)
			}
			if sub, _ := tok.Claims.GetSubject(); sub != "alice" {
				t.Errorf("sub = %q, want alice", sub)
			}
		})
	}
	if n := e.idp.Requests(kfPath); n < 1 || n > 2 {
		// One load; a second (conditional) fetch may come from the
		// scheduler's first visit racing the lookup's cold load.
		t.Errorf("IdP saw %d requests for %d verifications, want 1 or 2", n, len(keys))
	}
}

// A JWK without alg may verify every algorithm of its family.
func TestKeyfuncJWKWithoutAlgVerifiesFamily(t *testing.T) {
	rsa := testidp.NewKey("RS256", "rsa-noalg")
	rsa.Public.Algorithm = ""
	e := newKFEnv(t, jwkscache.Registration{}, rsa)
	for _, alg := range []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"} {
		t.Run(alg, func(t *testing.T) {
			signer := &testidp.Key{KID: rsa.KID, Alg: alg, Signer: rsa.Signer}
			e.mustVerify(t, signer.Sign(kfClaims()))
		})
	}
	t.Run("ES256", func(t *testing.T) {
		// An EC token naming the RSA key's kid: another family.
		ec := testidp.NewKey("ES256", rsa.KID)
		err := e.mustRefuse(t, ec.Sign(kfClaims()))
		if !errors.Is(err, jwkscache.ErrKeyNotFound) {
			t.Errorf("err = %v, want ErrKeyNotFound", err)
		}
	})
}

func TestKeyfuncRefusesUnpublishedKey(t *testing.T) {
	rs := testidp.NewKey("RS256", "rsa-1")
	ec := testidp.NewKey("ES256", "ec-1")
	e := newKFEnv(t, jwkscache.Registration{}, rs, ec)
	e.warm(t)

	t.Run("unknown kid", func(t *testing.T) {
		rogue := testidp.NewUniqueKey("RS256", "rogue")
		before := e.idp.Requests(kfPath)
		err := e.mustRefuse(t, rogue.Sign(kfClaims()))
		if !errors.Is(err, jwkscache.ErrKeyNotFound) {
			t.Errorf("err = %v, want ErrKeyNotFound", err)
		}
		if !errors.Is(err, jwt.ErrTokenUnverifiable) {
			t.Errorf("err = %v, want jwt.ErrTokenUnverifiable", err)
		}
		// The unknown kid costs exactly one refresh, which did not find it.
		if got := e.idp.Requests(kfPath) - before; got != 1 {
			t.Errorf("unknown kid caused %d fetches, want 1", got)
		}
		// Asked again, the kid is in the negative cache: no new fetch.
		e.mustRefuse(t, rogue.Sign(kfClaims()))
		if got := e.idp.Requests(kfPath) - before; got != 1 {
			t.Errorf("repeated unknown kid caused %d fetches in all, want 1", got)
		}
	})
	t.Run("published kid, other key material", func(t *testing.T) {
		// Same kid and alg as a published key, signed by another key.
		forged := testidp.NewKey("ES256", ec.KID)
		err := e.mustRefuse(t, forged.Sign(kfClaims()))
		if !errors.Is(err, jwt.ErrTokenSignatureInvalid) {
			t.Errorf("err = %v, want jwt.ErrTokenSignatureInvalid", err)
		}
	})
}

// kfRSAPublicPEM returns the PEM encoding of the public key of k, the bytes
// an algorithm-confusion attacker uses as HMAC secret.
func kfRSAPublicPEM(tb testing.TB, k *testidp.Key) []byte {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(k.Signer.Public())
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// The classic algorithm confusion (CVE-2015-9235 and its kin): a token
// whose header says HS256, MACed with the RSA public key as secret. The
// parser is used without WithValidMethods so that the Keyfunc alone must
// refuse it.
func TestKeyfuncRefusesAlgorithmConfusion(t *testing.T) {
	rs := testidp.NewKey("RS256", "rsa-1")
	e := newKFEnv(t, jwkscache.Registration{}, rs)
	e.warm(t)
	kf := e.m.Keyfunc(kfTenant, kfProvider)

	pubPEM := kfRSAPublicPEM(t, rs)
	pubJWK, err := json.Marshal(rs.Public)
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string][]byte{
		"PEM": pubPEM,
		"DER": kfPEMBody(t, pubPEM),
		"JWK": pubJWK,
	}
	for name, secret := range secrets {
		for _, alg := range []*jwt.SigningMethodHMAC{jwt.SigningMethodHS256, jwt.SigningMethodHS384, jwt.SigningMethodHS512} {
			t.Run(alg.Alg()+"/"+name, func(t *testing.T) {
				tok := jwt.NewWithClaims(alg, kfClaims())
				tok.Header["kid"] = rs.KID
				raw, err := tok.SignedString(secret)
				if err != nil {
					t.Fatal(err)
				}
				before := e.idp.Requests(kfPath)
				// No WithValidMethods: the Keyfunc is the only guard.
				_, err = jwt.Parse(raw, kf)
				if err == nil {
					t.Fatal("HMAC token verified with the RSA public key")
				}
				if !errors.Is(err, jwt.ErrTokenUnverifiable) || !errors.Is(err, jwkscache.ErrKeyNotFound) {
					t.Errorf("err = %v, want the Keyfunc's refusal (jwt.ErrTokenUnverifiable, ErrKeyNotFound)", err)
				}
				// The Keyfunc itself returns no key for an HMAC header.
				parsed, _, perr := jwt.NewParser().ParseUnverified(raw, jwt.MapClaims{})
				if perr != nil {
					t.Fatal(perr)
				}
				if key, kerr := kf(parsed); kerr == nil || key != nil {
					t.Errorf("Keyfunc returned (%T, %v) for an %s header, want (nil, error)", key, kerr, alg.Alg())
				}
				if got := e.idp.Requests(kfPath) - before; got != 0 {
					t.Errorf("an HMAC header with a known kid caused %d fetches, want 0", got)
				}
				// Second line of defence: had a Keyfunc returned the RSA
				// public key, jwt would refuse to use it as an HMAC secret.
				naive := func(*jwt.Token) (any, error) { return rs.Signer.Public(), nil }
				if _, err := jwt.Parse(raw, naive); !errors.Is(err, jwt.ErrTokenSignatureInvalid) {
					t.Errorf("naive Keyfunc: err = %v, want jwt.ErrTokenSignatureInvalid", err)
				}
			})
		}
	}
}

func kfPEMBody(tb testing.TB, b []byte) []byte {
	tb.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		tb.Fatal("bad PEM")
	}
	return blk.Bytes
}

func TestKeyfuncRefusesAlgNone(t *testing.T) {
	rs := testidp.NewKey("RS256", "rsa-1")
	e := newKFEnv(t, jwkscache.Registration{}, rs)
	e.warm(t)
	tok := jwt.NewWithClaims(jwt.SigningMethodNone, kfClaims())
	tok.Header["kid"] = rs.KID
	raw, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	_, err = jwt.Parse(raw, e.m.Keyfunc(kfTenant, kfProvider))
	if err == nil {
		t.Fatal(`alg "none" token accepted`)
	}
	if !errors.Is(err, jwkscache.ErrKeyNotFound) {
		t.Errorf("err = %v, want ErrKeyNotFound from the Keyfunc", err)
	}
}

// A key whose JWK names an alg verifies only that alg, even when the token
// is genuinely signed with the same key material under another algorithm
// of the family.
func TestKeyfuncRefusesAlgOtherThanJWK(t *testing.T) {
	rs := testidp.NewKey("RS256", "rsa-1")
	e := newKFEnv(t, jwkscache.Registration{}, rs)
	e.warm(t)
	for _, alg := range []string{"PS256", "RS384", "RS512", "PS512"} {
		t.Run(alg, func(t *testing.T) {
			// A real alg signature by the published key: only the JWK's
			// alg stands in the way.
			other := &testidp.Key{KID: rs.KID, Alg: alg, Signer: rs.Signer}
			before := e.idp.Requests(kfPath)
			err := e.mustRefuse(t, other.Sign(kfClaims()))
			if !errors.Is(err, jwkscache.ErrKeyNotFound) {
				t.Errorf("err = %v, want ErrKeyNotFound", err)
			}
			if !strings.Contains(err.Error(), "may not verify "+alg) {
				t.Errorf("err = %v, want it to say the key may not verify %s", err, alg)
			}
			if got := e.idp.Requests(kfPath) - before; got != 0 {
				t.Errorf("a known kid with another alg caused %d fetches, want 0", got)
			}
		})
	}
	// The JWK's own alg still verifies.
	e.mustVerify(t, rs.Sign(kfClaims()))
}

// A kid shared by keys of different families is told apart by the token's
// alg; the cache never takes the first.
func TestKeyfuncDuplicateKIDAcrossFamilies(t *testing.T) {
	rs := testidp.NewKey("RS256", "shared")
	ec := testidp.NewKey("ES256", "shared")
	ed := testidp.NewKey("EdDSA", "shared")

	t.Run("AddKey", func(t *testing.T) {
		idp := testidp.New()
		idp.SetKeys(kfPath, rs)
		idp.AddKey(kfPath, ec)
		idp.AddKey(kfPath, ed)
		e := newKFEnvIdP(t, jwkscache.Registration{}, idp)
		for _, k := range []*testidp.Key{rs, ec, ed} {
			e.mustVerify(t, k.Sign(kfClaims()))
		}
		// Key, which does not know the alg, calls the kid ambiguous.
		_, err := e.m.Key(context.Background(), kfTenant, kfProvider, "shared")
		if !errors.Is(err, jwkscache.ErrKeyNotFound) {
			t.Errorf("Key(shared) err = %v, want ErrKeyNotFound (ambiguous)", err)
		}
	})
	t.Run("SetBody", func(t *testing.T) {
		// The same document written by hand, EC first.
		body, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{ec.Public, rs.Public}})
		if err != nil {
			t.Fatal(err)
		}
		idp := testidp.New()
		idp.SetBody(kfPath, body, testidp.ContentTypeJWKS)
		e := newKFEnvIdP(t, jwkscache.Registration{}, idp)
		e.mustVerify(t, rs.Sign(kfClaims()))
		e.mustVerify(t, ec.Sign(kfClaims()))
		// A genuine ES256 signature by another key under the shared kid
		// reaches the EC key and fails its signature check.
		forged := testidp.NewKey("ES256", "shared")
		err = e.mustRefuse(t, forged.Sign(kfClaims()))
		if !errors.Is(err, jwt.ErrTokenSignatureInvalid) {
			t.Errorf("err = %v, want jwt.ErrTokenSignatureInvalid", err)
		}
	})
}

// OpenID Connect Core 1.0, section 10.1: a token may omit kid only when the
// set holds a single key that may verify it.
func TestKeyfuncTokenWithoutKID(t *testing.T) {
	t.Run("one candidate", func(t *testing.T) {
		rs := testidp.NewKey("RS256", "rsa-1")
		ec := testidp.NewKey("ES256", "ec-1")
		e := newKFEnv(t, jwkscache.Registration{}, rs, ec)
		e.mustVerify(t, rs.SignWithoutKID(kfClaims()))
		e.mustVerify(t, ec.SignWithoutKID(kfClaims()))
	})
	t.Run("one key without kid", func(t *testing.T) {
		rs := testidp.NewKey("RS256", "")
		e := newKFEnv(t, jwkscache.Registration{}, rs)
		e.mustVerify(t, rs.SignWithoutKID(kfClaims()))
	})
	t.Run("several candidates", func(t *testing.T) {
		rs1 := testidp.NewKey("RS256", "rsa-1")
		rs2 := testidp.NewKey("RS256", "rsa-2")
		ec := testidp.NewKey("ES256", "ec-1")
		e := newKFEnv(t, jwkscache.Registration{}, rs1, rs2, ec)
		e.warm(t)
		before := e.idp.Requests(kfPath)
		for _, k := range []*testidp.Key{rs1, rs2} {
			err := e.mustRefuse(t, k.SignWithoutKID(kfClaims()))
			if !errors.Is(err, jwkscache.ErrKeyNotFound) {
				t.Errorf("err = %v, want ErrKeyNotFound", err)
			}
		}
		// The EC key is the only candidate for ES256.
		e.mustVerify(t, ec.SignWithoutKID(kfClaims()))
		if got := e.idp.Requests(kfPath) - before; got != 0 {
			t.Errorf("tokens without kid caused %d fetches, want 0", got)
		}
	})
	t.Run("RSA keys with JWK alg", func(t *testing.T) {
		// An RS256 key and a PS256 key: each token has one candidate.
		rs := testidp.NewKey("RS256", "rsa-1")
		ps := testidp.NewKey("PS256", "ps-1")
		e := newKFEnv(t, jwkscache.Registration{}, rs, ps)
		e.mustVerify(t, rs.SignWithoutKID(kfClaims()))
		e.mustVerify(t, ps.SignWithoutKID(kfClaims()))
	})
	t.Run("RSA keys without JWK alg", func(t *testing.T) {
		// Without alg on the JWKs, both keys may verify RS256: ambiguous.
		rs := testidp.NewKey("RS256", "rsa-1")
		ps := testidp.NewKey("PS256", "ps-1")
		rs.Public.Algorithm, ps.Public.Algorithm = "", ""
		e := newKFEnv(t, jwkscache.Registration{}, rs, ps)
		for _, k := range []*testidp.Key{rs, ps} {
			err := e.mustRefuse(t, k.SignWithoutKID(kfClaims()))
			if !errors.Is(err, jwkscache.ErrKeyNotFound) {
				t.Errorf("%s: err = %v, want ErrKeyNotFound", k.Alg, err)
			}
		}
	})
}

func TestKeyfuncKIDNotAString(t *testing.T) {
	rs := testidp.NewKey("RS256", "rsa-1")
	e := newKFEnv(t, jwkscache.Registration{}, rs)
	e.warm(t)
	for name, kid := range map[string]any{
		"number": 1,
		"array":  []string{"rsa-1"},
		"object": map[string]any{"kid": "rsa-1"},
		"bool":   true,
	} {
		t.Run(name, func(t *testing.T) {
			before := e.idp.Requests(kfPath)
			err := e.mustRefuse(t, rs.SignWith(kfClaims(), map[string]any{"kid": kid}))
			if !errors.Is(err, jwt.ErrTokenUnverifiable) || !strings.Contains(err.Error(), "kid header is not a string") {
				t.Errorf("err = %v, want the Keyfunc's refusal of a non-string kid", err)
			}
			if got := e.idp.Requests(kfPath) - before; got != 0 {
				t.Errorf("a non-string kid caused %d fetches, want 0", got)
			}
		})
	}
}

func TestKeyfuncIssuerBinding(t *testing.T) {
	const iss = "https://login.acme.test/"
	rs := testidp.NewKey("RS256", "rsa-1")
	e := newKFEnv(t, jwkscache.Registration{Issuer: iss}, rs)
	e.warm(t)
	claims := func(iss string) jwt.RegisteredClaims {
		c := kfClaims()
		c.Issuer = iss
		return c
	}
	tok := e.mustVerify(t, rs.Sign(claims(iss)))
	if got, _ := tok.Claims.GetIssuer(); got != iss {
		t.Errorf("iss = %q, want %q", got, iss)
	}
	for name, raw := range map[string]string{
		"other issuer":     rs.Sign(claims("https://evil.test/")),
		"no issuer":        rs.Sign(claims("")),
		"trailing slash":   rs.Sign(claims(strings.TrimSuffix(iss, "/"))),
		"case differs":     rs.Sign(claims(strings.ToUpper(iss))),
		"issuer not a str": rs.Sign(jwt.MapClaims{"iss": []string{iss}, "exp": time.Now().Add(time.Hour).Unix()}),
	} {
		t.Run(name, func(t *testing.T) {
			err := e.mustRefuse(t, raw)
			if !errors.Is(err, jwt.ErrTokenInvalidIssuer) {
				t.Errorf("err = %v, want jwt.ErrTokenInvalidIssuer", err)
			}
		})
	}
	t.Run("checked before the key lookup", func(t *testing.T) {
		// A wrong issuer with an unknown kid must not cost a fetch.
		before := e.idp.Requests(kfPath)
		rogue := testidp.NewKey("ES256", "rogue")
		err := e.mustRefuse(t, rogue.Sign(claims("https://evil.test/")))
		if !errors.Is(err, jwt.ErrTokenInvalidIssuer) {
			t.Errorf("err = %v, want jwt.ErrTokenInvalidIssuer", err)
		}
		if got := e.idp.Requests(kfPath) - before; got != 0 {
			t.Errorf("wrong issuer caused %d fetches, want 0", got)
		}
	})
}

// kfAttackerCert returns a self-signed certificate for k's public key, for an
// x5c header.
func kfAttackerCert(tb testing.TB, k *ecdsa.PrivateKey) []byte {
	tb.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "attacker"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// Keys come only from the registered URL: jku, x5u, jwk and x5c token
// headers are neither followed nor trusted.
func TestKeyfuncIgnoresKeyHeaders(t *testing.T) {
	ec := testidp.NewKey("ES256", "ec-1")
	e := newKFEnv(t, jwkscache.Registration{}, ec)
	e.warm(t)

	// The attacker's key, served by the same (allowed, trusted) IdP at
	// another path, so that following jku or x5u would succeed.
	attacker := testidp.NewKey("ES256", "attacker")
	const evilPath = "/attacker/jwks.json"
	e.idp.SetKeys(evilPath, attacker)
	priv := attacker.Signer.(*ecdsa.PrivateKey)
	cert := kfAttackerCert(t, priv)
	jwkMap := func() map[string]any {
		b, err := json.Marshal(attacker.Public)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}()
	x5c := []string{base64.StdEncoding.EncodeToString(cert)}
	headers := map[string]map[string]any{
		"jwk": {"jwk": jwkMap},
		"jku": {"jku": e.url + evilPath},
		"x5u": {"x5u": e.url + "/attacker/cert.pem"},
		"x5c": {"x5c": x5c},
		"all": {"jwk": jwkMap, "jku": e.url + evilPath, "x5u": e.url + "/attacker/cert.pem", "x5c": x5c},
	}
	for name, h := range headers {
		t.Run(name+"/unpublished kid", func(t *testing.T) {
			h := kfCloneHeader(h)
			h["kid"] = "attacker"
			err := e.mustRefuse(t, attacker.SignWith(kfClaims(), h))
			if !errors.Is(err, jwkscache.ErrKeyNotFound) {
				t.Errorf("err = %v, want ErrKeyNotFound", err)
			}
		})
		t.Run(name+"/published kid", func(t *testing.T) {
			h := kfCloneHeader(h)
			h["kid"] = ec.KID
			err := e.mustRefuse(t, attacker.SignWith(kfClaims(), h))
			if !errors.Is(err, jwt.ErrTokenSignatureInvalid) {
				t.Errorf("err = %v, want jwt.ErrTokenSignatureInvalid (verified with the published key)", err)
			}
		})
		t.Run(name+"/no kid", func(t *testing.T) {
			h := kfCloneHeader(h)
			h["kid"] = nil
			err := e.mustRefuse(t, attacker.SignWith(kfClaims(), h))
			if !errors.Is(err, jwt.ErrTokenSignatureInvalid) {
				t.Errorf("err = %v, want jwt.ErrTokenSignatureInvalid (verified with the only published key)", err)
			}
		})
	}
	if n := e.idp.Requests(evilPath) + e.idp.Requests("/attacker/cert.pem"); n != 0 {
		t.Errorf("the cache fetched %d URLs named in token headers", n)
	}
	// The attacker's key never entered the cache.
	set, err := e.m.Resolve(context.Background(), kfTenant, kfProvider)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 1 || set.Keys[0].KeyID != ec.KID {
		t.Errorf("Resolve = %v, want only %s", kfKIDs(set), ec.KID)
	}
}

func kfCloneHeader(h map[string]any) map[string]any {
	out := make(map[string]any, len(h)+1)
	for k, v := range h {
		out[k] = v
	}
	return out
}

func kfKIDs(set *jose.JSONWebKeySet) []string {
	var out []string
	for _, k := range set.Keys {
		out = append(out, k.KeyID)
	}
	return out
}

func TestKeyfuncDeniedKID(t *testing.T) {
	rs := testidp.NewKey("RS256", "rsa-1")
	ec := testidp.NewKey("ES256", "ec-1")
	e := newKFEnv(t, jwkscache.Registration{}, rs, ec)
	e.warm(t)
	e.mustVerify(t, rs.Sign(kfClaims()))

	if err := e.m.DenyKey(kfTenant, kfProvider, rs.KID); err != nil {
		t.Fatalf("DenyKey: %v", err)
	}
	before := e.idp.Requests(kfPath)
	err := e.mustRefuse(t, rs.Sign(kfClaims()))
	if !errors.Is(err, jwkscache.ErrKeyDenied) {
		t.Errorf("err = %v, want ErrKeyDenied", err)
	}
	if got := e.idp.Requests(kfPath) - before; got != 0 {
		t.Errorf("a denied kid caused %d fetches, want 0", got)
	}
	// Other kids are unaffected.
	e.mustVerify(t, ec.Sign(kfClaims()))

	// A denied kid that is not (yet) published is refused as denied too,
	// without a fetch.
	if err := e.m.DenyKey(kfTenant, kfProvider, "future"); err != nil {
		t.Fatal(err)
	}
	future := testidp.NewKey("ES256", "future")
	e.idp.AddKey(kfPath, future)
	err = e.mustRefuse(t, future.Sign(kfClaims()))
	if !errors.Is(err, jwkscache.ErrKeyDenied) {
		t.Errorf("err = %v, want ErrKeyDenied", err)
	}
	if got := e.idp.Requests(kfPath) - before; got != 0 {
		t.Errorf("a denied unknown kid caused %d fetches, want 0", got)
	}

	if err := e.m.AllowKey(kfTenant, kfProvider, rs.KID); err != nil {
		t.Fatalf("AllowKey: %v", err)
	}
	e.mustVerify(t, rs.Sign(kfClaims()))
}

// A denial is of a key, not of a header value: a token that omits kid must
// not reach a denied key as the set's only candidate.
func TestKeyfuncDeniedKIDWithoutKIDHeader(t *testing.T) {
	rs := testidp.NewKey("RS256", "rsa-1")
	e := newKFEnv(t, jwkscache.Registration{}, rs)
	e.warm(t)
	e.mustVerify(t, rs.SignWithoutKID(kfClaims()))
	if err := e.m.DenyKey(kfTenant, kfProvider, rs.KID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.parse(rs.SignWithoutKID(kfClaims())); !errors.Is(err, jwkscache.ErrKeyDenied) {
		t.Errorf("Keyfunc: err = %v, want ErrKeyDenied", err)
	}
	// Key with an empty kid picks the set's only key the same way.
	if k, err := e.m.Key(context.Background(), kfTenant, kfProvider, ""); !errors.Is(err, jwkscache.ErrKeyDenied) {
		t.Errorf("Key(\"\") = (kid %q, %v), want ErrKeyDenied", k.KeyID, err)
	}
}

func TestKeyfuncNotRegistered(t *testing.T) {
	rs := testidp.NewKey("RS256", "rsa-1")
	e := newKFEnv(t, jwkscache.Registration{}, rs)
	e.warm(t)
	for name, kf := range map[string]jwt.Keyfunc{
		"other provider": e.m.Keyfunc(kfTenant, "nope"),
		"other tenant":   e.m.Keyfunc("other", kfProvider),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := jwt.Parse(rs.Sign(kfClaims()), kf, jwt.WithValidMethods([]string{"RS256"}))
			if !errors.Is(err, jwkscache.ErrNotRegistered) {
				t.Errorf("err = %v, want ErrNotRegistered", err)
			}
		})
	}
}

func TestKeyfuncBeforeRegister(t *testing.T) {
	idp := testidp.New()
	rs := testidp.NewKey("RS256", "rsa-1")
	idp.SetKeys(kfPath, rs)
	srv := idp.StartTLS(t)
	m := newKFManager(t, idp)
	kf := m.Keyfunc(kfTenant, kfProvider) // made before the provider exists
	raw := rs.Sign(kfClaims())
	opt := jwt.WithValidMethods([]string{"RS256"})

	if _, err := jwt.Parse(raw, kf, opt); !errors.Is(err, jwkscache.ErrNotRegistered) {
		t.Fatalf("before Register: err = %v, want ErrNotRegistered", err)
	}
	reg := jwkscache.Registration{TenantID: kfTenant, ProviderID: kfProvider, JWKSURL: srv.URL + kfPath}
	if err := m.Register(context.Background(), reg); err != nil {
		t.Fatal(err)
	}
	if _, err := jwt.Parse(raw, kf, opt); err != nil {
		t.Fatalf("after Register: %v", err)
	}
	if err := m.Unregister(context.Background(), kfTenant, kfProvider); err != nil {
		t.Fatal(err)
	}
	if _, err := jwt.Parse(raw, kf, opt); !errors.Is(err, jwkscache.ErrNotRegistered) {
		t.Fatalf("after Unregister: err = %v, want ErrNotRegistered", err)
	}
	if err := m.Register(context.Background(), reg); err != nil {
		t.Fatal(err)
	}
	if _, err := jwt.Parse(raw, kf, opt); err != nil {
		t.Fatalf("after Register again: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := jwt.Parse(raw, kf, opt); !errors.Is(err, jwkscache.ErrClosed) {
		t.Fatalf("after Close: err = %v, want ErrClosed", err)
	}
}

// A rotation is caught on the first token that names the new kid, with one
// fetch, even right after a refresh.
func TestKeyfuncRotationCaughtOnFirstSight(t *testing.T) {
	idp := testidp.New()
	k1 := idp.Rotate(kfPath, "ES256")
	e := newKFEnvIdP(t, jwkscache.Registration{}, idp)
	e.warm(t)
	e.mustVerify(t, k1.Sign(kfClaims()))

	before := e.idp.Requests(kfPath)
	k2 := e.idp.Rotate(kfPath, "ES256")
	e.mustVerify(t, k2.Sign(kfClaims()))
	e.mustVerify(t, k1.Sign(kfClaims())) // the previous key is still published
	if got := e.idp.Requests(kfPath) - before; got != 1 {
		t.Errorf("rotation cost %d fetches, want 1", got)
	}
	// A second rotation within the bucket's burst is caught too.
	k3 := e.idp.Rotate(kfPath, "ES256")
	e.mustVerify(t, k3.Sign(kfClaims()))
	// k1 has been dropped by the IdP and by the cache.
	err := e.mustRefuse(t, k1.Sign(kfClaims()))
	if !errors.Is(err, jwkscache.ErrKeyNotFound) {
		t.Errorf("dropped key: err = %v, want ErrKeyNotFound", err)
	}
}

// BenchmarkVerify compares a full jwt.Parse with a Keyfunc returning the
// public key directly (raw) and with the Manager's Keyfunc on a warm cache
// (cache). The difference is the cost of the cache on the verification path.
func BenchmarkVerify(b *testing.B) {
	for _, alg := range []string{"RS256", "ES256"} {
		k := testidp.NewKey(alg, "bench-"+alg)
		e := newKFEnv(b, jwkscache.Registration{}, k)
		e.warm(b)
		raw := k.Sign(kfClaims())
		opt := jwt.WithValidMethods([]string{alg})
		pub := k.Signer.Public()
		kfs := []struct {
			name string
			kf   jwt.Keyfunc
		}{
			{"raw", func(*jwt.Token) (any, error) { return pub, nil }},
			{"cache", e.m.Keyfunc(kfTenant, kfProvider)},
		}
		for _, c := range kfs {
			b.Run(alg+"/"+c.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := jwt.Parse(raw, c.kf, opt); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkKeyfunc isolates the key lookup of BenchmarkVerify: it calls the
// Keyfunc on a parsed token, without the signature check that dominates a
// verification. A warm lookup must not allocate.
func BenchmarkKeyfunc(b *testing.B) {
	k := testidp.NewKey("ES256", "bench-ES256")
	e := newKFEnv(b, jwkscache.Registration{}, k)
	e.warm(b)
	tok, _, err := jwt.NewParser().ParseUnverified(k.Sign(kfClaims()), jwt.MapClaims{})
	if err != nil {
		b.Fatal(err)
	}
	pub := k.Signer.Public()
	for _, c := range []struct {
		name string
		kf   jwt.Keyfunc
	}{
		{"raw", func(*jwt.Token) (any, error) { return pub, nil }},
		{"cache", e.m.Keyfunc(kfTenant, kfProvider)},
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

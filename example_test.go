package jwkscache_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net/http/httptest"
	"net/netip"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/internal/testidp"
)

// The examples fetch keys from a local test identity provider over TLS, so
// they run without the internet. In a real program the JWKS URL is your
// IdP's (for example https://YOUR_DOMAIN/.well-known/jwks.json) and
// Options needs neither RootCAs nor AllowedAddresses.

// exampleIdP is a test identity provider on a loopback TLS server.
type exampleIdP struct {
	*testidp.IdP
	keys    []*testidp.Key // rsa-1 (RS256), ec-1 (ES256), ed-1 (EdDSA)
	srv     *httptest.Server
	jwksURL string
}

// startExampleIdP starts an IdP serving the keys "rsa-1", "ec-1" and
// "ed-1" at /jwks.json on 127.0.0.1.
func startExampleIdP() *exampleIdP {
	idp, keys := testidp.NewDefault()
	srv := httptest.NewUnstartedServer(idp)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{idp.Certificate()}}
	srv.StartTLS()
	return &exampleIdP{IdP: idp, keys: keys, srv: srv, jwksURL: srv.URL + testidp.DefaultPath}
}

func (p *exampleIdP) Close() { p.srv.Close() }

// options are the Manager options for the test IdP: trust its CA and let
// the dial guard through to loopback.
func (p *exampleIdP) options() jwkscache.Options {
	return jwkscache.Options{
		RootCAs:          p.CertPool(),
		AllowedAddresses: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	}
}

// newExampleManager returns a Manager with the IdP registered as
// ("acme", "auth0").
func newExampleManager(idp *exampleIdP) *jwkscache.Manager {
	m, err := jwkscache.New(idp.options())
	if err != nil {
		log.Fatal(err)
	}
	err = m.Register(context.Background(), jwkscache.Registration{
		TenantID:   "acme",
		ProviderID: "auth0",
		JWKSURL:    idp.jwksURL,
	})
	if err != nil {
		log.Fatal(err)
	}
	return m
}

func ExampleNew() {
	idp := startExampleIdP()
	defer idp.Close()

	// The zero Options are the production defaults: https only, system
	// roots, public addresses only. The test IdP needs its own CA and
	// loopback.
	m, err := jwkscache.New(jwkscache.Options{
		RootCAs:          idp.CertPool(),
		AllowedAddresses: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()

	fmt.Println("providers:", len(m.Statuses()))
	err = m.Register(context.Background(), jwkscache.Registration{
		TenantID:   "acme",
		ProviderID: "auth0",
		JWKSURL:    idp.jwksURL,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("providers:", len(m.Statuses()))

	// The first lookup waits for the keys to load.
	set, err := m.Resolve(context.Background(), "acme", "auth0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("keys:", len(set.Keys))
	// Output:
	// providers: 0
	// providers: 1
	// keys: 3
}

func ExampleManager_Register() {
	idp := startExampleIdP()
	defer idp.Close()
	m, err := jwkscache.New(idp.options())
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()

	ctx := context.Background()
	// Only the identity and the URL are required; every other field has a
	// default.
	err = m.Register(ctx, jwkscache.Registration{
		TenantID:   "acme",
		ProviderID: "auth0",
		JWKSURL:    idp.jwksURL,
		Issuer:     "https://acme.auth0.test/", // tokens must carry this iss
	})
	if err != nil {
		log.Fatal(err)
	}
	// Register loads the keys in the background; Refresh waits for a fetch.
	if err := m.Refresh(ctx, "acme", "auth0"); err != nil {
		log.Fatal(err)
	}
	st, err := m.Status("acme", "auth0")
	if err != nil {
		log.Fatal(err)
	}
	for _, k := range st.Keys {
		fmt.Println(k.KID, k.KTY, k.Alg)
	}
	fmt.Println("fresh for about:", st.ExpiresAt.Sub(st.LastRefresh).Round(time.Minute))

	// An http URL is refused unless both sides allow it.
	err = m.Register(ctx, jwkscache.Registration{
		TenantID:   "acme",
		ProviderID: "plain",
		JWKSURL:    "http://idp.example/jwks.json",
	})
	fmt.Println("http refused:", errors.Is(err, jwkscache.ErrSecurityPolicy))
	// Output:
	// rsa-1 RSA RS256
	// ec-1 EC ES256
	// ed-1 OKP EdDSA
	// fresh for about: 5m0s
	// http refused: true
}

func ExampleManager_Key() {
	idp := startExampleIdP()
	defer idp.Close()
	m := newExampleManager(idp)
	defer m.Close()

	ctx := context.Background()
	// The first lookup waits for the keys to load; later ones are served
	// from memory without a lock.
	key, err := m.Key(ctx, "acme", "auth0", "ec-1")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s %s %T\n", key.KeyID, key.Algorithm, key.Key)

	// An unknown kid triggers one rate-limited refresh, then fails.
	_, err = m.Key(ctx, "acme", "auth0", "no-such-kid")
	fmt.Println("unknown kid:", errors.Is(err, jwkscache.ErrKeyNotFound))
	// Output:
	// ec-1 ES256 *ecdsa.PublicKey
	// unknown kid: true
}

func ExampleManager_Keyfunc() {
	idp := startExampleIdP()
	defer idp.Close()
	m := newExampleManager(idp)
	defer m.Close()

	// A token as the IdP would issue it, signed with its RS256 key.
	raw := idp.keys[0].Sign(jwt.RegisteredClaims{
		Subject:   "alice",
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour)),
	})

	// Always pass WithValidMethods: it lists the algorithms you accept.
	tok, err := jwt.Parse(raw, m.Keyfunc("acme", "auth0"),
		jwt.WithValidMethods([]string{"RS256", "ES256", "EdDSA"}))
	if err != nil {
		log.Fatal(err)
	}
	sub, _ := tok.Claims.GetSubject()
	fmt.Println("verified:", tok.Valid)
	fmt.Println("kid:", tok.Header["kid"], "sub:", sub)

	// A kid denied by an operator is refused at once.
	if err := m.DenyKey("acme", "auth0", "rsa-1"); err != nil {
		log.Fatal(err)
	}
	_, err = jwt.Parse(raw, m.Keyfunc("acme", "auth0"), jwt.WithValidMethods([]string{"RS256"}))
	fmt.Println("denied:", errors.Is(err, jwkscache.ErrKeyDenied))
	// Output:
	// verified: true
	// kid: rsa-1 sub: alice
	// denied: true
}

func ExampleManager_Resolve() {
	idp := startExampleIdP()
	defer idp.Close()
	m := newExampleManager(idp)
	defer m.Close()

	// Resolve returns the usable keys as a JSON Web Key Set, for example
	// to serve them to services in other languages.
	set, err := m.Resolve(context.Background(), "acme", "auth0")
	if err != nil {
		log.Fatal(err)
	}
	for _, k := range set.Keys {
		fmt.Printf("%s %s public=%v\n", k.KeyID, k.Algorithm, k.IsPublic())
	}
	// Output:
	// rsa-1 RS256 public=true
	// ec-1 ES256 public=true
	// ed-1 EdDSA public=true
}

package jwkscache_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/jwkscachetest"
)

// The examples fetch keys from a test identity provider (package
// jwkscachetest) serving over TLS on 127.0.0.1, so they run without the
// internet. In a real program the JWKS URL is your IdP's (for example
// https://YOUR_DOMAIN/.well-known/jwks.json) and Options needs neither
// RootCAs nor AllowedAddresses.

// exampleIdP is a started test identity provider and its keys.
type exampleIdP struct {
	*jwkscachetest.IdP
	keys    []*jwkscachetest.Key // rsa-1 (RS256), ec-1 (ES256), ed-1 (EdDSA)
	jwksURL string
}

// startExampleIdP starts an IdP serving the keys "rsa-1", "ec-1" and
// "ed-1" at /jwks.json on 127.0.0.1, cacheable for 5 minutes.
func startExampleIdP() *exampleIdP {
	idp := jwkscachetest.New()
	keys := []*jwkscachetest.Key{
		jwkscachetest.NewKey("RS256", "rsa-1"),
		jwkscachetest.NewKey("ES256", "ec-1"),
		jwkscachetest.NewKey("EdDSA", "ed-1"),
	}
	idp.JWKS().Set(keys...)
	if err := idp.Start(); err != nil {
		log.Fatal(err)
	}
	return &exampleIdP{IdP: idp, keys: keys, jwksURL: idp.JWKSURL()}
}

// options are the Manager options for the test IdP: trust its CA and let
// the dial guard through to loopback.
func (p *exampleIdP) options() jwkscache.Options {
	return jwkscache.Options{
		RootCAs:          p.CertPool(),
		AllowedAddresses: p.AllowedAddresses(),
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
		AllowedAddresses: idp.AllowedAddresses(),
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

// A service registers its tenants' providers from a configuration file
// holding registrations in their JSON form: camelCase names, ISO-8601
// durations. Register validates each one and names every bad field.
//
// Decoding the whole list at once refuses the file for one entry that does
// not decode (a misspelt or miscased name, a duration such as "1h"). To
// report those per entry too, decode each entry on its own from a
// []json.RawMessage, as the program in examples/configfile does.
func ExampleManager_Register_fromConfig() {
	idp := startExampleIdP()
	defer idp.Close()

	// The file, as an operator writes it ({{idp}} stands for the test
	// IdP's URL).
	config := strings.ReplaceAll(`[
  {"tenantId": "acme", "providerId": "auth0",
   "jwksUrl": "{{idp}}/jwks.json", "issuer": "https://acme.auth0.test/",
   "minTtl": "PT10M", "retryPolicy": {"deadline": "PT5S"}},
  {"tenantId": "globex", "providerId": "okta",
   "jwksUrl": "{{idp}}/jwks.json", "minTtl": "PT10S", "maxRedirects": 20},
  {"tenantId": "initech", "providerId": "entra",
   "jwksUrl": "{{idp}}/jwks.json", "staleWhileError": "PT0S"}
]`, "{{idp}}", idp.URL())
	dir, err := os.MkdirTemp("", "providers")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "providers.json")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		log.Fatal(err)
	}

	data, err := os.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}
	var regs []jwkscache.Registration
	if err := json.Unmarshal(data, &regs); err != nil {
		log.Fatal(err)
	}
	m, err := jwkscache.New(idp.options())
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	for _, reg := range regs {
		if err := m.Register(ctx, reg); err != nil {
			fmt.Println("refused:", err)
			fmt.Println("  invalid registration:", errors.Is(err, jwkscache.ErrInvalidRegistration))
			continue
		}
		d := reg.WithDefaults() // what the zero fields mean
		fmt.Printf("registered %s/%s: minTtl %v, serves expired keys for %v\n",
			reg.TenantID, reg.ProviderID, d.MinTTL, max(d.StaleWhileError, 0)) // "PT0S": off
	}

	// The IdP sends max-age=300; acme's minTtl raises the TTL to 10 min.
	if err := m.Refresh(ctx, "acme", "auth0"); err != nil {
		log.Fatal(err)
	}
	st, err := m.Status("acme", "auth0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("acme/auth0 fresh for:", st.ExpiresAt.Sub(st.LastRefresh).Round(time.Second))
	// Output:
	// registered acme/auth0: minTtl 10m0s, serves expired keys for 1h0m0s
	// refused: jwkscache: registration globex/okta: minTtl: must be at least 30s, got 10s; maxRedirects: must be 0-10, got 20
	//   invalid registration: true
	// registered initech/entra: minTtl 30s, serves expired keys for 0s
	// acme/auth0 fresh for: 10m0s
}

// One tenant with two identity providers: the token's iss claim picks the
// provider whose Registration.Issuer equals it. A token from any other
// issuer is refused without a fetch.
func ExampleManager_TenantKeyfunc() {
	idp := jwkscachetest.NewEmpty()
	auth0Key := idp.KeySet("/auth0/jwks.json").Rotate("RS256") // kid k1
	oktaKey := idp.KeySet("/okta/jwks.json").Rotate("ES256")   // kid k2
	if err := idp.Start(); err != nil {
		log.Fatal(err)
	}
	defer idp.Close()
	m, err := jwkscache.New(jwkscache.Options{RootCAs: idp.CertPool(), AllowedAddresses: idp.AllowedAddresses()})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()

	const (
		auth0Issuer = "https://acme.eu.auth0.test/"
		oktaIssuer  = "https://acme.okta.test/oauth2/default"
	)
	ctx := context.Background()
	for _, reg := range []jwkscache.Registration{
		{TenantID: "acme", ProviderID: "auth0", JWKSURL: idp.URL() + "/auth0/jwks.json", Issuer: auth0Issuer},
		{TenantID: "acme", ProviderID: "okta", JWKSURL: idp.URL() + "/okta/jwks.json", Issuer: oktaIssuer},
		// Two providers of one tenant may not share an issuer.
		{TenantID: "acme", ProviderID: "okta-eu", JWKSURL: idp.URL() + "/okta/jwks.json", Issuer: oktaIssuer},
	} {
		if err := m.Register(ctx, reg); err != nil {
			fmt.Println("refused:", err)
		}
	}

	kf := m.TenantKeyfunc("acme")
	for _, c := range []struct {
		key    *jwkscachetest.Key
		issuer string
	}{
		{auth0Key, auth0Issuer},
		{oktaKey, oktaIssuer},
		{auth0Key, "https://evil.test/"},
	} {
		raw := c.key.Sign(jwt.RegisteredClaims{
			Issuer:    c.issuer,
			Subject:   "alice",
			ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour)),
		})
		tok, err := jwt.Parse(raw, kf, jwt.WithValidMethods([]string{"RS256", "ES256"}))
		if err != nil {
			fmt.Println("refused", c.issuer+":", errors.Is(err, jwt.ErrTokenInvalidIssuer), errors.Is(err, jwkscache.ErrNotRegistered))
			continue
		}
		fmt.Println("verified", c.issuer, "with", tok.Header["kid"])
	}
	// Output:
	// refused: jwkscache: registration acme/okta-eu: issuer: provider "okta" of tenant "acme" already has this issuer
	// verified https://acme.eu.auth0.test/ with k1
	// verified https://acme.okta.test/oauth2/default with k2
	// refused https://evil.test/: true true
}

// KeysUnavailable tells a token at fault (answer 401) from keys that
// cannot be had for now (answer 503 with Retry-After).
func ExampleKeysUnavailable() {
	idp := startExampleIdP()
	defer idp.Close()
	// A second provider whose IdP is down: its keys never load.
	idp.SetFault("/down/jwks.json", jwkscachetest.Fault{Status: http.StatusServiceUnavailable})
	m := newExampleManager(idp)
	defer m.Close()
	err := m.Register(context.Background(), jwkscache.Registration{
		TenantID:   "acme",
		ProviderID: "down",
		JWKSURL:    idp.URL() + "/down/jwks.json",
		Retry:      jwkscache.RetryPolicy{MaxRetries: -1},
	})
	if err != nil {
		log.Fatal(err)
	}

	status := func(provider, raw string) int {
		_, err := jwt.Parse(raw, m.Keyfunc("acme", provider), jwt.WithValidMethods([]string{"ES256"}))
		switch {
		case err == nil:
			return http.StatusOK
		case jwkscache.KeysUnavailable(err):
			return http.StatusServiceUnavailable
		default:
			return http.StatusUnauthorized
		}
	}
	claims := jwt.RegisteredClaims{Subject: "alice", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}
	unknown := jwkscachetest.NewKey("ES256", "not-published")
	fmt.Println("valid token:", status("auth0", idp.keys[1].Sign(claims)))
	fmt.Println("unknown key:", status("auth0", unknown.Sign(claims)))
	fmt.Println("IdP down:", status("down", idp.keys[1].Sign(claims)))
	// Output:
	// valid token: 200
	// unknown key: 401
	// IdP down: 503
}

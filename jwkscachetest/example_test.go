package jwkscachetest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"time"

	jwt "github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/jwkscachetest"
	"github.com/jwkscache/jwkscache/jwkscachetest/idpconfig"
)

// validMethods are the algorithms the examples accept.
var validMethods = jwt.WithValidMethods([]string{"RS256", "PS256", "ES256", "EdDSA"})

// A Manager verifies a token minted by the IdP, fetching its key set over
// TLS on loopback.
func Example() {
	idp := jwkscachetest.New() // one RS256 signing key, "k1"
	if err := idp.Start(); err != nil {
		log.Fatal(err)
	}
	defer idp.Close()

	// Trust the IdP's test CA, and let the dial guard through to loopback.
	m, err := jwkscache.New(jwkscache.Options{
		RootCAs:          idp.CertPool(),
		AllowedAddresses: idp.AllowedAddresses(),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	err = m.Register(context.Background(), jwkscache.Registration{
		TenantID:   "acme",
		ProviderID: "main",
		JWKSURL:    idp.JWKSURL(),
		Issuer:     idp.Issuer(),
	})
	if err != nil {
		log.Fatal(err)
	}

	raw := idp.Token(idp.Claims("alice", "api"))
	tok, err := jwt.Parse(raw, m.Keyfunc("acme", "main"), validMethods, jwt.WithAudience("api"))
	if err != nil {
		log.Fatal(err)
	}
	sub, _ := tok.Claims.GetSubject()
	fmt.Println("verified:", sub, "with key", tok.Header["kid"])

	// A token that expired a minute ago is refused.
	claims := idp.Claims("alice", "api")
	claims.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute))
	_, err = jwt.Parse(idp.Token(claims), m.Keyfunc("acme", "main"), validMethods, jwt.WithAudience("api"))
	fmt.Println("expired:", errors.Is(err, jwt.ErrTokenExpired))
	// Output:
	// verified: alice with key k1
	// expired: true
}

// An immediate rotation: the new key signs at once, and the Manager
// fetches the key set when it first sees its kid. The previous key stays
// published, so the tokens it signed keep verifying.
func ExampleKeySet_Rotate() {
	idp := jwkscachetest.New()
	if err := idp.Start(); err != nil {
		log.Fatal(err)
	}
	defer idp.Close()
	m, err := jwkscache.New(idpconfig.ManagerOptions(idp))
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	if err := m.Register(context.Background(), idpconfig.Registration(idp, "acme", "main")); err != nil {
		log.Fatal(err)
	}
	verify := func(raw string) {
		tok, err := jwt.Parse(raw, m.Keyfunc("acme", "main"), validMethods)
		if err != nil {
			fmt.Println("refused:", err)
			return
		}
		fmt.Println("verified with", tok.Header["kid"], tok.Header["alg"])
	}

	old := idp.Token(idp.Claims("alice"))
	verify(old)

	k2 := idp.JWKS().Rotate("ES256")
	fmt.Println("rotated to", k2.KID, "; published:", kidsOf(idp.JWKS().Keys()))
	before := idp.Requests(jwkscachetest.JWKSPath)
	verify(idp.Token(idp.Claims("alice")))
	verify(old)
	fmt.Println("fetches:", idp.Requests(jwkscachetest.JWKSPath)-before)
	// Output:
	// verified with k1 RS256
	// rotated to k2 ; published: [k1 k2]
	// verified with k2 ES256
	// verified with k1 RS256
	// fetches: 1
}

// A pre-published rotation: the next key is published ahead of time, and
// a Manager that has refreshed since knows it before it signs anything.
func ExampleKeySet_PrePublish() {
	idp := jwkscachetest.New()
	if err := idp.Start(); err != nil {
		log.Fatal(err)
	}
	defer idp.Close()
	m, err := jwkscache.New(idpconfig.ManagerOptions(idp))
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	if err := m.Register(ctx, idpconfig.Registration(idp, "acme", "main")); err != nil {
		log.Fatal(err)
	}

	jwks := idp.JWKS()
	next := jwks.PrePublish("EdDSA")
	fmt.Println("published:", kidsOf(jwks.Keys()), "signing:", jwks.SigningKey().KID)
	if err := m.Refresh(ctx, "acme", "main"); err != nil {
		log.Fatal(err)
	}

	jwks.SetSigningKey(next)
	before := idp.Requests(jwkscachetest.JWKSPath)
	tok, err := jwt.Parse(idp.Token(idp.Claims("alice")), m.Keyfunc("acme", "main"), validMethods)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("verified with", tok.Header["kid"], "fetches:", idp.Requests(jwkscachetest.JWKSPath)-before)

	// Once the old tokens have expired, unpublish the old key.
	jwks.RemoveOld()
	fmt.Println("published:", kidsOf(jwks.Keys()))
	// Output:
	// published: [k1 k2] signing: k1
	// verified with k2 fetches: 0
	// published: [k2]
}

// Algorithm-confusion tokens: unsigned, and HS256 MACed with the public
// key. The Manager refuses both.
func ExampleUnsignedToken() {
	idp := jwkscachetest.New()
	if err := idp.Start(); err != nil {
		log.Fatal(err)
	}
	defer idp.Close()
	m, err := jwkscache.New(idpconfig.ManagerOptions(idp))
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	if err := m.Register(context.Background(), idpconfig.Registration(idp, "acme", "main")); err != nil {
		log.Fatal(err)
	}

	claims := idp.Claims("mallory")
	for name, raw := range map[string]string{
		"none":  jwkscachetest.UnsignedToken(claims, map[string]any{"kid": "k1"}),
		"HS256": idp.SigningKey().SignHMACWithPublicKey(claims),
	} {
		_, err := jwt.Parse(raw, m.Keyfunc("acme", "main"))
		fmt.Println(name, "refused:", errors.Is(err, jwkscache.ErrKeyNotFound))
	}
	// Unordered output:
	// none refused: true
	// HS256 refused: true
}

// An IdP that is not started answers in memory: give its Client to the
// Manager, for example inside a testing/synctest bubble.
func ExampleIdP_Client() {
	idp := jwkscachetest.New()
	m, err := jwkscache.New(jwkscache.Options{HTTPClient: idp.Client()})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	fmt.Println("JWKS URL:", idp.JWKSURL())
	if err := m.Register(context.Background(), idpconfig.Registration(idp, "acme", "main")); err != nil {
		log.Fatal(err)
	}
	_, err = jwt.Parse(idp.Token(idp.Claims("alice")), m.Keyfunc("acme", "main"), validMethods)
	fmt.Println("verified:", err == nil)
	// Output:
	// JWKS URL: https://idp.test/jwks.json
	// verified: true
}

// Faults make a path misbehave for a number of requests.
func ExampleIdP_SetFault() {
	idp := jwkscachetest.New()
	idp.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Status: http.StatusServiceUnavailable, RetryAfter: "30", Count: 1})
	c := idp.Client()
	for range 2 {
		resp, err := c.Get(idp.JWKSURL())
		if err != nil {
			log.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Printf("%d Retry-After=%q\n", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	fmt.Println("requests:", idp.Requests(jwkscachetest.JWKSPath))
	// Output:
	// 503 Retry-After="30"
	// 200 Retry-After=""
	// requests: 2
}

// The key set is cacheable for the max-age set, and a client revalidating
// with its ETag gets a 304 Not Modified while it is unchanged.
func ExampleIdP_SetMaxAge() {
	idp := jwkscachetest.New()
	idp.SetMaxAge(jwkscachetest.JWKSPath, time.Hour)
	c := idp.Client()
	resp, err := c.Get(idp.JWKSURL())
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode, resp.Header.Get("Cache-Control"))

	req, _ := http.NewRequest(http.MethodGet, idp.JWKSURL(), nil)
	req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
	resp, err = c.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode, resp.Header.Get("Cache-Control"))
	// Output:
	// 200 max-age=3600
	// 304 max-age=3600
}

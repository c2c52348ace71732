package jwkshttp_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"

	"github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/jwkscachetest"
	"github.com/jwkscache/jwkscache/jwkscachetest/idpconfig"
	"github.com/jwkscache/jwkscache/jwkshttp"
)

// The middleware protects the API of two tenants, acme and globex, each
// with its own identity provider. The tenant comes from the path; the
// token's iss picks the tenant's provider, so a token issued for globex is
// refused on acme's routes. Here the identity providers are test IdPs on
// loopback TLS; with real ones, the Manager needs no special Options.
func Example() {
	const api = "https://api.example.com" // the audience tokens must name
	acmeIdP, globexIdP := jwkscachetest.New(), jwkscachetest.New()
	for _, idp := range []*jwkscachetest.IdP{acmeIdP, globexIdP} {
		if err := idp.Start(); err != nil {
			log.Fatal(err)
		}
		defer idp.Close()
	}

	// The test IdPs share one test CA: these Options trust both.
	m, err := jwkscache.New(idpconfig.ManagerOptions(acmeIdP))
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	// Each registration has its IdP's JWKS URL and Issuer.
	for tenant, idp := range map[string]*jwkscachetest.IdP{"acme": acmeIdP, "globex": globexIdP} {
		if err := m.Register(context.Background(), idpconfig.Registration(idp, tenant, "main")); err != nil {
			log.Fatal(err)
		}
	}

	mw := jwkshttp.New(m, jwkshttp.Options{
		Tenant:   func(r *http.Request) (string, error) { return r.PathValue("tenant"), nil },
		Audience: api,
		Realm:    "orders",
	})
	mux := http.NewServeMux()
	mux.Handle("GET /t/{tenant}/orders", mw.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		claims, _ := jwkshttp.ClaimsAs[jwt.MapClaims](r.Context()) // verified claims
		sub, _ := claims.GetSubject()
		fmt.Fprintf(w, "orders of %s for %s", r.PathValue("tenant"), sub)
	})))

	get := func(what, tenant, token string) {
		r := httptest.NewRequest(http.MethodGet, "/t/"+tenant+"/orders", nil)
		if token != "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, r)
		fmt.Printf("%s: %d\n", what, w.Code)
		if w.Code == http.StatusOK {
			fmt.Println("  " + w.Body.String())
		} else {
			fmt.Println("  WWW-Authenticate:", w.Header().Get("WWW-Authenticate"))
		}
	}
	alice := acmeIdP.Token(acmeIdP.Claims("alice", api))
	bob := globexIdP.Token(globexIdP.Claims("bob", api))
	get("acme, alice's acme token", "acme", alice)
	get("globex, bob's globex token", "globex", bob)
	get("acme, bob's globex token", "acme", bob)
	get("acme, no token", "acme", "")
	get("acme, token for another API", "acme", acmeIdP.Token(acmeIdP.Claims("alice", "https://other.example.com")))
	// Output:
	// acme, alice's acme token: 200
	//   orders of acme for alice
	// globex, bob's globex token: 200
	//   orders of globex for bob
	// acme, bob's globex token: 401
	//   WWW-Authenticate: Bearer realm="orders", error="invalid_token", error_description="the token's issuer is not accepted"
	// acme, no token: 401
	//   WWW-Authenticate: Bearer realm="orders"
	// acme, token for another API: 401
	//   WWW-Authenticate: Bearer realm="orders", error="invalid_token", error_description="the token is not for this audience"
}

// When the keys a token needs cannot be had (here the IdP answers 503 and
// the Manager has no keys yet), the answer is 503 with Retry-After: the
// client should try again, and its token is not at fault. OnError sees
// every refusal, for logs and metrics.
func ExampleMiddleware_Wrap_unavailable() {
	idp := jwkscachetest.New()
	if err := idp.Start(); err != nil {
		log.Fatal(err)
	}
	defer idp.Close()
	idp.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Status: http.StatusServiceUnavailable})

	m, err := jwkscache.New(idpconfig.ManagerOptions(idp))
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	reg := idpconfig.Registration(idp, "acme", "main")
	reg.Retry.MaxRetries = -1 // one attempt per fetch, to keep the example short
	if err := m.Register(context.Background(), reg); err != nil {
		log.Fatal(err)
	}

	h := jwkshttp.New(m, jwkshttp.Options{
		Tenant: func(*http.Request) (string, error) { return "acme", nil },
		OnError: func(r *http.Request, status int, err error) {
			fmt.Println("refused:", status, "keys unavailable:", jwkscache.KeysUnavailable(err))
		},
	}).Wrap(http.NotFoundHandler())

	r := httptest.NewRequest(http.MethodGet, "/orders", nil)
	r.Header.Set("Authorization", "Bearer "+idp.Token(idp.Claims("alice")))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	fmt.Println(w.Code, "Retry-After:", w.Header().Get("Retry-After"))
	// Output:
	// refused: 503 keys unavailable: true
	// 503 Retry-After: 5
}

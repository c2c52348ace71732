package controlplane_test

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/controlplane"
	"github.com/jwkscache/jwkscache/jwkscachetest"
)

// A control plane over a Manager: a tenant registers its identity provider
// with its token, and the services that verify tokens read the keys, with
// no token, revalidating them with If-None-Match.
func Example() {
	// An identity provider for the example, answering in memory at
	// https://idp.test (one RS256 key, "k1").
	idp := jwkscachetest.New()

	m, err := jwkscache.New(jwkscache.Options{HTTPClient: idp.Client()})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	h, err := controlplane.New(m, controlplane.Options{
		AdminTokens:  []string{"operator-secret"},
		TenantTokens: map[string][]string{"acme": {"acme-secret"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewServer(h) // in a daemon: http.Server{Handler: h}
	defer srv.Close()

	// The tenant registers its provider.
	body := `{"jwksUrl":"` + idp.JWKSURL() + `","issuer":"` + idp.Issuer() + `"}`
	req, _ := http.NewRequest("PUT", srv.URL+"/tenants/acme/providers/main", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer acme-secret")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println("PUT:", resp.Status, "version", resp.Header.Get("ETag") != "")

	// Anyone reads the keys; the first request waits for the first load.
	resp, err = http.Get(srv.URL + "/tenants/acme/providers/main/jwks")
	if err != nil {
		log.Fatal(err)
	}
	var set struct {
		Keys []struct {
			KID string `json:"kid"`
		} `json:"keys"`
	}
	json.NewDecoder(resp.Body).Decode(&set)
	resp.Body.Close()
	fmt.Println("GET:", resp.Status, resp.Header.Get("Content-Type"), "kid", set.Keys[0].KID)

	// And revalidates them.
	req, _ = http.NewRequest("GET", srv.URL+"/tenants/acme/providers/main/jwks", nil)
	req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println("GET If-None-Match:", resp.Status)

	// Another tenant's path is not there for acme's token.
	req, _ = http.NewRequest("GET", srv.URL+"/tenants/globex/providers", nil)
	req.Header.Set("Authorization", "Bearer acme-secret")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println("GET another tenant:", resp.Status)

	// Output:
	// PUT: 202 Accepted version true
	// GET: 200 OK application/json kid k1
	// GET If-None-Match: 304 Not Modified
	// GET another tenant: 404 Not Found
}

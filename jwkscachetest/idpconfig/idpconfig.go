// Package idpconfig builds the jwkscache configuration that trusts a
// jwkscachetest.IdP: the Manager Options and the provider Registration.
//
//	idp := jwkscachetest.New()
//	if err := idp.Start(); err != nil {
//		t.Fatal(err)
//	}
//	defer idp.Close()
//	m, err := jwkscache.New(idpconfig.ManagerOptions(idp))
//	...
//	err = m.Register(ctx, idpconfig.Registration(idp, "acme", "main"))
//
// These helpers live in their own package, not in jwkscachetest, because
// they need package jwkscache, and jwkscachetest must not import it: the
// tests inside package jwkscache use the IdP, and a package that a test of
// jwkscache imports may not itself import jwkscache (an import cycle).
// Only tests outside package jwkscache, such as a user's tests, import
// idpconfig. Without it, the same values come from the IdP's accessors:
//
//	jwkscache.Options{RootCAs: idp.CertPool(), AllowedAddresses: idp.AllowedAddresses()}
//	jwkscache.Registration{TenantID: "acme", ProviderID: "main", JWKSURL: idp.JWKSURL(), Issuer: idp.Issuer()}
package idpconfig

import (
	"strings"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/jwkscachetest"
)

// ManagerOptions returns the Options under which a jwkscache.Manager
// fetches from idp, all other fields being the defaults; set more fields
// on the result as needed.
//
// For an IdP started with Start, they trust its test CA (RootCAs:
// idp.CertPool()) and let the dial guard through to loopback
// (AllowedAddresses: idp.AllowedAddresses()); with StartHTTP, AllowHTTP is
// set too. For an IdP that is not started, HTTPClient is idp.Client(): the
// Manager's fetches are answered in memory, without sockets, which is what
// a testing/synctest bubble needs.
func ManagerOptions(idp *jwkscachetest.IdP) jwkscache.Options {
	if !idp.Started() {
		return jwkscache.Options{HTTPClient: idp.Client()}
	}
	return jwkscache.Options{
		AllowHTTP:        isHTTP(idp.URL()),
		RootCAs:          idp.CertPool(),
		AllowedAddresses: idp.AllowedAddresses(),
	}
}

// Registration returns the registration of idp's main key set as provider
// (tenant, provider): JWKSURL is idp.JWKSURL(), Issuer is idp.Issuer() (so
// the Manager's Keyfunc accepts only tokens whose iss is the IdP's), and
// AllowHTTP is set for an IdP started with StartHTTP. Every other field is
// the default. Clear JWKSURL to have the Manager find the key set through
// the IdP's discovery document instead.
//
// Call it after starting the IdP: the URLs change when it starts.
func Registration(idp *jwkscachetest.IdP, tenant, provider string) jwkscache.Registration {
	return jwkscache.Registration{
		TenantID:   tenant,
		ProviderID: provider,
		JWKSURL:    idp.JWKSURL(),
		Issuer:     idp.Issuer(),
		AllowHTTP:  isHTTP(idp.URL()),
	}
}

func isHTTP(url string) bool { return strings.HasPrefix(url, "http:") }

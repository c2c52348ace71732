// Package jwkscachetest provides an identity provider for tests, in the way
// net/http/httptest provides HTTP servers: an in-process OpenID Connect
// provider that publishes a JSON Web Key Set, mints tokens with its keys,
// rotates them, and misbehaves on demand, so that the code verifying the
// tokens (a jwkscache.Manager, or any other JWKS client) can be tested
// against it without a network.
//
// A complete test of a Manager against the IdP over TLS:
//
//	func TestVerify(t *testing.T) {
//		idp := jwkscachetest.New() // one RS256 signing key, "k1"
//		if err := idp.Start(); err != nil {
//			t.Fatal(err)
//		}
//		defer idp.Close()
//
//		// Trust the IdP's test CA and let the dial guard through to
//		// loopback (package idpconfig builds these two values too).
//		m, err := jwkscache.New(jwkscache.Options{
//			RootCAs:          idp.CertPool(),
//			AllowedAddresses: idp.AllowedAddresses(),
//		})
//		if err != nil {
//			t.Fatal(err)
//		}
//		defer m.Close()
//		err = m.Register(t.Context(), jwkscache.Registration{
//			TenantID: "acme", ProviderID: "main",
//			JWKSURL: idp.JWKSURL(), Issuer: idp.Issuer(),
//		})
//		if err != nil {
//			t.Fatal(err)
//		}
//
//		raw := idp.Token(idp.Claims("alice", "api"))
//		_, err = jwt.Parse(raw, m.Keyfunc("acme", "main"),
//			jwt.WithValidMethods([]string{"RS256"}), jwt.WithAudience("api"))
//		if err != nil {
//			t.Fatal(err)
//		}
//
//		// Rotate without notice: the Manager catches the new kid.
//		idp.JWKS().Rotate("ES256")
//		raw = idp.Token(idp.Claims("alice", "api"))
//		...
//	}
//
// The package does not import package testing: Start and Close replace
// the cleanup a testing.TB would do, and helpers panic on misuse (an
// unknown algorithm, a token without a signing key), as httptest does.
//
// # Serving
//
// An IdP made by New or NewEmpty is not started. Start serves it over
// HTTPS on a random loopback port (StartHTTP over plain HTTP) until Close;
// URL, Issuer, JWKSURL and DiscoveryURL then name that address. The TLS
// certificate is issued by a test CA shared by all IdPs of the process:
// clients must trust CertPool, and a jwkscache.Manager must also be allowed
// to dial loopback (AllowedAddresses), which its dial guard refuses by
// default.
//
// Without being started, an IdP answers requests in memory: it is an
// http.RoundTripper, and Client returns an *http.Client using it. Requests
// are answered in the calling goroutine, whatever their host, without
// sockets, and delays wait on timers: this is the mode for tests inside a
// testing/synctest bubble, where real sockets cannot be used (network I/O
// is not durably blocking, so the fake clock could not advance). Give the
// Manager Options.HTTPClient: idp.Client() and register URLs under
// InMemoryURL ("https://idp.test"), which URL returns for an IdP that is
// not started. The in-memory mode keeps working after Start, and the IdP
// can also be mounted as an http.Handler in a server of your own
// (Certificate gives its TLS certificate).
//
// # Keys and rotation
//
// Each path that serves a key set is a KeySet: published keys, in order,
// and a signing key. JWKS returns the main one, at JWKSPath, which is the
// one New sets up and Token signs with; KeySet(path) returns others, for
// example one per tenant. Rotation comes in both forms seen in practice:
//
//   - immediate: KeySet.Rotate publishes a new key and signs with it at
//     once (the previous key stays published), and
//     KeySet.SetSigningKey(NewKey(alg, kid)) does the same with a key of
//     your own, keeping every published key;
//   - pre-published: KeySet.PrePublish publishes the next key without
//     signing with it, and KeySet.SetSigningKey switches to it later.
//
// KeySet.Remove and KeySet.RemoveOld unpublish keys; KeySet.Set replaces
// them all. NewKey makes keys for every RSA, RSA-PSS, ECDSA and EdDSA
// algorithm; it reuses a few RSA keys to stay fast, and NewUniqueKey does
// not.
//
// # Tokens
//
// Token signs claims with the signing key of the main key set and names it
// in the "kid" header; TokenWithoutKID and TokenWithHeader vary the header,
// and Key.Sign, Key.SignWithoutKID and Key.SignWith sign with a given key,
// published or not (a token from an unknown key). Claims returns valid
// registered claims (issuer, subject, audience, one hour of validity) that
// a test modifies for an expired token, a wrong audience or a wrong issuer.
// For algorithm-confusion attacks, UnsignedToken makes an "alg": "none"
// token and Key.SignHMACWithPublicKey an HS256 token MACed with the public
// key.
//
// # HTTP behaviour
//
// Every path can serve a key set, raw bytes (SetBody), a discovery document
// (SetDiscovery; New serves the IdP's own at DiscoveryPath) or a redirect
// (SetRedirect). Responses carry extra headers such as Cache-Control
// (SetHeader, SetMaxAge), an ETag (SetETag) and optionally Last-Modified
// (SetLastModified), and conditional requests get 304 Not Modified. A Fault
// (SetFault) makes a path fail: error statuses with Retry-After, delays,
// HTML login pages, truncated, oversized or gzip-bomb bodies, redirects,
// connection resets and refusals, for a number of requests or until
// ClearFault. Requests, TotalRequests, RequestCounts and LastRequest tell
// what the IdP received.
//
// # Trusting the IdP from a Manager
//
// This package returns plain values (CertPool, AllowedAddresses, Client,
// Issuer, JWKSURL) rather than jwkscache.Options or
// jwkscache.Registration, because it must not import package jwkscache:
// the tests inside package jwkscache use this IdP too, and a test may not
// import a package that imports the package under test. The helpers that
// return those types, idpconfig.ManagerOptions and idpconfig.Registration,
// are in the subpackage
// github.com/jwkscache/jwkscache/jwkscachetest/idpconfig, which only tests
// outside package jwkscache import.
package jwkscachetest

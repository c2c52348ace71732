// Package jwkscache keeps the JSON Web Key Sets (JWKS) of many identity
// providers in memory, so that services verifying JWTs get their keys in
// nanoseconds and survive key rotations, IdP outages and floods of tokens
// with unknown key ids.
//
// # Entry points
//
// A Manager holds providers addressed by (tenantID, providerID). Register
// one with its JWKS URL (or only its Issuer, for OIDC discovery), then look
// keys up with Key, verify tokens with Keyfunc (golang-jwt v5), or read the
// whole set with Resolve:
//
//	m, err := jwkscache.New(jwkscache.Options{})
//	defer m.Close()
//	err = m.Register(ctx, jwkscache.Registration{TenantID: "acme", ProviderID: "auth0", JWKSURL: url})
//	tok, err := jwt.Parse(raw, m.Keyfunc("acme", "auth0"), jwt.WithValidMethods([]string{"RS256"}))
//
// # Freshness and refresh
//
// The lifetime of a key set follows HTTP caching (RFC 9111): Cache-Control
// max-age minus Age, else Expires minus Date, else 10 minutes, clamped to
// [MinTTL, MaxTTL]; no-cache and no-store give MinTTL. A background
// scheduler refreshes each provider before expiry (the earlier of
// RefreshEarly before expiry and 80% of the lifetime, minus a random
// jitter), revalidating with If-None-Match and If-Modified-Since. When
// refreshes fail, expired keys keep serving for StaleWhileError while the
// scheduler retries with exponential backoff and jitter (1 s up to 5 min);
// a response that is not a valid key set never replaces good keys. Keys
// whose stale window has run out are withdrawn on time, and failing
// providers may hold at most half the refresh workers, so an outage of one
// IdP cannot starve the refreshes of others.
//
// A lookup of an unknown kid triggers one refresh shared by every caller,
// limited per provider by a token bucket (burst 2, one token per
// NegativeCacheTTL) and globally by Options.MaxUnknownKIDRefreshes; kids
// that a fresh fetch did not contain are remembered for NegativeCacheTTL.
//
// # Security
//
// Fetches use https only (unless both Options.AllowHTTP and
// Registration.AllowHTTP are set), check the host against the allowlists on
// every redirect hop, refuse userinfo and IP-literal hosts (unless within
// Options.AllowedAddresses), and dial only
// public addresses: after DNS resolution the dialer refuses loopback,
// private (RFC 1918), carrier-grade NAT, link-local (including the cloud
// metadata address 169.254.169.254), unique-local, IPv4-mapped, multicast,
// reserved and unspecified addresses unless Options.AllowedAddresses covers
// them. SPKI pins are checked on the verified chain. Bodies are capped at
// MaxResponseBytes as received and after decompression. Proxy environment
// variables are ignored. Keys are typed: a key verifies only algorithms of
// its own family (and only its alg when the JWK names one); symmetric keys,
// keys with private members, encryption keys and RSA keys outside 2048-4096
// bits (go-jose's own limit) are skipped, with the reason shown in
// ProviderStatus. Token headers jku, x5u, jwk and x5c are never followed.
// See docs/security.md for the whole model.
//
// # Concurrency
//
// All methods of Manager are safe for concurrent use. A warm Key lookup
// takes no lock and allocates nothing.
package jwkscache

// Package controlplane is the HTTP control plane of the jwks-cache daemon:
// an http.Handler over a *jwkscache.Manager that implements the contract
// in api/openapi.yaml (served at GET /openapi.yaml).
//
// It lets operators and tenants register identity providers
// (PUT/DELETE /tenants/{tenantId}/providers/{providerId}), read their
// status (GET .../status, GET /tenants/{tenantId}/providers), refresh them
// (POST .../refresh), deny and allow kids (POST/DELETE
// .../keys/{kid}/deny), and serves each provider's usable keys to the
// services that verify tokens (GET .../jwks), with strong ETags,
// conditional requests and HTTP caching headers. GET /healthz, /readyz and
// /metrics serve the operations side.
//
// # Usage
//
//	m, err := jwkscache.New(jwkscache.Options{Registerer: reg})
//	...
//	h, err := controlplane.New(m, controlplane.Options{
//		AdminTokens:  []string{os.Getenv("JWKS_ADMIN_TOKEN")},
//		TenantTokens: map[string][]string{"acme": {os.Getenv("JWKS_ACME_TOKEN")}},
//		Metrics:      promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
//		Logger:       slog.Default(),
//	})
//	...
//	srv := &http.Server{Addr: "127.0.0.1:8080", Handler: h}
//
// # Authentication
//
// Every /tenants/... route except GET .../jwks needs
// "Authorization: Bearer <token>". An admin token (Options.AdminTokens)
// reaches every tenant; a tenant token (Options.TenantTokens) reaches its
// own tenant only, and on another tenant's routes gets 404 not_found,
// exactly as if that tenant did not exist. A missing or unknown token gets
// 401 with a WWW-Authenticate: Bearer challenge. Tokens are compared in
// constant time, over their SHA-256 digests (so that their length does not
// show either), with every configured token. GET .../jwks, /healthz,
// /readyz and /openapi.yaml are public; /metrics too unless
// Options.ProtectMetrics asks for an admin token. Path parameters are
// checked before the token: a bad tenantId, providerId or kid is 400
// invalid_request.
//
// # Registering
//
// PUT takes a JSON Registration (at most 64 KiB, Content-Type
// application/json) and answers 202 with the provider's status and its
// registrationVersion, quoted, as ETag; keys load in the background. A
// refused registration gets 400 invalid_registration, or 403
// security_policy when a field breaks the security policy, with every bad
// field in details. If-Match makes the update conditional (409 conflict on
// a mismatch; * needs the provider to exist).
//
// # Serving keys
//
// GET .../jwks answers from memory with the document the Manager built
// (jwkscache.Manager.JWKS): a strong ETag, Last-Modified, Cache-Control:
// public, max-age=<remaining freshness> and Age (since the last exchange
// with the IdP). If-None-Match (weak comparison) and, without it,
// If-Modified-Since give 304. ?kid= narrows the set to one kid (404 when
// the set lacks it or it is denied). Cache-Control: no-cache or max-age=0,
// and a kid the set lacks, first ask the Manager for one revalidation with
// the IdP, shared and rationed by the provider's unknown-kid budget, for at
// most 2 s; past the budget the answer comes from memory. A cold provider
// is waited for at most 2 s (then 503 loading, Retry-After: 1); a provider
// without usable keys is 502 no_keys with the class of its last error.
//
// Every other answer carries Cache-Control: no-store and
// X-Content-Type-Options: nosniff, and every error an ErrorResponse body
// ({"error", "message", "details"}) whose messages never hold tokens, key
// material or request bodies.
package controlplane

// Command jwks-cache is the jwkscache daemon and its command-line tools:
//
//	jwks-cache serve [--config FILE] [--check]   the daemon (api/openapi.yaml)
//	jwks-cache fetch URL [--json] ...            one fetch, explained
//	jwks-cache verify TOKEN|- ...                a JWT, and why it fails
//	jwks-cache demo                              a guided tour, offline
//	jwks-cache version
//
// serve reads a YAML configuration (listen, adminTokens, tenantTokens,
// store, security, defaults, providers, protectMetrics, shutdownTimeout,
// logLevel), then the environment: JWKS_CACHE_LISTEN,
// JWKS_CACHE_ADMIN_TOKEN, JWKS_CACHE_STORE and JWKS_CACHE_STORE_KEY.
// README.md in this directory is the reference.
package main

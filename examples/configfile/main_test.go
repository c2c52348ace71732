package main

import "os"

// The demo registers the five entries of its file: two load their keys,
// three are refused, each with its reason.
func Example() {
	if err := demo(os.Stdout); err != nil {
		panic(err)
	}
	// Output:
	// registered 2 of 5 providers
	//   refused: providers[2]: jwkscache: registration globex/legacy: jwksUrl: "http://sso.globex.example/jwks.json": http is refused; use https (or set AllowHTTP on both the Registration and the Options)
	//   refused: providers[3] initech/okta: jwkscache: invalid registration: unknown field "minTTL" (names are case-sensitive: did you mean "minTtl"?)
	//   refused: providers[4] initech/entra: jwkscache: invalid registration: staleWhileError: "1h": not an ISO-8601 duration such as PT30S, PT0.25S or PT24H
	// acme/auth0: Ready, keys [k1], fresh for 5m0s (max-age)
	// globex/keycloak: Ready, keys [k1], fresh for 30s (no-cache)
}

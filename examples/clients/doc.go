// Package clients holds the client code that docs/clients.md shows, so that
// it is compiled and tested against an in-process jwks-cache daemon: Go's
// keyfunc here, jose and jwks-rsa (Node) in node/, PyJWT in python/ and
// Nimbus JOSE+JWT in java/.
//
// It is a module of its own, so that the library's go.mod never depends on
// keyfunc. Run its tests from this directory:
//
//	go vet ./... && go test ./...
//
// The Node tests install their packages with npm ci and run only with
// JWKSCACHE_CLIENT_TESTS=1 (node and npm on PATH):
//
//	JWKSCACHE_CLIENT_TESTS=1 go test -run Node -v ./...
package clients

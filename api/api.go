// Package api holds the HTTP contract of the jwks-cache daemon's control
// plane: openapi.yaml, an OpenAPI 3.1.0 document, embedded in the binary so
// that the daemon serves (at GET /openapi.yaml) the very document its tests
// validate against.
//
// The paths, their methods and status codes, the request and response
// schemas and the headers are the contract; the document's descriptions say
// what a client may rely on. Package apitest validates HTTP exchanges
// against it.
package api

import (
	"bytes"
	_ "embed"
)

//go:embed openapi.yaml
var spec []byte

// Spec returns the OpenAPI document (YAML) in a new slice of the caller's.
func Spec() []byte { return bytes.Clone(spec) }

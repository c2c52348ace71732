package main

import (
	"net/http"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/controlplane"
)

// cpOptions are the control plane's options.
type cpOptions = controlplane.Options

// newControlPlane returns the control plane of api/openapi.yaml on m.
func newControlPlane(m *jwkscache.Manager, o cpOptions) (http.Handler, error) {
	return controlplane.New(m, o)
}

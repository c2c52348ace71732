// Package testidp adapts the public test identity provider
// github.com/jwkscache/jwkscache/jwkscachetest to the tests of this module.
//
// It is a thin layer: the types are aliases of jwkscachetest's, and the
// only additions are the helpers that take a testing.TB (Start, StartTLS),
// which the public package cannot offer because it must not import
// package testing.
package testidp

import (
	"crypto/tls"
	"net/http/httptest"
	"testing"

	"github.com/jwkscache/jwkscache/jwkscachetest"
)

// DefaultPath is the path at which NewDefault serves its JWKS.
const DefaultPath = jwkscachetest.DefaultPath

// Content types used by the IdP.
const (
	ContentTypeJWKS = jwkscachetest.ContentTypeJWKS
	ContentTypeJSON = jwkscachetest.ContentTypeJSON
)

// HTMLBody is the body sent by the HTML fault.
const HTMLBody = jwkscachetest.HTMLBody

type (
	// Key is jwkscachetest.Key.
	Key = jwkscachetest.Key
	// Fault is jwkscachetest.Fault.
	Fault = jwkscachetest.Fault
)

// IdP is a jwkscachetest.IdP with testing.TB-aware start helpers.
type IdP struct {
	*jwkscachetest.IdP
}

// New returns an empty IdP: every path answers 404 until configured.
func New() *IdP { return &IdP{jwkscachetest.New()} }

// NewDefault is jwkscachetest.NewDefault.
func NewDefault() (*IdP, []*Key) {
	p, keys := jwkscachetest.NewDefault()
	return &IdP{p}, keys
}

// NewKey is jwkscachetest.NewKey.
func NewKey(alg, kid string) *Key { return jwkscachetest.NewKey(alg, kid) }

// NewUniqueKey is jwkscachetest.NewUniqueKey.
func NewUniqueKey(alg, kid string) *Key { return jwkscachetest.NewUniqueKey(alg, kid) }

// GzipBomb is jwkscachetest.GzipBomb.
func GzipBomb(n int64) []byte { return jwkscachetest.GzipBomb(n) }

// SPKIPin is jwkscachetest.SPKIPin.
var SPKIPin = jwkscachetest.SPKIPin

// Start starts a plain HTTP server on a loopback address serving the IdP.
// The server is closed in t.Cleanup.
func (p *IdP) Start(t testing.TB) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(p)
	t.Cleanup(s.Close)
	return s
}

// StartTLS starts an HTTPS server on a loopback address serving the IdP
// with the IdP's own certificate (see Leaf and CertPool). The server speaks
// HTTP/1.1 only, so that the Reset and Refuse faults can hijack connections.
// The server is closed in t.Cleanup.
func (p *IdP) StartTLS(t testing.TB) *httptest.Server {
	t.Helper()
	s := httptest.NewUnstartedServer(p)
	s.TLS = &tls.Config{Certificates: []tls.Certificate{p.Certificate()}}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

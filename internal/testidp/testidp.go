// Package testidp adapts the public test identity provider
// github.com/jwkscache/jwkscache/jwkscachetest to the tests of this module.
//
// It is a thin layer. Key and Fault are aliases of jwkscachetest's types,
// and IdP embeds a *jwkscachetest.IdP, adding only:
//
//   - Start and StartTLS, which take a testing.TB for cleanup and return
//     an *httptest.Server; the public package cannot offer them because it
//     must not import package testing;
//   - the path-based key methods SetKeys, AddKey, RemoveKey, Rotate and
//     Keys, one-line forwards to jwkscachetest.KeySet, under the names the
//     tests of this module use.
//
// New returns an empty IdP (jwkscachetest.NewEmpty) and NewDefault one
// serving three keys at DefaultPath.
package testidp

import (
	"crypto/tls"
	"net/http/httptest"
	"testing"

	"github.com/jwkscache/jwkscache/jwkscachetest"
)

// DefaultPath is the path at which NewDefault serves its JWKS.
const DefaultPath = jwkscachetest.JWKSPath

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
func New() *IdP { return &IdP{jwkscachetest.NewEmpty()} }

// NewDefault returns an IdP serving at DefaultPath an RS256 key "rsa-1",
// an ES256 key "ec-1" and an EdDSA key "ed-1" with
// "Cache-Control: max-age=300", together with those keys in that order.
func NewDefault() (*IdP, []*Key) {
	p := New()
	keys := []*Key{NewKey("RS256", "rsa-1"), NewKey("ES256", "ec-1"), NewKey("EdDSA", "ed-1")}
	p.SetKeys(DefaultPath, keys...)
	p.SetHeader(DefaultPath, "Cache-Control", "max-age=300")
	return p, keys
}

// SetKeys makes path serve {"keys":[...]} with the public JWKs of keys, in
// order (jwkscachetest.KeySet.Set).
func (p *IdP) SetKeys(path string, keys ...*Key) { p.KeySet(path).Set(keys...) }

// AddKey appends k to the keys served at path (jwkscachetest.KeySet.Add).
func (p *IdP) AddKey(path string, k *Key) { p.KeySet(path).Add(k) }

// RemoveKey removes every key with key ID kid from the keys served at path
// (jwkscachetest.KeySet.Remove).
func (p *IdP) RemoveKey(path, kid string) { p.KeySet(path).Remove(kid) }

// Rotate generates a key "k<N>" for alg, appends it to the keys served at
// path and keeps only the last two (jwkscachetest.KeySet.Rotate).
func (p *IdP) Rotate(path, alg string) *Key { return p.KeySet(path).Rotate(alg) }

// Keys returns the keys served at path, nil if it serves raw bytes or
// nothing (jwkscachetest.KeySet.Keys).
func (p *IdP) Keys(path string) []*Key { return p.KeySet(path).Keys() }

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

// Package jwkscachetest provides a fake OpenID Connect / JWKS identity provider for
// tests of the JWKS cache.
//
// An IdP serves, per URL path, a JWKS document built from Keys, raw fixture
// bytes, an OIDC discovery document or a redirect. It supports ETag and
// Last-Modified revalidation, extra cache headers and injectable faults
// (error statuses, delays, truncated, oversized or compressed-bomb bodies,
// HTML login pages, redirects, connection resets and refusals).
//
// An IdP can be used in two ways:
//
//   - as an in-memory http.RoundTripper (RoundTrip, Client), which never
//     touches the network, runs entirely in the calling goroutine and waits
//     only on timers and the request context, so it works inside
//     testing/synctest bubbles; the URL host is ignored, for example
//     "https://idp.test/jwks.json";
//   - as an http.Handler behind a real server on loopback, using a
//     certificate issued by a test CA (Certificate, CertPool, CA, Leaf).
package jwkscachetest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// DefaultPath is the path at which NewDefault serves its JWKS.
const DefaultPath = "/jwks.json"

// Content types used by the IdP.
const (
	ContentTypeJWKS = "application/jwk-set+json"
	ContentTypeJSON = "application/json"
)

// IdP is a fake identity provider: an http.Handler serving per-path JWKS
// documents (and an OIDC discovery document), and an in-memory
// http.RoundTripper. All methods are safe for concurrent use.
type IdP struct {
	mu     sync.Mutex
	routes map[string]*route
	counts map[string]int
	last   map[string]http.Header
	total  int
	seq    int // Rotate key ID counter
}

// route is the configuration and content of one path.
type route struct {
	keys        []*Key
	hasBody     bool
	body        []byte // never mutated once set, only replaced
	contentType string
	etag        string // strong ETag of body
	noETag      bool
	lastMod     time.Time
	trackLM     bool
	header      http.Header
	redirect    string
	fault       *Fault
	faultLeft   int // remaining requests for fault; <= 0 means forever
}

// New returns an empty IdP. Every path, including "/jwks.json", answers 404
// until content is configured for it.
func New() *IdP {
	return &IdP{
		routes: make(map[string]*route),
		counts: make(map[string]int),
		last:   make(map[string]http.Header),
	}
}

// NewDefault returns an IdP serving at "/jwks.json" an RS256 key "rsa-1", an
// ES256 key "ec-1" and an EdDSA key "ed-1" with "Cache-Control: max-age=300",
// together with those keys in that order.
func NewDefault() (*IdP, []*Key) {
	p := New()
	keys := []*Key{NewKey("RS256", "rsa-1"), NewKey("ES256", "ec-1"), NewKey("EdDSA", "ed-1")}
	p.SetKeys(DefaultPath, keys...)
	p.SetHeader(DefaultPath, "Cache-Control", "max-age=300")
	return p, keys
}

// Client returns an HTTP client whose transport is the IdP itself, so
// requests to any host are answered in memory.
func (p *IdP) Client() *http.Client {
	return &http.Client{Transport: p}
}

// update calls f with the route for path, creating it, under the lock.
func (p *IdP) update(path string, f func(rt *route)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rt := p.routes[path]
	if rt == nil {
		rt = &route{header: make(http.Header)}
		p.routes[path] = rt
	}
	f(rt)
}

// setBody replaces the body of rt, updating its ETag and, if Last-Modified
// tracking is on and the bytes changed, its Last-Modified time.
func (rt *route) setBody(body []byte, contentType string) {
	changed := !rt.hasBody || !bytes.Equal(rt.body, body)
	rt.body, rt.hasBody, rt.contentType = body, true, contentType
	sum := sha256.Sum256(body)
	rt.etag = `"` + hex.EncodeToString(sum[:16]) + `"`
	if changed && rt.trackLM {
		rt.lastMod = time.Now().UTC().Truncate(time.Second)
	}
}

// regenerate makes rt serve a JWKS generated from keys.
func (rt *route) regenerate(keys []*Key) {
	rt.keys = keys
	set := jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, 0, len(keys))}
	for _, k := range keys {
		set.Keys = append(set.Keys, k.Public)
	}
	body, err := json.Marshal(set)
	if err != nil {
		panic("jwkscachetest: marshaling JWKS: " + err.Error())
	}
	rt.setBody(body, ContentTypeJWKS)
}

// SetKeys makes path serve {"keys":[...]} with the public JWKs of keys, in
// order, with Content-Type application/jwk-set+json. With no keys it serves
// an empty key set.
func (p *IdP) SetKeys(path string, keys ...*Key) {
	p.update(path, func(rt *route) { rt.regenerate(slices.Clone(keys)) })
}

// AddKey appends k to the keys served at path.
func (p *IdP) AddKey(path string, k *Key) {
	p.update(path, func(rt *route) { rt.regenerate(append(slices.Clip(rt.keys), k)) })
}

// RemoveKey removes every key with key ID kid from the keys served at path.
func (p *IdP) RemoveKey(path, kid string) {
	p.update(path, func(rt *route) {
		rt.regenerate(slices.DeleteFunc(slices.Clone(rt.keys), func(k *Key) bool { return k.KID == kid }))
	})
}

// Rotate generates a new key for alg with key ID "k<N>", N being a per-IdP
// counter starting at 1, and appends it to the keys served at path. If that
// leaves more than two keys, the oldest is dropped, so after a rotation the
// set holds the previous key and the new one. It returns the new key.
func (p *IdP) Rotate(path, alg string) *Key {
	p.mu.Lock()
	p.seq++
	kid := "k" + strconv.Itoa(p.seq)
	p.mu.Unlock()
	k := NewKey(alg, kid) // outside the lock: RSA generation may be slow
	p.update(path, func(rt *route) {
		keys := append(slices.Clone(rt.keys), k)
		rt.regenerate(keys[max(len(keys)-2, 0):])
	})
	return k
}

// Keys returns the keys currently served at path (nil if the path serves
// raw bytes or nothing).
func (p *IdP) Keys(path string) []*Key {
	var keys []*Key
	p.update(path, func(rt *route) { keys = slices.Clone(rt.keys) })
	return keys
}

// SetBody makes path serve body verbatim instead of a generated JWKS, with
// the given Content-Type (application/json if empty). A later SetKeys,
// AddKey, RemoveKey or Rotate switches back to a generated JWKS.
func (p *IdP) SetBody(path string, body []byte, contentType string) {
	if contentType == "" {
		contentType = ContentTypeJSON
	}
	body = slices.Clone(body)
	p.update(path, func(rt *route) {
		rt.keys = nil
		rt.setBody(body, contentType)
	})
}

// SetDiscovery makes path, normally "/.well-known/openid-configuration",
// serve the OIDC discovery document {"issuer":issuer,"jwks_uri":jwksURI}.
func (p *IdP) SetDiscovery(path, issuer, jwksURI string) {
	body, err := json.Marshal(map[string]string{"issuer": issuer, "jwks_uri": jwksURI})
	if err != nil {
		panic("jwkscachetest: marshaling discovery document: " + err.Error())
	}
	p.SetBody(path, body, ContentTypeJSON)
}

// SetRedirect makes path answer every request with a 302 to location, which
// may be absolute or relative. An empty location removes the redirect.
// A redirect takes precedence over any content of path, but not over faults.
func (p *IdP) SetRedirect(path, location string) {
	p.update(path, func(rt *route) { rt.redirect = location })
}

// SetHeader sets an extra response header, such as Cache-Control, Expires,
// Age or Date, sent on 200 and 304 responses for path.
func (p *IdP) SetHeader(path, name, value string) {
	p.update(path, func(rt *route) { rt.header.Set(name, value) })
}

// DelHeader removes an extra response header set with SetHeader.
func (p *IdP) DelHeader(path, name string) {
	p.update(path, func(rt *route) { rt.header.Del(name) })
}

// SetETag turns the ETag of path on or off; it is on by default. The ETag is
// strong: a double-quoted hex encoding of the first 16 bytes of the SHA-256
// of the body, so it changes whenever the body does. While on, a request
// whose If-None-Match lists it (weak comparison) or is "*" gets a 304.
func (p *IdP) SetETag(path string, on bool) {
	p.update(path, func(rt *route) { rt.noETag = !on })
}

// ETag returns the ETag path currently serves, or "" if none.
func (p *IdP) ETag(path string) string {
	var etag string
	p.update(path, func(rt *route) {
		if rt.hasBody && !rt.noETag {
			etag = rt.etag
		}
	})
	return etag
}

// SetLastModified sets the Last-Modified time of path, truncated to whole
// seconds; the zero time turns Last-Modified off (the default). While on, a
// request without If-None-Match whose If-Modified-Since is not before it
// gets a 304, and every later body change sets it to the current time
// (time.Now, hence the fake clock inside a synctest bubble).
func (p *IdP) SetLastModified(path string, t time.Time) {
	if !t.IsZero() {
		t = t.UTC().Truncate(time.Second)
	}
	p.update(path, func(rt *route) { rt.lastMod, rt.trackLM = t, !t.IsZero() })
}

// SetFault makes f apply to the next f.Count requests for path, or to every
// request until ClearFault if f.Count is zero. It replaces any earlier fault.
func (p *IdP) SetFault(path string, f Fault) {
	p.update(path, func(rt *route) { rt.fault, rt.faultLeft = &f, f.Count })
}

// ClearFault removes the fault of path.
func (p *IdP) ClearFault(path string) {
	p.update(path, func(rt *route) { rt.fault, rt.faultLeft = nil, 0 })
}

// Requests returns the number of requests received for path, whatever their
// outcome (faults, 304s, 404s and 405s included).
func (p *IdP) Requests(path string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[path]
}

// TotalRequests returns the number of requests received for all paths.
func (p *IdP) TotalRequests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total
}

// LastRequest returns a copy of the headers of the last request for path,
// or nil if there was none.
func (p *IdP) LastRequest(path string) http.Header {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last[path].Clone()
}

// ResetCounters forgets all requests counted so far and the last request
// headers. Content, headers and faults are kept.
func (p *IdP) ResetCounters() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.counts)
	clear(p.last)
	p.total = 0
}

// record counts r and returns a copy of the state of its route, consuming
// one use of the route's fault. The copy is used without the lock.
func (p *IdP) record(r *http.Request) route {
	path := requestPath(r)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total++
	p.counts[path]++
	h := r.Header.Clone()
	if h == nil {
		h = make(http.Header)
	}
	p.last[path] = h
	rt := p.routes[path]
	if rt == nil {
		return route{}
	}
	s := *rt
	s.header = rt.header.Clone()
	if rt.noETag {
		s.etag = ""
	}
	if rt.fault != nil && rt.faultLeft > 0 {
		rt.faultLeft--
		if rt.faultLeft == 0 {
			rt.fault = nil
		}
	}
	return s
}

func requestPath(r *http.Request) string {
	if r.URL == nil || r.URL.Path == "" {
		return "/"
	}
	return r.URL.Path
}

// respond computes the reply to r.
func (p *IdP) respond(r *http.Request) *reply {
	s := p.record(r)
	if s.fault == nil {
		return serve(r, s)
	}
	if rep := s.fault.reply(s.body); rep != nil {
		return rep
	}
	rep := serve(r, s)
	rep.delay = s.fault.Delay
	return rep
}

// serve computes the normal (fault-free) reply to r.
func serve(r *http.Request, s route) *reply {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		rep := newReply(http.StatusMethodNotAllowed, textPlain, []byte("method not allowed"))
		rep.header.Set("Allow", "GET, HEAD")
		return rep
	}
	if s.redirect != "" {
		rep := newReply(http.StatusFound, "", nil)
		rep.header.Set("Location", s.redirect)
		return rep
	}
	if !s.hasBody {
		return newReply(http.StatusNotFound, textPlain, []byte("not found"))
	}
	rep := &reply{status: http.StatusOK, header: s.header}
	if s.etag != "" {
		rep.header.Set("ETag", s.etag)
	}
	if !s.lastMod.IsZero() {
		rep.header.Set("Last-Modified", s.lastMod.Format(http.TimeFormat))
	}
	if notModified(r, s.etag, s.lastMod) {
		rep.status = http.StatusNotModified
		return rep
	}
	rep.header.Set("Content-Type", s.contentType)
	rep.body, rep.length = bytes.NewReader(s.body), int64(len(s.body))
	return rep
}

// notModified reports whether r's preconditions call for a 304, following
// RFC 9110 section 13.2.2: If-None-Match, when present, decides alone.
func notModified(r *http.Request, etag string, lastMod time.Time) bool {
	if inm := r.Header.Values("If-None-Match"); len(inm) > 0 {
		for _, v := range inm {
			for tag := range strings.SplitSeq(v, ",") {
				tag = strings.TrimSpace(tag)
				if tag == "*" || (etag != "" && strings.TrimPrefix(tag, "W/") == etag) {
					return true
				}
			}
		}
		return false
	}
	ims := r.Header.Get("If-Modified-Since")
	if ims == "" || lastMod.IsZero() {
		return false
	}
	t, err := http.ParseTime(ims)
	return err == nil && !lastMod.After(t)
}

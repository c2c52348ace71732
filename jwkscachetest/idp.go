package jwkscachetest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Well-known paths of an IdP made by New.
const (
	// JWKSPath is the path of the IdP's main key set (see IdP.JWKS).
	JWKSPath = "/jwks.json"
	// DiscoveryPath is the path of the OpenID Connect discovery document
	// of the IdP's issuer.
	DiscoveryPath = "/.well-known/openid-configuration"
)

// InMemoryURL is the base URL of an IdP that has not been started. The
// in-memory transport (IdP.Client, IdP.RoundTrip) ignores the host of the
// requests it answers, so this URL, or any other, reaches the IdP through
// it. It is not resolvable on a network.
const InMemoryURL = "https://idp.test"

// DefaultMaxAge is the Cache-Control max-age that New sets on JWKSPath.
const DefaultMaxAge = 5 * time.Minute

// Content types used by the IdP.
const (
	// ContentTypeJWKS is the Content-Type of generated key sets.
	ContentTypeJWKS = "application/jwk-set+json"
	// ContentTypeJSON is the Content-Type of discovery documents, and of
	// SetBody when it is given none.
	ContentTypeJSON = "application/json"
)

// IdP is a fake identity provider. It serves, per URL path, a key set
// (see KeySet), raw bytes (SetBody), an OpenID Connect discovery document
// (SetDiscovery) or a redirect (SetRedirect), with configurable response
// headers, validators and faults, and counts the requests it receives.
//
// An IdP is an http.Handler (ServeHTTP) and an in-memory
// http.RoundTripper (RoundTrip, Client); Start and StartHTTP also serve it
// on a loopback socket until Close. All methods are safe for concurrent
// use, including while requests are being served.
type IdP struct {
	mu     sync.Mutex
	routes map[string]*route
	counts map[string]int
	last   map[string]http.Header
	total  int
	seq    int    // key ID counter for Rotate and PrePublish
	base   string // base URL: InMemoryURL until started
	srv    *server
	closed bool
}

// route is the configuration and content of one path.
type route struct {
	keys        []*Key
	signer      *Key // the signing key of the key set, if any
	hasBody     bool
	body        []byte // never mutated once set, only replaced
	contentType string
	etag        string // strong ETag of body
	noETag      bool
	lastMod     time.Time
	trackLM     bool
	discovery   bool // body is the IdP's own discovery document
	header      http.Header
	redirect    string
	fault       *Fault
	faultLeft   int // remaining requests for fault; <= 0 means forever
}

// New returns an IdP, not yet started, with the usual setup of an OpenID
// Connect provider:
//
//   - at JWKSPath, a key set with one RS256 signing key whose key ID is
//     "k1", served with "Cache-Control: max-age=300" (DefaultMaxAge), an
//     ETag and no Last-Modified;
//   - at DiscoveryPath, the discovery document of the IdP's issuer
//     (Issuer), whose jwks_uri is JWKSURL. It follows the IdP's address:
//     it changes when Start or StartHTTP gives the IdP its URL.
//
// Every other path answers 404 until configured. Call Start to serve it
// over TLS, or use Client for in-memory requests.
func New() *IdP {
	p := NewEmpty()
	p.JWKS().Rotate("RS256")
	p.SetMaxAge(JWKSPath, DefaultMaxAge)
	p.update(DiscoveryPath, func(rt *route) {
		rt.discovery = true
		rt.setBody(p.discoveryDocument(p.base), ContentTypeJSON)
	})
	return p
}

// NewEmpty returns an IdP, not yet started, on which every path answers
// 404 until content is configured for it, including JWKSPath and
// DiscoveryPath.
func NewEmpty() *IdP {
	return &IdP{
		routes: make(map[string]*route),
		counts: make(map[string]int),
		last:   make(map[string]http.Header),
		base:   InMemoryURL,
	}
}

// URL returns the base URL of the IdP, without a trailing slash: the
// address of its server once Start or StartHTTP has been called (for
// example "https://127.0.0.1:41235"), and InMemoryURL before. It does not
// change when the IdP is closed.
func (p *IdP) URL() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.base
}

// Issuer returns the issuer identifier of the IdP, which is its URL: the
// "issuer" member of the discovery document New serves, and the "iss"
// claim set by Claims.
func (p *IdP) Issuer() string { return p.URL() }

// JWKSURL returns the URL of the IdP's main key set: URL() + JWKSPath.
func (p *IdP) JWKSURL() string { return p.URL() + JWKSPath }

// DiscoveryURL returns the URL of the IdP's discovery document:
// URL() + DiscoveryPath.
func (p *IdP) DiscoveryURL() string { return p.URL() + DiscoveryPath }

// Client returns an HTTP client whose transport is the IdP itself (see
// RoundTrip): requests to any host are answered in memory, without
// sockets, so it works inside testing/synctest bubbles and whether or not
// the IdP is started.
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

// view calls f with the route for path, or nil if there is none, under the
// lock, without creating it.
func (p *IdP) view(path string, f func(rt *route)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p.routes[path])
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

// setRaw makes rt serve body instead of a key set or discovery document.
func (rt *route) setRaw(body []byte, contentType string) {
	rt.keys, rt.signer, rt.discovery = nil, nil, false
	rt.setBody(body, contentType)
}

// regenerate makes rt serve a JWKS generated from keys. The signing key is
// kept if it is still among keys.
func (rt *route) regenerate(keys []*Key) {
	rt.keys, rt.discovery = keys, false
	if !slices.Contains(keys, rt.signer) {
		rt.signer = nil
	}
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

// discoveryDocument returns the discovery document of an IdP whose base
// URL is base.
func (p *IdP) discoveryDocument(base string) []byte {
	return marshalDiscovery(base, base+JWKSPath)
}

func marshalDiscovery(issuer, jwksURI string) []byte {
	body, err := json.Marshal(map[string]string{"issuer": issuer, "jwks_uri": jwksURI})
	if err != nil {
		panic("jwkscachetest: marshaling discovery document: " + err.Error())
	}
	return body
}

// setBase changes the base URL and the discovery documents that follow it.
// The caller holds p.mu.
func (p *IdP) setBase(base string) {
	p.base = base
	for _, rt := range p.routes {
		if rt.discovery {
			rt.setBody(p.discoveryDocument(base), ContentTypeJSON)
		}
	}
}

// nextKID returns a new key ID "k<N>", N counting from 1 per IdP.
func (p *IdP) nextKID() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq++
	return "k" + strconv.Itoa(p.seq)
}

// SetBody makes path serve body verbatim, with the given Content-Type
// (ContentTypeJSON if empty), instead of a key set or discovery document:
// use it for fixtures such as malformed or unusual documents. A later
// change through KeySet(path) switches back to a generated key set.
func (p *IdP) SetBody(path string, body []byte, contentType string) {
	if contentType == "" {
		contentType = ContentTypeJSON
	}
	body = slices.Clone(body)
	p.update(path, func(rt *route) { rt.setRaw(body, contentType) })
}

// SetDiscovery makes path, normally DiscoveryPath or a path ending with
// it, serve the OpenID Connect discovery document
// {"issuer":issuer,"jwks_uri":jwksURI} with Content-Type
// application/json. The document is fixed: it does not follow the IdP's
// URL, so an issuer that differs from the one the document is fetched
// under (an error for OpenID Connect Discovery) can be tested.
func (p *IdP) SetDiscovery(path, issuer, jwksURI string) {
	p.SetBody(path, marshalDiscovery(issuer, jwksURI), ContentTypeJSON)
}

// SetRedirect makes path answer every request with a 302 to location, which
// may be absolute or relative. An empty location removes the redirect.
// A redirect takes precedence over any content of path, but not over faults.
func (p *IdP) SetRedirect(path, location string) {
	p.update(path, func(rt *route) { rt.redirect = location })
}

// SetHeader sets an extra response header, such as Cache-Control, Expires,
// Age or Date, sent on the 200 and 304 responses of path. It does not
// create content: a path without content still answers 404.
func (p *IdP) SetHeader(path, name, value string) {
	p.update(path, func(rt *route) { rt.header.Set(name, value) })
}

// DelHeader removes an extra response header set with SetHeader or
// SetMaxAge.
func (p *IdP) DelHeader(path, name string) {
	p.update(path, func(rt *route) { rt.header.Del(name) })
}

// SetMaxAge sets the Cache-Control header of path to "max-age=N", N being
// d in whole seconds (rounded down, at least 0). Use SetHeader for other
// directives, such as "no-store", and DelHeader to remove it.
func (p *IdP) SetMaxAge(path string, d time.Duration) {
	p.SetHeader(path, "Cache-Control", "max-age="+strconv.FormatInt(int64(max(d, 0)/time.Second), 10))
}

// SetETag turns the ETag of path on or off; it is on by default. The ETag is
// strong: a double-quoted hex encoding of the first 16 bytes of the SHA-256
// of the body, so it changes whenever the body does. While on, a request
// whose If-None-Match lists it (weak comparison) or is "*" gets a 304 Not
// Modified with the same headers and no body.
func (p *IdP) SetETag(path string, on bool) {
	p.update(path, func(rt *route) { rt.noETag = !on })
}

// ETag returns the ETag path currently serves, or "" if none.
func (p *IdP) ETag(path string) string {
	var etag string
	p.view(path, func(rt *route) {
		if rt != nil && rt.hasBody && !rt.noETag {
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
// method and outcome (faults, 304s, 404s and 405s included). The path is
// the URL path without the query.
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

// RequestCounts returns a copy of the number of requests received per
// path, for the paths that received any.
func (p *IdP) RequestCounts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.counts)
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

// panicf panics with a message prefixed by the package name.
func panicf(format string, args ...any) {
	panic(fmt.Sprintf("jwkscachetest: "+format, args...))
}

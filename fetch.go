package jwkscache

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"
)

// Version is the version of this module, sent in the User-Agent header.
const Version = "0.1.0"

const userAgent = "jwkscache/" + Version

// validators are the cache validators of a stored response (RFC 9110
// section 8.8), sent back as If-None-Match and If-Modified-Since.
type validators struct {
	ETag         string
	LastModified string
}

// fetchResult is a successful fetch: either "not modified" with renewed
// freshness, or a new document.
type fetchResult struct {
	NotModified bool
	Body        []byte   // the raw document as served (after decompression); nil when NotModified
	Hash        [32]byte // SHA-256 of Body
	Validators  validators
	Fresh       freshness
	FetchedAt   time.Time
	URL         string // the final URL, after redirects
	Attempts    int
}

// keysResult is a successful key set fetch.
type keysResult struct {
	fetchResult
	Keys *keySet // nil when NotModified
}

// fetcher performs secure fetches for every provider of a Manager. It is
// safe for concurrent use.
type fetcher struct {
	opts   Options
	custom http.RoundTripper // from Options.HTTPClient, or nil
	dialer *net.Dialer
	tr     *tracing // the engine's tracer (tracing.go)

	mu         sync.Mutex
	transports map[string]*pinTransport // by pinKey; guarded by mu
	// uncounted holds the keys of the entries with no users, so pruning
	// them does not scan every entry (there may be one per provider).
	uncounted map[string]struct{} // guarded by mu
}

// pinTransport is the built-in transport of one pin set and the number of
// registrations using it.
type pinTransport struct {
	t     *http.Transport
	users int // acquirePins minus releasePins; 0 for an uncounted entry
}

func newFetcher(opts Options) *fetcher {
	f := &fetcher{opts: opts, transports: make(map[string]*pinTransport), uncounted: make(map[string]struct{}), tr: newTracing(opts.TracerProvider)}
	if opts.HTTPClient != nil {
		f.custom = opts.HTTPClient.Transport
		if f.custom == nil {
			f.custom = http.DefaultTransport
		}
	}
	f.dialer = &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second, Control: f.guardDial}
	return f
}

// close releases idle connections and forgets every built-in transport. A
// fetch still running keeps the transport it has and completes; a later
// fetch would get a new, uncounted one.
func (f *fetcher) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, e := range f.transports {
		e.t.CloseIdleConnections()
		delete(f.transports, k)
	}
	clear(f.uncounted)
}

// policyFor returns the URL policy of a registration under f's options.
func (f *fetcher) policyFor(reg *Registration) urlPolicy {
	return urlPolicy{
		allowHTTP:        reg.AllowHTTP && f.opts.AllowHTTP,
		domains:          f.opts.AllowedDomains,
		regDomains:       reg.AllowedDomains,
		allowedAddresses: f.opts.AllowedAddresses,
	}
}

// fetchKeys fetches and validates the key set of reg at rawURL. With
// validators it makes a conditional request; a 304 answer returns
// NotModified. Errors are *FetchError.
func (f *fetcher) fetchKeys(ctx context.Context, reg *Registration, rawURL string, val validators) (*keysResult, error) {
	res, err := fetchParsed(ctx, f, reg, rawURL, false, val, parseKeySet)
	if err != nil {
		return nil, err
	}
	return &keysResult{fetchResult: res.fetchResult, Keys: res.parsed}, nil
}

// maxDiscoveredURL bounds the jwks_uri a discovery document may name.
const maxDiscoveredURL = 2048

// discoveryDoc is the part of an OIDC discovery document the cache uses.
type discoveryDoc struct {
	Issuer  string `json:"issuer"`
	JWKSURI string `json:"jwks_uri"`
}

// discoveryResult is a successful discovery fetch.
type discoveryResult struct {
	fetchResult
	Doc *discoveryDoc // nil when NotModified
}

// fetchDiscovery fetches the OIDC discovery document of reg.Issuer and
// checks that its issuer equals reg.Issuer exactly and that its jwks_uri
// passes the URL policy.
func (f *fetcher) fetchDiscovery(ctx context.Context, reg *Registration, val validators) (*discoveryResult, error) {
	pol := f.policyFor(reg)
	res, err := fetchParsed(ctx, f, reg, reg.discoveryURL(), true, val, func(body []byte) (*discoveryDoc, error) {
		var d discoveryDoc
		if bytes.HasPrefix(bytes.TrimSpace(body), []byte("<")) {
			return nil, errHTML
		}
		if err := json.Unmarshal(body, &d); err != nil {
			return nil, fmt.Errorf("discovery document: %s", capText(err.Error()))
		}
		if d.Issuer != reg.Issuer {
			// Both issuers are shown capped: the document's is upstream
			// data of any length.
			return nil, fmt.Errorf("discovery document issuer %s does not equal the registered issuer %s", showID(d.Issuer), showID(reg.Issuer))
		}
		if len(d.JWKSURI) > maxDiscoveredURL {
			// It is stored, shown in Status and named in errors.
			return nil, fmt.Errorf("discovery document: jwks_uri of %d bytes (at most %d)", len(d.JWKSURI), maxDiscoveredURL)
		}
		u, err := url.Parse(d.JWKSURI)
		if err != nil || d.JWKSURI == "" {
			return nil, fmt.Errorf("discovery document: bad jwks_uri %s", showURL(d.JWKSURI))
		}
		if err := pol.checkParsed(u); err != nil {
			return nil, fmt.Errorf("discovery document jwks_uri: %w", err)
		}
		return &d, nil
	})
	if err != nil {
		return nil, err
	}
	return &discoveryResult{fetchResult: res.fetchResult, Doc: res.parsed}, nil
}

// parsedResult is a successful fetch with its parsed document; parsed is
// nil when NotModified.
type parsedResult[T any] struct {
	fetchResult
	parsed *T
}

// fetchParsed runs the attempts of one fetch under reg's retry policy: the
// whole fetch is bounded by Deadline, each attempt by AttemptTimeout, and
// only network errors, timeouts, 408, 429 and 5xx are retried, after an
// exponential backoff with jitter or the server's Retry-After.
//
// Each attempt has a span (jwkscache.fetch), a child of ctx's; discovery
// says which document is fetched.
//
// It is a function rather than a method because it is generic over the
// parsed document, so that no caller needs a type assertion.
func fetchParsed[T any](ctx context.Context, f *fetcher, reg *Registration, rawURL string, discovery bool, val validators, parse func([]byte) (*T, error)) (*parsedResult[T], error) {
	rp := &reg.Retry
	ctx, cancel := context.WithTimeout(ctx, rp.Deadline)
	defer cancel()
	var prev time.Duration
	for attempt := 1; ; attempt++ {
		res, fe := tracedAttempt(ctx, f, reg, rawURL, attempt, discovery, val, parse)
		if fe == nil {
			res.Attempts = attempt
			return res, nil
		}
		if attempt >= rp.attempts() || !fe.retryable() || ctx.Err() != nil {
			return nil, fe
		}
		wait := backoff(rp, attempt, prev)
		prev = wait
		if fe.RetryAfter > 0 {
			wait = fe.RetryAfter
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return nil, fe // the next attempt could not finish in time
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fe
		}
	}
}

// backoff returns the delay before retry number attempt (1-based), given
// the previous delay for decorrelated jitter.
func backoff(rp *RetryPolicy, attempt int, prev time.Duration) time.Duration {
	base := rp.InitialBackoff << min(attempt-1, 30)
	if base <= 0 || base > rp.MaxBackoff {
		base = rp.MaxBackoff
	}
	switch rp.Jitter {
	case JitterNone:
		return base
	case JitterDecorrelated:
		hi := max(prev*3, rp.InitialBackoff)
		d := rp.InitialBackoff + time.Duration(rand.Int64N(int64(hi-rp.InitialBackoff)+1))
		return min(d, rp.MaxBackoff)
	default: // full
		return time.Duration(rand.Int64N(int64(base) + 1))
	}
}

// retryable reports whether another attempt may succeed.
func (e *FetchError) retryable() bool {
	switch e.Class {
	case ClassNetwork, ClassTimeout:
		return !errors.Is(e.Err, context.Canceled)
	case ClassStatus:
		return e.StatusCode == http.StatusRequestTimeout || e.StatusCode == http.StatusTooManyRequests || e.StatusCode >= 500
	}
	return false
}

// attemptParsed performs one request. It returns a *FetchError (not an
// error) so that fetchParsed needs no type assertion.
func attemptParsed[T any](ctx context.Context, f *fetcher, reg *Registration, rawURL string, val validators, parse func([]byte) (*T, error)) (*parsedResult[T], *FetchError) {
	// Every URL and cause of a FetchError may carry upstream data (a
	// redirect target, a status line, a certificate's names, a parser
	// message): both are capped here, in one place.
	fail := func(u string, class ErrorClass, status int, err error) *FetchError {
		return &FetchError{TenantID: reg.TenantID, ProviderID: reg.ProviderID, URL: capText(u), Class: class, StatusCode: status, Err: capErr(err)}
	}
	ctx, cancel := context.WithTimeout(ctx, reg.Retry.AttemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, fail(rawURL, ClassNetwork, 0, err)
	}
	pol := f.policyFor(reg)
	if err := pol.checkParsed(req.URL); err != nil {
		return nil, fail(rawURL, ClassRedirect, 0, fmt.Errorf("%w: %w", errPolicyHop, err))
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	req.Header.Set("User-Agent", userAgent)
	// We ask for gzip ourselves so that the transport does not decompress
	// behind our back: the size cap must apply after decompression.
	req.Header.Set("Accept-Encoding", "gzip")
	conditional := val.ETag != "" || val.LastModified != ""
	if val.ETag != "" {
		req.Header.Set("If-None-Match", val.ETag)
	}
	if val.LastModified != "" {
		req.Header.Set("If-Modified-Since", val.LastModified)
	}
	pins := reg.pins()
	// hop is the absolute URL of the latest redirect target. When
	// CheckRedirect refuses a hop, the client reports the raw, possibly
	// relative, Location value instead, so errors use hop.
	var hop string
	client := &http.Client{
		Transport: f.transport(pins),
		CheckRedirect: func(next *http.Request, via []*http.Request) error {
			hop = next.URL.Redacted()
			if len(via) > reg.redirectLimit() {
				return fmt.Errorf("%w: stopped after %d redirects (maxRedirects %d)", errTooManyRedirects, len(via)-1, reg.redirectLimit())
			}
			if err := pol.checkParsed(next.URL); err != nil {
				return fmt.Errorf("%w: %w", errPolicyHop, err)
			}
			return nil
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		u := rawURL
		var ue *url.Error
		if errors.As(err, &ue) {
			u, err = ue.URL, ue.Err
		}
		if hop != "" {
			u = hop
		}
		return nil, fail(u, classify(err), 0, err)
	}
	defer resp.Body.Close()
	finalURL := resp.Request.URL.String()
	// The built-in transport checks pins during the handshake; a caller's
	// transport is checked here, and so is a response that did not come
	// over TLS at all (an http URL or redirect), where no pin can match.
	if len(pins) > 0 && (f.custom != nil || resp.TLS == nil) {
		if err := checkPinsOnResponse(resp.TLS, pins); err != nil {
			return nil, fail(finalURL, ClassPin, 0, err)
		}
	}
	now := time.Now()
	switch {
	case resp.StatusCode == http.StatusNotModified && conditional:
		fresh := computeFreshness(resp.Header, now, reg.MinTTL, reg.MaxTTL)
		nv := val
		if e := resp.Header.Get("ETag"); e != "" {
			nv.ETag = e
		}
		if lm := resp.Header.Get("Last-Modified"); lm != "" {
			nv.LastModified = lm
		}
		return &parsedResult[T]{fetchResult: fetchResult{NotModified: true, Validators: nv, Fresh: fresh, FetchedAt: now, URL: finalURL}}, nil
	case resp.StatusCode != http.StatusOK:
		// The status line is the server's text: shown capped.
		fe := fail(finalURL, ClassStatus, resp.StatusCode, fmt.Errorf("unexpected status %s", showID(resp.Status)))
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
			fe.RetryAfter = retryAfter(resp.Header.Get("Retry-After"), now)
		}
		return nil, fe
	}
	body, err := readBody(resp, reg.MaxResponseBytes)
	if err != nil {
		class := ClassTooLarge
		if !errors.Is(err, ErrTooLarge) {
			class = classify(err)
			if errors.Is(err, errBadEncoding) {
				class = ClassParse
			}
		}
		return nil, fail(finalURL, class, 0, err)
	}
	if ct := resp.Header.Get("Content-Type"); strings.HasPrefix(strings.ToLower(ct), "text/html") {
		return nil, fail(finalURL, ClassParse, 0, errHTML)
	}
	parsed, err := parse(body)
	if err != nil {
		class := ClassParse
		if errors.Is(err, ErrNoKeys) {
			class = ClassNoKeys
		}
		return nil, fail(finalURL, class, 0, err)
	}
	return &parsedResult[T]{
		fetchResult: fetchResult{
			Body:       body,
			Hash:       sha256.Sum256(body),
			Validators: validators{ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified")},
			Fresh:      computeFreshness(resp.Header, now, reg.MinTTL, reg.MaxTTL),
			FetchedAt:  now,
			URL:        finalURL,
		},
		parsed: parsed,
	}, nil
}

var (
	errBadEncoding      = errors.New("unsupported or corrupt Content-Encoding")
	errTooManyRedirects = errors.New("too many redirects")
)

// cappedError shows a long or invalid UTF-8 error text capped by capText,
// and still matches its cause with errors.Is and errors.As.
type cappedError struct{ err error }

func (e *cappedError) Error() string { return capText(e.err.Error()) }
func (e *cappedError) Unwrap() error { return e.err }

// capErr returns err, wrapped in a cappedError when its text needs capping.
func capErr(err error) error {
	if err == nil {
		return nil
	}
	if msg := err.Error(); len(msg) > maxErrorText || !utf8.ValidString(msg) {
		return &cappedError{err}
	}
	return err
}

// readBody reads at most limit bytes of body, counted both as received and
// after gzip decompression, so a small compressed bomb fails as soon as its
// output passes the limit.
func readBody(resp *http.Response, limit int64) ([]byte, error) {
	if resp.ContentLength > limit {
		return nil, fmt.Errorf("%w: Content-Length %d is over the limit of %d bytes", ErrTooLarge, resp.ContentLength, limit)
	}
	raw := &countingReader{r: io.LimitReader(resp.Body, limit+1)}
	var r io.Reader = raw
	switch ce := strings.ToLower(strings.TrimSpace(resp.Header.Get("Content-Encoding"))); ce {
	case "", "identity":
	case "gzip", "x-gzip":
		gz, err := gzip.NewReader(raw)
		if err != nil {
			if raw.n > limit {
				return nil, fmt.Errorf("%w: more than %d bytes received", ErrTooLarge, limit)
			}
			return nil, fmt.Errorf("%w: gzip: %v", errBadEncoding, err)
		}
		defer gz.Close()
		r = gz
	default:
		return nil, fmt.Errorf("%w: %s", errBadEncoding, showID(ce))
	}
	var buf bytes.Buffer
	_, err := buf.ReadFrom(io.LimitReader(r, limit+1))
	switch {
	case raw.n > limit:
		return nil, fmt.Errorf("%w: more than %d bytes received", ErrTooLarge, limit)
	case int64(buf.Len()) > limit:
		return nil, fmt.Errorf("%w: more than %d bytes after decompression", ErrTooLarge, limit)
	case err != nil && r != io.Reader(raw) && !isNetErr(err):
		return nil, fmt.Errorf("%w: gzip: %v", errBadEncoding, err)
	case err != nil:
		return nil, err
	}
	// The buffer grew in doublings; keep an exact copy, since snapshots
	// hold it for their lifetime (it counts with 100,000 providers).
	return bytes.Clone(buf.Bytes()), nil
}

func isNetErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// classify maps a transport error to its class.
func classify(err error) ErrorClass {
	var (
		blocked *blockedAddressError
		pin     *pinError
		ne      net.Error
		certErr *tls.CertificateVerificationError
		unk     x509.UnknownAuthorityError
		host    x509.HostnameError
		inv     x509.CertificateInvalidError
		rec     tls.RecordHeaderError
		alert   tls.AlertError
	)
	switch {
	case errors.As(err, &blocked):
		return ClassBlockedAddress
	case errors.As(err, &pin):
		return ClassPin
	case errors.Is(err, errPolicyHop), errors.Is(err, errTooManyRedirects):
		return ClassRedirect
	case errors.As(err, &certErr), errors.As(err, &unk), errors.As(err, &host), errors.As(err, &inv),
		errors.As(err, &rec), errors.As(err, &alert):
		return ClassTLS
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return ClassTimeout
	}
	return ClassNetwork
}

// Built-in transports, one per pin set.
//
// A connection verified against one provider's pins must never serve a
// provider with other pins, so each distinct pin set (a set: order and
// repetition do not matter) has its own *http.Transport, keyed by pinKey.
// The entries are reference counted by registration:
//
//   - acquirePins counts one more registration using the set (creating the
//     entry if needed); the engine calls it once per registered provider,
//     for the empty set too.
//   - releasePins counts one less; the entry whose count reaches zero is
//     removed from the map and its idle connections are closed.
//   - transport returns the entry's transport for a fetch. A set without an
//     entry (a fetch racing the unregistration of its provider, or a fetch
//     of a provider that was never acquired) gets a new uncounted entry
//     (users == 0), which the next acquirePins or releasePins prunes.
//
// Invariants: an entry with users > 0 has exactly that many registrations
// that acquired it and have not released it; an entry with users == 0 is
// listed in f.uncounted and exists only between the transport call that
// created it and the next acquirePins or releasePins. A transport is never
// broken for a fetch using it: "closing" is CloseIdleConnections, which
// drops idle connections only; a request in flight completes, and its
// connection, returned to the idle pool of a transport no longer in the
// map, is closed after IdleConnTimeout. With a caller's transport
// (Options.HTTPClient) there are no entries and acquirePins and
// releasePins do nothing.

// pinKey is the map key of a pin set: its distinct pins in byte order,
// concatenated.
func pinKey(pins [][32]byte) string {
	sorted := slices.Clone(pins)
	slices.SortFunc(sorted, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
	sorted = slices.Compact(sorted)
	var key strings.Builder
	key.Grow(len(sorted) * 32)
	for _, p := range sorted {
		key.Write(p[:])
	}
	return key.String()
}

// acquirePins records that one more registration uses the pin set pins.
func (f *fetcher) acquirePins(pins [][32]byte) {
	if f.custom != nil {
		return
	}
	key := pinKey(pins)
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.transports[key]
	if e == nil {
		e = &pinTransport{t: f.newTransport(pins)}
		f.transports[key] = e
	}
	e.users++
	delete(f.uncounted, key)
	f.pruneLocked()
}

// releasePins records that a registration using the pin set pins went
// away. When none is left, the transport's idle connections are closed and
// its entry is removed. Releasing a set that holds no count is a no-op
// (apart from pruning uncounted entries).
func (f *fetcher) releasePins(pins [][32]byte) {
	if f.custom != nil {
		return
	}
	key := pinKey(pins)
	f.mu.Lock()
	defer f.mu.Unlock()
	if e := f.transports[key]; e != nil && e.users > 0 {
		e.users--
		if e.users == 0 {
			f.uncounted[key] = struct{}{}
		}
	}
	f.pruneLocked()
}

// pruneLocked closes and removes every entry without users. f.mu is held.
func (f *fetcher) pruneLocked() {
	for k := range f.uncounted {
		if e := f.transports[k]; e != nil && e.users == 0 {
			e.t.CloseIdleConnections()
			delete(f.transports, k)
		}
		delete(f.uncounted, k)
	}
}

// transport returns the transport for a fetch with the pin set pins: the
// caller's, or the built-in one of the set (see above), created uncounted
// if the set has no entry. The result is always usable.
func (f *fetcher) transport(pins [][32]byte) http.RoundTripper {
	if f.custom != nil {
		return f.custom
	}
	key := pinKey(pins)
	f.mu.Lock()
	defer f.mu.Unlock()
	if e := f.transports[key]; e != nil {
		return e.t
	}
	e := &pinTransport{t: f.newTransport(pins)}
	f.transports[key] = e
	f.uncounted[key] = struct{}{}
	return e.t
}

// newTransport returns a new built-in transport that checks pins (when
// there are any) during the handshake.
func (f *fetcher) newTransport(pins [][32]byte) *http.Transport {
	tlsConf := &tls.Config{RootCAs: f.opts.RootCAs, MinVersion: tls.VersionTLS12}
	if len(pins) > 0 {
		pins := slices.Clone(pins)
		tlsConf.VerifyConnection = func(cs tls.ConnectionState) error {
			return matchPins(cs.VerifiedChains, pins)
		}
	}
	return &http.Transport{
		Proxy:             nil, // proxy environment variables are ignored
		DialContext:       f.dialer.DialContext,
		TLSClientConfig:   tlsConf,
		ForceAttemptHTTP2: true,
		// Many providers often share one IdP host (one URL per tenant),
		// and the refresh workers fetch in parallel: keep enough idle
		// connections that each fetch does not pay a TLS handshake.
		MaxIdleConns:           256,
		MaxIdleConnsPerHost:    max(2*f.opts.RefreshWorkers, 16),
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
	}
}

// pinError is an SPKI pin mismatch.
type pinError struct{ msg string }

func (e *pinError) Error() string { return e.msg }

// matchPins accepts the connection when any certificate of any verified
// chain has a SubjectPublicKeyInfo whose SHA-256 equals a pin.
func matchPins(chains [][]*x509.Certificate, pins [][32]byte) error {
	for _, chain := range chains {
		for _, c := range chain {
			sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
			for _, p := range pins {
				if sum == p {
					return nil
				}
			}
		}
	}
	return &pinError{"no certificate of the verified chain matches a pinned SPKI digest"}
}

// checkPinsOnResponse applies pins to the TLS state a caller-supplied
// transport reports. Without verified chains only the leaf, whose key the
// handshake proved, is trusted for matching.
func checkPinsOnResponse(cs *tls.ConnectionState, pins [][32]byte) error {
	if cs == nil {
		return &pinError{"SPKI pins are set but the response did not come over TLS"}
	}
	if len(cs.VerifiedChains) > 0 {
		return matchPins(cs.VerifiedChains, pins)
	}
	if len(cs.PeerCertificates) == 0 {
		return &pinError{"SPKI pins are set but the server presented no certificate"}
	}
	return matchPins([][]*x509.Certificate{cs.PeerCertificates[:1]}, pins)
}

// blockedAddressError is a dial refused by the address policy.
type blockedAddressError struct {
	addr   netip.Addr
	reason string
}

func (e *blockedAddressError) Error() string {
	return fmt.Sprintf("address %s is %s and not within Options.AllowedAddresses", e.addr, e.reason)
}

func (e *blockedAddressError) Is(target error) bool { return target == ErrSecurityPolicy }

// guardDial is the dialer's Control function. It runs after DNS resolution
// with the address actually being dialled, so a name that resolves (or
// re-resolves, in a DNS rebinding attack) to a refused address fails.
func (f *fetcher) guardDial(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return &blockedAddressError{reason: "unparseable (" + address + ")"}
	}
	return checkAddr(ap.Addr(), f.opts.AllowedAddresses)
}

// blockedRanges are refused by the dial guard: they reach the machine itself,
// its private networks, cloud metadata services, local infrastructure or
// nothing at all, rather than a public IdP.
//
// The list holds every entry of the IANA IPv4 and IPv6 Special-Purpose
// Address Registries (RFC 6890 and its updates, through RFC 9637 and the
// IPv6 dummy prefix), plus multicast, IPv4-compatible and site-local IPv6
// from the address space registries. Entries with "Globally Reachable =
// False" (or N/A) are blocked as a matter of course. The globally reachable
// ones are blocked too, each for the reason noted: none of them can host an
// identity provider, and several reach a nearby device rather than a
// distant server. More specific entries come first, so that the reason
// names the exact registry entry. Beyond the list, checkAddr refuses IPv6
// outside 2000::/3, the only space IANA allocates for global unicast.
var blockedRanges = func() []struct {
	p      netip.Prefix
	reason string
} {
	list := []struct{ cidr, reason string }{
		// IANA IPv4 Special-Purpose Address Registry.
		{"0.0.0.0/32", "\"this host on this network\" (RFC 1122)"},
		{"0.0.0.0/8", "in the \"this network\" range (RFC 791)"},
		{"10.0.0.0/8", "private (RFC 1918)"},
		{"100.64.0.0/10", "carrier-grade NAT shared space (RFC 6598)"},
		{"127.0.0.0/8", "loopback"},
		{"169.254.0.0/16", "link-local (includes the 169.254.169.254 metadata service)"},
		{"172.16.0.0/12", "private (RFC 1918)"},
		{"192.0.0.0/29", "the IPv4 service continuity prefix (DS-Lite, RFC 7335)"},
		{"192.0.0.8/32", "the IPv4 dummy address (RFC 7600)"},
		// Globally reachable, blocked: the PCP anycast address reaches the
		// nearest PCP server, typically the site's own NAT gateway.
		{"192.0.0.9/32", "the PCP anycast address (RFC 7723)"},
		// Globally reachable, blocked: reaches the nearest TURN server, an
		// operator's relay, never an IdP.
		{"192.0.0.10/32", "the TURN anycast address (RFC 8155)"},
		{"192.0.0.170/31", "NAT64/DNS64 discovery (RFC 7050)"},
		{"192.0.0.0/24", "IETF protocol assignments (RFC 6890)"},
		{"192.0.2.0/24", "documentation (TEST-NET-1, RFC 5737)"},
		// Globally reachable, blocked: AS112 instances are anycast DNS sinks
		// for reverse lookups of private space, often run inside the local
		// network; they serve no HTTPS.
		{"192.31.196.0/24", "AS112 DNS (RFC 7535)"},
		// Globally reachable, blocked: anycast relays of Automatic Multicast
		// Tunneling, not web servers.
		{"192.52.193.0/24", "AMT relay anycast (RFC 7450)"},
		// Includes 192.88.99.2/32, the 6a44 relay anycast address (RFC 6751).
		{"192.88.99.0/24", "deprecated 6to4 relay anycast (RFC 7526)"},
		{"192.168.0.0/16", "private (RFC 1918)"},
		// Globally reachable, blocked: as 192.31.196.0/24.
		{"192.175.48.0/24", "AS112 direct delegation DNS (RFC 7534)"},
		{"198.18.0.0/15", "benchmarking (RFC 2544)"},
		{"198.51.100.0/24", "documentation (TEST-NET-2, RFC 5737)"},
		{"203.0.113.0/24", "documentation (TEST-NET-3, RFC 5737)"},
		{"255.255.255.255/32", "limited broadcast (RFC 919)"},
		{"240.0.0.0/4", "reserved (RFC 1112)"},
		// IPv4 multicast (its own registry).
		{"224.0.0.0/4", "multicast"},

		// IANA IPv6 Special-Purpose Address Registry.
		{"::/128", "unspecified"},
		{"::1/128", "loopback"},
		{"::ffff:0:0/96", "IPv4-mapped IPv6"},
		// Globally reachable, blocked: the translator is local, and an
		// address can embed any IPv4 address, private ones included,
		// where this check cannot see it. (RFC 6052 forbids embedding
		// non-global addresses; a hostile DNS answer does not care.) An
		// IPv6-only deployment behind DNS64 must list the prefix in
		// Options.AllowedAddresses.
		{"64:ff9b::/96", "NAT64 (RFC 6052)"},
		{"64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"},
		{"100::/64", "discard-only (RFC 6666)"},
		// draft-ietf-v6ops-dummy-ipv6-prefix; registered in 2025.
		{"100:0:0:1::/64", "the dummy IPv6 prefix"},
		{"2001::/32", "Teredo (tunnels to IPv4, RFC 4380)"},
		// Globally reachable, blocked: as 192.0.0.9 and 192.0.0.10.
		{"2001:1::1/128", "the PCP anycast address (RFC 7723)"},
		{"2001:1::2/128", "the TURN anycast address (RFC 8155)"},
		// Globally reachable, blocked: the anycast address of the DNS-SD
		// registration protocol reaches a local registrar.
		{"2001:1::3/128", "the DNS-SD SRP anycast address (RFC 9665)"},
		{"2001:2::/48", "benchmarking (RFC 5180)"},
		// Globally reachable, blocked: as 192.52.193.0/24.
		{"2001:3::/32", "AMT (RFC 7450)"},
		// Globally reachable, blocked: as 192.31.196.0/24.
		{"2001:4:112::/48", "AS112 DNS (RFC 7535)"},
		{"2001:10::/28", "deprecated ORCHID (RFC 4843)"},
		// Globally reachable, blocked: ORCHIDs and DETs are identifiers
		// (HIP host identities, drone remote IDs), not locators of servers.
		{"2001:20::/28", "ORCHIDv2 identifiers (RFC 7343)"},
		{"2001:30::/28", "drone remote ID entity tags (RFC 9374)"},
		{"2001::/23", "IETF protocol assignments (RFC 2928)"},
		{"2001:db8::/32", "documentation (RFC 3849)"},
		{"2002::/16", "6to4 (tunnels to IPv4, RFC 3056)"},
		// Globally reachable, blocked: as 192.31.196.0/24.
		{"2620:4f:8000::/48", "AS112 direct delegation DNS (RFC 7534)"},
		{"3fff::/20", "documentation (RFC 9637)"},
		{"5f00::/16", "SRv6 segment identifiers (RFC 9602)"},
		{"fc00::/7", "unique local (ULA)"},
		{"fe80::/10", "link-local"},
		// From the IPv6 address space registries, not the special-purpose
		// one: deprecated forms that still reach IPv4 or a local site.
		{"::/96", "IPv4-compatible IPv6 (deprecated, RFC 4291)"},
		{"fec0::/10", "site-local (deprecated, RFC 3879)"},
		{"ff00::/8", "multicast"},
	}
	out := make([]struct {
		p      netip.Prefix
		reason string
	}, len(list))
	for i, r := range list {
		out[i].p = netip.MustParsePrefix(r.cidr)
		out[i].reason = r.reason
	}
	return out
}()

// globalUnicast6 is the IPv6 global unicast space (RFC 4291 section 2.4,
// IANA IPv6 Address Space): the rest is reserved by the IETF, or special.
var globalUnicast6 = netip.MustParsePrefix("2000::/3")

// checkAddr applies the address policy to one resolved address.
func checkAddr(a netip.Addr, allowed []netip.Prefix) error {
	for _, p := range allowed {
		if p.Contains(a) {
			return nil
		}
	}
	if a.Zone() != "" {
		return &blockedAddressError{addr: a, reason: "scoped (has a zone)"}
	}
	for _, r := range blockedRanges {
		if r.p.Contains(a) {
			return &blockedAddressError{addr: a, reason: r.reason}
		}
	}
	if a.Is6() && !globalUnicast6.Contains(a) {
		return &blockedAddressError{addr: a, reason: "outside the IPv6 global unicast space 2000::/3"}
	}
	return nil
}

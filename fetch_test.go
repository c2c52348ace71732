package jwkscache

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"testing/synctest"
	"time"
	"unicode/utf8"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

// Tests of the secure fetcher. Every test runs against a loopback server
// (real TLS unless stated otherwise) or the in-memory RoundTripper of
// internal/testidp; none touches the internet.

const jwksPath = testidp.DefaultPath

// loopbackPrefixes lets the dial guard and the URL policy through to the
// loopback test servers.
var loopbackPrefixes = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
}

// tlsIdP returns the default IdP (rsa-1, ec-1, ed-1, max-age=300) served
// over TLS on 127.0.0.1.
func tlsIdP(t *testing.T) (*testidp.IdP, *httptest.Server) {
	t.Helper()
	idp, _ := testidp.NewDefault()
	return idp, idp.StartTLS(t)
}

// tlsOptions trusts idp's CA and lets the dial guard through to loopback.
func tlsOptions(idp *testidp.IdP) Options {
	return Options{RootCAs: idp.CertPool(), AllowedAddresses: loopbackPrefixes}
}

// newTestFetcher returns a fetcher for opts, closed when the test ends.
func newTestFetcher(t *testing.T, opts Options) *fetcher {
	t.Helper()
	f := newFetcher(opts.withDefaults())
	t.Cleanup(f.close)
	return f
}

// testReg returns the registration acme/auth0, after mutate, with defaults
// applied, and fails the test unless it passes validation under f's
// policy. Its JWKSURL is https://idp.test/jwks.json unless mutate changes
// it: tests pass the URL to fetch separately, as the Manager does with a
// discovered jwks_uri, so that a registration can be valid while the URL
// under test is not.
func testReg(t *testing.T, f *fetcher, mutate func(*Registration)) *Registration {
	t.Helper()
	r := Registration{TenantID: "acme", ProviderID: "auth0", JWKSURL: "https://idp.test/jwks.json"}
	if mutate != nil {
		mutate(&r)
	}
	d := r.WithDefaults()
	if err := d.validate(f.policyFor(&d)); err != nil {
		t.Fatalf("test registration does not validate: %v", err)
	}
	return &d
}

// fastRetry keeps the default MaxRetries (2, so 3 attempts) but waits only
// 1ms between attempts, for real-time tests of retried faults.
var fastRetry = RetryPolicy{InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}

func portOf(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	return strconv.Itoa(srv.Listener.Addr().(*net.TCPAddr).Port)
}

// wantFetchError fails the test unless err is a *FetchError of class for
// acme/auth0, and returns it.
func wantFetchError(t *testing.T, err error, class ErrorClass) *FetchError {
	t.Helper()
	var fe *FetchError
	if !errors.As(err, &fe) {
		t.Fatalf("error = %v (%T), want a *FetchError of class %s", err, err, class)
	}
	if fe.Class != class {
		t.Fatalf("class = %q, want %q; error: %v", fe.Class, class, err)
	}
	if fe.TenantID != "acme" || fe.ProviderID != "auth0" {
		t.Errorf("error names %s/%s, want acme/auth0", fe.TenantID, fe.ProviderID)
	}
	return fe
}

// wantIs checks errors.Is(err, target) for each target against want.
func wantIs(t *testing.T, err error, want bool, targets ...error) {
	t.Helper()
	for _, target := range targets {
		if got := errors.Is(err, target); got != want {
			t.Errorf("errors.Is(err, %v) = %v, want %v; error: %v", target, got, want, err)
		}
	}
}

func mustFetchKeys(t *testing.T, f *fetcher, reg *Registration, rawURL string, val validators) *keysResult {
	t.Helper()
	res, err := f.fetchKeys(t.Context(), reg, rawURL, val)
	if err != nil {
		t.Fatalf("fetchKeys(%s): %v", rawURL, err)
	}
	return res
}

func wantKeys(t *testing.T, res *keysResult, n int) {
	t.Helper()
	if res.NotModified {
		t.Fatalf("NotModified, want a new document")
	}
	if res.Keys == nil || len(res.Keys.keys) != n {
		t.Fatalf("keys = %v, want %d usable keys", res.Keys, n)
	}
}

func TestFetchHTTPSSucceeds(t *testing.T) {
	idp, srv := tlsIdP(t)
	f := newTestFetcher(t, tlsOptions(idp))
	reg := testReg(t, f, nil)
	u := srv.URL + jwksPath
	res := mustFetchKeys(t, f, reg, u, validators{})
	wantKeys(t, res, 3)
	if res.URL != u || res.Attempts != 1 {
		t.Errorf("URL, Attempts = %q, %d; want %q, 1", res.URL, res.Attempts, u)
	}
	if res.Hash != sha256.Sum256(res.Body) || len(res.Body) == 0 {
		t.Errorf("Hash does not match Body")
	}
	if res.Validators.ETag == "" || res.Validators.ETag != idp.ETag(jwksPath) {
		t.Errorf("ETag = %q, want %q", res.Validators.ETag, idp.ETag(jwksPath))
	}
	if res.Fresh.TTL != 300*time.Second || res.Fresh.Source != "max-age" {
		t.Errorf("freshness = %+v, want 300s from max-age", res.Fresh)
	}
	if time.Since(res.FetchedAt) > time.Minute {
		t.Errorf("FetchedAt = %v", res.FetchedAt)
	}
	if n := idp.Requests(jwksPath); n != 1 {
		t.Errorf("IdP saw %d requests, want 1", n)
	}
}

// TestFetchHTTPRefusedUnlessBothAllow: http needs AllowHTTP on both the
// Options and the Registration; https needs neither.
func TestFetchHTTPRefusedUnlessBothAllow(t *testing.T) {
	idp, tlsSrv := tlsIdP(t)
	plain := idp.Start(t)
	for _, c := range []struct {
		optHTTP, regHTTP bool
	}{{false, false}, {true, false}, {false, true}, {true, true}} {
		name := "options=" + strconv.FormatBool(c.optHTTP) + ",registration=" + strconv.FormatBool(c.regHTTP)
		t.Run(name, func(t *testing.T) {
			opts := tlsOptions(idp)
			opts.AllowHTTP = c.optHTTP
			f := newTestFetcher(t, opts)
			reg := testReg(t, f, func(r *Registration) { r.AllowHTTP = c.regHTTP })

			// https always works.
			wantKeys(t, mustFetchKeys(t, f, reg, tlsSrv.URL+jwksPath, validators{}), 3)

			before := idp.Requests(jwksPath)
			res, err := f.fetchKeys(t.Context(), reg, plain.URL+jwksPath, validators{})
			if c.optHTTP && c.regHTTP {
				if err != nil {
					t.Fatalf("plain http with AllowHTTP on both sides: %v", err)
				}
				wantKeys(t, res, 3)
				return
			}
			wantFetchError(t, err, ClassRedirect)
			wantIs(t, err, true, ErrSecurityPolicy)
			wantIs(t, err, false, ErrUpstream)
			if !strings.Contains(err.Error(), "http is refused") {
				t.Errorf("error does not explain the refusal: %v", err)
			}
			if n := idp.Requests(jwksPath) - before; n != 0 {
				t.Errorf("refused http URL reached the IdP %d times", n)
			}
		})
	}
}

// TestFetchDomainAllowlist: a host outside Options.AllowedDomains or
// Registration.AllowedDomains is refused before any connection.
func TestFetchDomainAllowlist(t *testing.T) {
	idp, srv := tlsIdP(t)
	local := "https://localhost:" + portOf(t, srv) + jwksPath
	for _, c := range []struct {
		name       string
		optDomains []string
		regDomains []string
		url        string
		ok         bool
	}{
		{"options refuse IP host", []string{"idp.test"}, nil, srv.URL + jwksPath, false},
		{"registration refuses IP host", nil, []string{"idp.test"}, srv.URL + jwksPath, false},
		{"options refuse localhost", []string{"idp.test"}, []string{"idp.test", "localhost"}, local, false},
		{"registration refuses localhost", []string{"idp.test", "localhost"}, []string{"idp.test"}, local, false},
		{"both allow localhost", []string{"idp.test", "localhost"}, []string{"idp.test", "localhost"}, local, true},
		{"options allow localhost", []string{"idp.test", "localhost"}, nil, local, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts := tlsOptions(idp)
			opts.AllowedDomains = c.optDomains
			f := newTestFetcher(t, opts)
			reg := testReg(t, f, func(r *Registration) { r.AllowedDomains = c.regDomains })
			before := idp.Requests(jwksPath)
			res, err := f.fetchKeys(t.Context(), reg, c.url, validators{})
			if c.ok {
				if err != nil {
					t.Fatal(err)
				}
				wantKeys(t, res, 3)
				return
			}
			fe := wantFetchError(t, err, ClassRedirect)
			wantIs(t, err, true, ErrSecurityPolicy)
			wantIs(t, err, false, ErrUpstream)
			if fe.URL != c.url || !strings.Contains(err.Error(), "outside the allowed domains") {
				t.Errorf("error = %v (URL %q)", err, fe.URL)
			}
			if n := idp.Requests(jwksPath) - before; n != 0 {
				t.Errorf("refused host reached the IdP %d times", n)
			}
		})
	}
}

func TestFetchRedirects(t *testing.T) {
	idp, srv := tlsIdP(t)
	plain := idp.Start(t)
	// /r0 -> /r1 -> /r2 -> /r3 -> /jwks.json
	idp.SetRedirect("/r3", jwksPath)
	idp.SetRedirect("/r2", "/r3")
	idp.SetRedirect("/r1", "/r2")
	idp.SetRedirect("/r0", "/r1")
	final := srv.URL + jwksPath

	t.Run("within limit followed", func(t *testing.T) {
		f := newTestFetcher(t, tlsOptions(idp))
		res := mustFetchKeys(t, f, testReg(t, f, nil), srv.URL+"/r1", validators{}) // 3 hops, default limit 3
		wantKeys(t, res, 3)
		if res.URL != final {
			t.Errorf("result URL = %q, want the final URL %q", res.URL, final)
		}
		reg1 := testReg(t, f, func(r *Registration) { r.MaxRedirects = 1 })
		if res := mustFetchKeys(t, f, reg1, srv.URL+"/r3", validators{}); res.URL != final {
			t.Errorf("result URL = %q, want %q", res.URL, final)
		}
	})

	t.Run("beyond limit refused", func(t *testing.T) {
		f := newTestFetcher(t, tlsOptions(idp))
		before := idp.Requests(jwksPath)
		_, err := f.fetchKeys(t.Context(), testReg(t, f, nil), srv.URL+"/r0", validators{}) // 4 hops
		fe := wantFetchError(t, err, ClassRedirect)
		wantIs(t, err, true, ErrUpstream, errTooManyRedirects)
		wantIs(t, err, false, ErrSecurityPolicy)
		if fe.URL != final {
			t.Errorf("URL = %q, want the refused hop %q", fe.URL, final)
		}
		if n := idp.Requests(jwksPath) - before; n != 0 {
			t.Errorf("the hop beyond the limit was requested %d times", n)
		}
		// Too many redirects is not retried.
		if n := idp.Requests("/r0"); n != 1 {
			t.Errorf("/r0 requested %d times, want 1", n)
		}
	})

	t.Run("MaxRedirects -1 follows none", func(t *testing.T) {
		f := newTestFetcher(t, tlsOptions(idp))
		reg := testReg(t, f, func(r *Registration) { r.MaxRedirects = -1 })
		before := idp.Requests(jwksPath)
		_, err := f.fetchKeys(t.Context(), reg, srv.URL+"/r3", validators{})
		wantFetchError(t, err, ClassRedirect)
		wantIs(t, err, true, ErrUpstream)
		if n := idp.Requests(jwksPath) - before; n != 0 {
			t.Errorf("redirect followed %d times with MaxRedirects -1", n)
		}
	})

	t.Run("to http refused", func(t *testing.T) {
		idp.SetRedirect("/to-http", plain.URL+jwksPath)
		f := newTestFetcher(t, tlsOptions(idp))
		before := idp.Requests(jwksPath)
		_, err := f.fetchKeys(t.Context(), testReg(t, f, nil), srv.URL+"/to-http", validators{})
		fe := wantFetchError(t, err, ClassRedirect)
		wantIs(t, err, true, ErrSecurityPolicy)
		wantIs(t, err, false, ErrUpstream)
		if fe.URL != plain.URL+jwksPath {
			t.Errorf("URL = %q, want the refused hop", fe.URL)
		}
		if n := idp.Requests(jwksPath) - before; n != 0 {
			t.Errorf("http hop requested %d times", n)
		}
	})

	t.Run("to host outside allowlist refused", func(t *testing.T) {
		idp.SetRedirect("/to-other", "https://other.example:"+portOf(t, srv)+jwksPath)
		start := "https://localhost:" + portOf(t, srv) + "/to-other"
		for _, c := range []struct {
			name     string
			opt, reg []string
		}{
			{"options", []string{"idp.test", "localhost"}, nil},
			{"registration", nil, []string{"idp.test", "localhost"}},
		} {
			t.Run(c.name, func(t *testing.T) {
				opts := tlsOptions(idp)
				opts.AllowedDomains = c.opt
				f := newTestFetcher(t, opts)
				reg := testReg(t, f, func(r *Registration) { r.AllowedDomains = c.reg })
				before := idp.Requests("/to-other")
				_, err := f.fetchKeys(t.Context(), reg, start, validators{})
				fe := wantFetchError(t, err, ClassRedirect)
				wantIs(t, err, true, ErrSecurityPolicy)
				wantIs(t, err, false, ErrUpstream)
				if !strings.Contains(fe.URL, "other.example") {
					t.Errorf("URL = %q, want the refused hop", fe.URL)
				}
				if n := idp.Requests("/to-other") - before; n != 1 {
					t.Errorf("start URL requested %d times, want 1", n)
				}
			})
		}
	})

	t.Run("to IP literal outside AllowedAddresses refused", func(t *testing.T) {
		// An IP-literal hop is refused by the URL policy before any dial.
		idp.SetRedirect("/to-v6", "https://[::1]:"+portOf(t, srv)+jwksPath)
		opts := tlsOptions(idp)
		opts.AllowedAddresses = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		f := newTestFetcher(t, opts)
		before := idp.Requests(jwksPath)
		_, err := f.fetchKeys(t.Context(), testReg(t, f, nil), srv.URL+"/to-v6", validators{})
		wantFetchError(t, err, ClassRedirect)
		wantIs(t, err, true, ErrSecurityPolicy)
		if n := idp.Requests(jwksPath) - before; n != 0 {
			t.Errorf("refused hop requested %d times", n)
		}
	})
}

// selfSignedCert returns a self-signed server certificate for ip that can
// serve as its own trust root.
func selfSignedCert(t *testing.T, ip net.IP) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "front"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{ip},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, cert
}

// TestFetchRedirectToBlockedAddress: a redirect hop whose host name passes
// the URL policy but resolves to a refused address is stopped by the dial
// guard. The first hop is an https server on 127.0.0.2 (the only allowed
// address); it redirects to https://localhost:PORT, which resolves to
// 127.0.0.1 (and maybe ::1), both refused.
func TestFetchRedirectToBlockedAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.2 (not Linux?): %v", err)
	}
	idp, srv := tlsIdP(t)
	target := "https://localhost:" + portOf(t, srv) + jwksPath

	cert, root := selfSignedCert(t, net.IPv4(127, 0, 0, 2))
	var frontHits sync.Map
	front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		frontHits.Store(r.URL.Path, true)
		http.Redirect(w, r, target, http.StatusFound)
	}))
	front.Listener.Close()
	front.Listener = ln
	front.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	front.StartTLS()
	t.Cleanup(front.Close)

	pool := idp.CertPool()
	pool.AddCert(root)
	f := newTestFetcher(t, Options{
		RootCAs:          pool,
		AllowedAddresses: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
	})
	_, err = f.fetchKeys(t.Context(), testReg(t, f, nil), front.URL+"/start", validators{})
	fe := wantFetchError(t, err, ClassBlockedAddress)
	wantIs(t, err, true, ErrSecurityPolicy)
	wantIs(t, err, false, ErrUpstream)
	if fe.URL != target {
		t.Errorf("URL = %q, want the blocked hop %q", fe.URL, target)
	}
	if _, ok := frontHits.Load("/start"); !ok {
		t.Errorf("the allowed first hop was not requested")
	}
	if n := idp.TotalRequests(); n != 0 {
		t.Errorf("blocked hop reached the IdP %d times", n)
	}
}

// TestFetchDialGuardLocalhost: "localhost" passes the URL policy (it is a
// name, not an IP literal) but resolves to loopback, which the dial guard
// refuses unless AllowedAddresses covers it.
func TestFetchDialGuardLocalhost(t *testing.T) {
	idp, srv := tlsIdP(t)
	u := "https://localhost:" + portOf(t, srv) + jwksPath

	f := newTestFetcher(t, Options{RootCAs: idp.CertPool()})
	reg := testReg(t, f, nil)
	_, err := f.fetchKeys(t.Context(), reg, u, validators{})
	fe := wantFetchError(t, err, ClassBlockedAddress)
	wantIs(t, err, true, ErrSecurityPolicy)
	wantIs(t, err, false, ErrUpstream)
	if fe.URL != u || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("error = %v", err)
	}
	if n := idp.TotalRequests(); n != 0 {
		t.Errorf("blocked address reached the IdP %d times", n)
	}

	f = newTestFetcher(t, tlsOptions(idp))
	res := mustFetchKeys(t, f, testReg(t, f, nil), u, validators{})
	wantKeys(t, res, 3)
	if res.URL != u {
		t.Errorf("URL = %q, want %q", res.URL, u)
	}
}

func TestCheckAddr(t *testing.T) {
	refused := []string{
		"127.0.0.1", "127.255.255.254", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
		"169.254.169.254", "100.64.0.1", "::1", "fc00::1", "fd12:3456::1", "fe80::1", "fe80::1%eth0",
		"::ffff:127.0.0.1", "::ffff:8.8.8.8", "224.0.0.1", "ff02::1", "0.0.0.0", "::",
		"255.255.255.255", "240.0.0.1", "198.18.0.1", "192.0.0.170", "64:ff9b::808:808",
		"2002:a00:1::1", "2001:0:4136:e378::1", "2001:db8::1", "192.0.2.1", "198.51.100.7", "203.0.113.9",
	}
	allowed := []string{"8.8.8.8", "1.1.1.1", "2606:4700::1111", "172.32.0.1", "100.128.0.1", "11.0.0.1", "2001:4860:4860::8888"}
	for _, s := range refused {
		err := checkAddr(netip.MustParseAddr(s), nil)
		var be *blockedAddressError
		if !errors.As(err, &be) {
			t.Errorf("checkAddr(%s) = %v, want a blockedAddressError", s, err)
			continue
		}
		if !errors.Is(err, ErrSecurityPolicy) || be.reason == "" || !strings.Contains(err.Error(), s) {
			t.Errorf("checkAddr(%s) error %q: want ErrSecurityPolicy, a reason and the address", s, err)
		}
	}
	for _, s := range allowed {
		if err := checkAddr(netip.MustParseAddr(s), nil); err != nil {
			t.Errorf("checkAddr(%s) = %v, want nil", s, err)
		}
	}
	// Allowlisted prefixes let exactly their addresses through.
	allow := []netip.Prefix{
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("::1/128"),
		netip.MustParsePrefix("fe80::/10"),
	}
	for s, want := range map[string]bool{
		"127.0.0.1": true, "127.9.9.9": true, "10.1.2.3": true, "::1": true, "fe80::1": true,
		"10.2.0.1": false, "192.168.1.1": false, "169.254.169.254": false, "fc00::1": false,
		"fe80::1%eth0": false, // a zoned address never matches a prefix
		"8.8.8.8":      true,
	} {
		if got := checkAddr(netip.MustParseAddr(s), allow) == nil; got != want {
			t.Errorf("checkAddr(%s, allowlist) allowed = %v, want %v", s, got, want)
		}
	}
}

func TestDialGuardAddr(t *testing.T) {
	f := newFetcher(Options{})
	for addr, ok := range map[string]bool{
		"127.0.0.1:443": false, "[::1]:443": false, "169.254.169.254:80": false,
		"8.8.8.8:443": true, "[2606:4700::1111]:443": true,
		"not-an-address": false,
	} {
		err := f.guardDial("tcp", addr, nil)
		if (err == nil) != ok {
			t.Errorf("guardDial(%s) = %v, want allowed %v", addr, err, ok)
		}
		if err != nil && classify(err) != ClassBlockedAddress {
			t.Errorf("guardDial(%s) error classified %s", addr, classify(err))
		}
	}
	f = newFetcher(Options{AllowedAddresses: loopbackPrefixes})
	if err := f.guardDial("tcp", "127.0.0.1:443", nil); err != nil {
		t.Errorf("allowlisted loopback refused: %v", err)
	}
	if err := f.guardDial("tcp", "10.0.0.1:443", nil); err == nil {
		t.Errorf("private address allowed by a loopback allowlist")
	}
}

// pinForms returns pin in standard and URL-safe base64, padded and not.
func pinForms(pin string) map[string]string {
	raw := strings.TrimRight(pin, "=")
	urlSafe := strings.NewReplacer("+", "-", "/", "_")
	return map[string]string{
		"std padded":      pin,
		"std unpadded":    raw,
		"url-safe padded": urlSafe.Replace(pin),
		"url-safe raw":    urlSafe.Replace(raw),
	}
}

var wrongPin = func() string {
	sum := sha256.Sum256([]byte("not the key"))
	return base64.StdEncoding.EncodeToString(sum[:])
}()

func TestFetchPins(t *testing.T) {
	idp, srv := tlsIdP(t)
	u := srv.URL + jwksPath
	leafPin, caPin := testidp.SPKIPin(idp.Leaf()), testidp.SPKIPin(idp.CA())

	t.Run("wrong pin refused", func(t *testing.T) {
		f := newTestFetcher(t, tlsOptions(idp))
		reg := testReg(t, f, func(r *Registration) { r.PinnedSPKI = []string{wrongPin} })
		before := idp.TotalRequests()
		_, err := f.fetchKeys(t.Context(), reg, u, validators{})
		wantFetchError(t, err, ClassPin)
		wantIs(t, err, true, ErrSecurityPolicy)
		wantIs(t, err, false, ErrUpstream)
		if n := idp.TotalRequests() - before; n != 0 {
			t.Errorf("%d requests reached the handler through a refused pin", n)
		}
	})

	accepted := map[string][]string{
		"leaf":              {leafPin},
		"CA":                {caPin},
		"one of several":    {wrongPin, caPin},
		"url-safe leaf raw": {pinForms(leafPin)["url-safe raw"]},
	}
	for form, p := range pinForms(caPin) {
		accepted["CA "+form] = []string{p}
	}
	for name, pins := range accepted {
		t.Run(name, func(t *testing.T) {
			f := newTestFetcher(t, tlsOptions(idp))
			reg := testReg(t, f, func(r *Registration) { r.PinnedSPKI = pins })
			wantKeys(t, mustFetchKeys(t, f, reg, u, validators{}), 3)
		})
	}

	t.Run("connections are not shared across pin sets", func(t *testing.T) {
		f := newTestFetcher(t, tlsOptions(idp))
		good := testReg(t, f, func(r *Registration) { r.PinnedSPKI = []string{leafPin} })
		bad := testReg(t, f, func(r *Registration) { r.PinnedSPKI = []string{wrongPin} })
		none := testReg(t, f, nil)
		wantKeys(t, mustFetchKeys(t, f, good, u, validators{}), 3) // leaves an idle verified connection
		_, err := f.fetchKeys(t.Context(), bad, u, validators{})
		wantFetchError(t, err, ClassPin)
		wantKeys(t, mustFetchKeys(t, f, none, u, validators{}), 3)
		wantKeys(t, mustFetchKeys(t, f, good, u, validators{}), 3)
	})
}

// TestFetchPinsCustomTransport: with Options.HTTPClient the caller's
// transport does TLS, so pins are checked on resp.TLS after the response
// arrives (the request does reach the server).
func TestFetchPinsCustomTransport(t *testing.T) {
	idp, srv := tlsIdP(t)
	u := srv.URL + jwksPath
	leafPin, caPin := testidp.SPKIPin(idp.Leaf()), testidp.SPKIPin(idp.CA())

	verifying := srv.Client().Transport.(*http.Transport).Clone()
	verifying.TLSClientConfig.RootCAs = idp.CertPool()
	t.Cleanup(verifying.CloseIdleConnections)
	// Without verification the transport reports no verified chains: then
	// only the leaf, whose key the handshake proved, may match a pin.
	unverified := srv.Client().Transport.(*http.Transport).Clone()
	unverified.TLSClientConfig.RootCAs = nil
	unverified.TLSClientConfig.InsecureSkipVerify = true
	t.Cleanup(unverified.CloseIdleConnections)

	for _, c := range []struct {
		name string
		tr   http.RoundTripper
		pins []string
		ok   bool
	}{
		{"verified wrong pin", verifying, []string{wrongPin}, false},
		{"verified leaf pin", verifying, []string{leafPin}, true},
		{"verified CA pin", verifying, []string{caPin}, true},
		{"verified url-safe raw CA pin", verifying, []string{pinForms(caPin)["url-safe raw"]}, true},
		{"unverified leaf pin", unverified, []string{leafPin}, true},
		{"unverified CA pin", unverified, []string{caPin}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newTestFetcher(t, Options{HTTPClient: &http.Client{Transport: c.tr}, AllowedAddresses: loopbackPrefixes})
			reg := testReg(t, f, func(r *Registration) { r.PinnedSPKI = c.pins })
			res, err := f.fetchKeys(t.Context(), reg, u, validators{})
			if c.ok {
				if err != nil {
					t.Fatal(err)
				}
				wantKeys(t, res, 3)
				return
			}
			wantFetchError(t, err, ClassPin)
			wantIs(t, err, true, ErrSecurityPolicy)
			wantIs(t, err, false, ErrUpstream)
		})
	}

	t.Run("pins over plain http", func(t *testing.T) {
		plain := idp.Start(t)
		f := newTestFetcher(t, Options{HTTPClient: &http.Client{}, AllowHTTP: true, AllowedAddresses: loopbackPrefixes})
		reg := testReg(t, f, func(r *Registration) { r.AllowHTTP, r.PinnedSPKI = true, []string{leafPin} })
		_, err := f.fetchKeys(t.Context(), reg, plain.URL+jwksPath, validators{})
		wantFetchError(t, err, ClassPin)
		if !strings.Contains(err.Error(), "TLS") {
			t.Errorf("error = %v", err)
		}
	})
}

func TestFetchTLSUntrustedCertificate(t *testing.T) {
	idp, srv := tlsIdP(t)
	f := newTestFetcher(t, Options{AllowedAddresses: loopbackPrefixes}) // system roots
	_, err := f.fetchKeys(t.Context(), testReg(t, f, nil), srv.URL+jwksPath, validators{})
	wantFetchError(t, err, ClassTLS)
	wantIs(t, err, true, ErrUpstream)
	wantIs(t, err, false, ErrSecurityPolicy)
	if n := idp.TotalRequests(); n != 0 {
		t.Errorf("%d requests over an untrusted connection", n)
	}
}

func TestFetchOversize(t *testing.T) {
	t.Run("Content-Length over limit refused without reading", func(t *testing.T) {
		// The server announces 10 MiB and then sends nothing: a client that
		// tried to read would hang until its attempt timeout.
		idp := testidp.New()
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(10<<20))
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{idp.Certificate()}}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		f := newTestFetcher(t, tlsOptions(idp))
		reg := testReg(t, f, func(r *Registration) { r.Retry.AttemptTimeout, r.Retry.MaxRetries = 5*time.Second, -1 })
		_, err := f.fetchKeys(t.Context(), reg, srv.URL+jwksPath, validators{})
		wantFetchError(t, err, ClassTooLarge)
		wantIs(t, err, true, ErrTooLarge)
		wantIs(t, err, false, ErrUpstream, ErrSecurityPolicy)
		// Refused on the header: had the body been read, the silent server
		// would have ended the attempt with a timeout instead.
		if !strings.Contains(err.Error(), "Content-Length") {
			t.Errorf("error = %v", err)
		}
	})

	t.Run("Content-Length fault", func(t *testing.T) {
		idp, srv := tlsIdP(t)
		idp.SetFault(jwksPath, testidp.Fault{Oversize: 2 << 20})
		f := newTestFetcher(t, tlsOptions(idp))
		_, err := f.fetchKeys(t.Context(), testReg(t, f, nil), srv.URL+jwksPath, validators{})
		wantFetchError(t, err, ClassTooLarge)
		wantIs(t, err, true, ErrTooLarge)
		if n := idp.Requests(jwksPath); n != 1 {
			t.Errorf("too large retried: %d requests", n)
		}
	})

	t.Run("streamed body cut off", func(t *testing.T) {
		idp, srv := tlsIdP(t)
		// 1 GiB, chunked: reading it all would take far longer than the test.
		idp.SetFault(jwksPath, testidp.Fault{Oversize: 1 << 30, HideLength: true})
		f := newTestFetcher(t, tlsOptions(idp))
		_, err := f.fetchKeys(t.Context(), testReg(t, f, nil), srv.URL+jwksPath, validators{})
		wantFetchError(t, err, ClassTooLarge)
		wantIs(t, err, true, ErrTooLarge)
		if !strings.Contains(err.Error(), "bytes received") {
			t.Errorf("error = %v", err)
		}
	})

	t.Run("limit is inclusive", func(t *testing.T) {
		idp, srv := tlsIdP(t)
		f := newTestFetcher(t, tlsOptions(idp))
		body := mustFetchKeys(t, f, testReg(t, f, nil), srv.URL+jwksPath, validators{}).Body
		for _, chunked := range []bool{false, true} {
			if chunked {
				// Truncated with a full-length body is impossible, so serve the
				// body through a chunked handler instead.
				srv2 := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", testidp.ContentTypeJWKS)
					w.WriteHeader(http.StatusOK)
					w.(http.Flusher).Flush()
					_, _ = w.Write(body)
				}))
				srv2.TLS = &tls.Config{Certificates: []tls.Certificate{idp.Certificate()}}
				srv2.StartTLS()
				t.Cleanup(srv2.Close)
				srv = srv2
			}
			exact := testReg(t, f, func(r *Registration) { r.MaxResponseBytes = int64(len(body)) })
			wantKeys(t, mustFetchKeys(t, f, exact, srv.URL+jwksPath, validators{}), 3)
			under := testReg(t, f, func(r *Registration) { r.MaxResponseBytes = int64(len(body)) - 1 })
			_, err := f.fetchKeys(t.Context(), under, srv.URL+jwksPath, validators{})
			wantFetchError(t, err, ClassTooLarge)
		}
	})

	t.Run("gzip bomb fault cut off after decompression", func(t *testing.T) {
		// The fixture is compressed at BestCompression, which is slow under
		// -race (about 0.1s per MiB), so this uses 8 MiB, built (and cached
		// by testidp) before the fetch so that building it does not count
		// against the attempt timeout. The 1 GiB case below builds its bomb
		// differently.
		const bomb = 8 << 20
		testidp.GzipBomb(bomb)
		idp, srv := tlsIdP(t)
		idp.SetFault(jwksPath, testidp.Fault{GzipBomb: bomb})
		f := newTestFetcher(t, tlsOptions(idp))
		reg := testReg(t, f, func(r *Registration) { r.MaxResponseBytes = 1 << 20 })
		_, err := f.fetchKeys(t.Context(), reg, srv.URL+jwksPath, validators{})
		wantFetchError(t, err, ClassTooLarge)
		wantIs(t, err, true, ErrTooLarge)
		wantIs(t, err, false, ErrUpstream)
		if !strings.Contains(err.Error(), "after decompression") {
			t.Errorf("error = %v", err)
		}
	})

	t.Run("1 GiB gzip bomb cut off quickly", func(t *testing.T) {
		// 1024 gzip members of 1 MiB of spaces each (gzip readers read
		// concatenated members as one stream): about 1 MiB on the wire,
		// 1 GiB decompressed, built in milliseconds. It is streamed chunked
		// so the Content-Length check cannot stop it first.
		var member bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&member, gzip.BestCompression)
		_, _ = zw.Write(bytes.Repeat([]byte(" "), 1<<20))
		_ = zw.Close()
		idp := testidp.New()
		var sent sync.WaitGroup
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			sent.Add(1)
			defer sent.Done()
			w.Header().Set("Content-Type", testidp.ContentTypeJWKS)
			w.Header().Set("Content-Encoding", "gzip")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			for range 1024 {
				if _, err := w.Write(member.Bytes()); err != nil {
					return
				}
			}
		}))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{idp.Certificate()}}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		f := newTestFetcher(t, tlsOptions(idp))
		reg := testReg(t, f, func(r *Registration) { r.MaxResponseBytes = 1 << 20 })

		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		start := time.Now()
		_, err := f.fetchKeys(t.Context(), reg, srv.URL+jwksPath, validators{})
		elapsed := time.Since(start)
		sent.Wait()
		runtime.ReadMemStats(&after)

		wantFetchError(t, err, ClassTooLarge)
		wantIs(t, err, true, ErrTooLarge)
		if !strings.Contains(err.Error(), "after decompression") {
			t.Errorf("error = %v", err)
		}
		// The whole process, server included, allocated a small fraction of
		// the decompressed size: the reader stopped at the limit.
		if d := after.TotalAlloc - before.TotalAlloc; d > 16<<20 {
			t.Errorf("allocated %d MiB while refusing a 1 GiB gzip bomb", d>>20)
		}
		t.Logf("1 GiB gzip bomb refused in %v, %d KiB allocated", elapsed, (after.TotalAlloc-before.TotalAlloc)>>10)
	})

	t.Run("gzip body accepted", func(t *testing.T) {
		idp, srv := tlsIdP(t)
		f := newTestFetcher(t, tlsOptions(idp))
		plain := mustFetchKeys(t, f, testReg(t, f, nil), srv.URL+jwksPath, validators{}).Body
		var zb bytes.Buffer
		zw := gzip.NewWriter(&zb)
		_, _ = zw.Write(plain)
		_ = zw.Close()
		idp.SetBody("/gz", zb.Bytes(), testidp.ContentTypeJWKS)
		idp.SetHeader("/gz", "Content-Encoding", "gzip")
		res := mustFetchKeys(t, f, testReg(t, f, nil), srv.URL+"/gz", validators{})
		wantKeys(t, res, 3)
		if !bytes.Equal(res.Body, plain) {
			t.Errorf("Body is not the decompressed document")
		}
		if h := idp.LastRequest("/gz").Get("Accept-Encoding"); h != "gzip" {
			t.Errorf("Accept-Encoding = %q, want gzip", h)
		}
	})
}

func TestFetchRequestHeadersAndRevalidation(t *testing.T) {
	idp, srv := tlsIdP(t)
	u := srv.URL + jwksPath
	f := newTestFetcher(t, tlsOptions(idp))
	reg := testReg(t, f, nil)

	res := mustFetchKeys(t, f, reg, u, validators{})
	h := idp.LastRequest(jwksPath)
	if got := h.Get("Accept"); got != "application/jwk-set+json, application/json" {
		t.Errorf("Accept = %q", got)
	}
	if got := h.Get("User-Agent"); got != "jwkscache/"+Version {
		t.Errorf("User-Agent = %q, want jwkscache/%s", got, Version)
	}
	if h.Get("If-None-Match") != "" || h.Get("If-Modified-Since") != "" {
		t.Errorf("conditional headers without validators: %v", h)
	}

	t.Run("If-None-Match", func(t *testing.T) {
		etag := res.Validators.ETag
		idp.SetHeader(jwksPath, "Cache-Control", "max-age=600")
		t.Cleanup(func() { idp.SetHeader(jwksPath, "Cache-Control", "max-age=300") })
		before := time.Now()
		nm := mustFetchKeys(t, f, reg, u, validators{ETag: etag})
		if got := idp.LastRequest(jwksPath).Get("If-None-Match"); got != etag {
			t.Errorf("If-None-Match = %q, want %q", got, etag)
		}
		if !nm.NotModified || nm.Keys != nil || nm.Body != nil {
			t.Fatalf("result = %+v, want NotModified without body", nm)
		}
		if nm.Fresh.TTL != 600*time.Second || nm.FetchedAt.Before(before) {
			t.Errorf("304 freshness = %+v at %v, want renewed 600s from the 304's headers", nm.Fresh, nm.FetchedAt)
		}
		if nm.Validators.ETag != etag || nm.URL != u || nm.Attempts != 1 {
			t.Errorf("304 result = %+v", nm.fetchResult)
		}
	})

	t.Run("If-Modified-Since", func(t *testing.T) {
		idp.SetETag(jwksPath, false)
		t.Cleanup(func() { idp.SetETag(jwksPath, true) })
		lm := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
		idp.SetLastModified(jwksPath, lm)
		full := mustFetchKeys(t, f, reg, u, validators{})
		if full.Validators.LastModified != lm.Format(http.TimeFormat) || full.Validators.ETag != "" {
			t.Fatalf("validators = %+v", full.Validators)
		}
		nm := mustFetchKeys(t, f, reg, u, full.Validators)
		if got := idp.LastRequest(jwksPath).Get("If-Modified-Since"); got != full.Validators.LastModified {
			t.Errorf("If-Modified-Since = %q", got)
		}
		if !nm.NotModified || nm.Validators != full.Validators || nm.Fresh.TTL != 300*time.Second {
			t.Errorf("result = %+v", nm.fetchResult)
		}
	})

	t.Run("304 without validators is an error", func(t *testing.T) {
		idp.SetFault(jwksPath, testidp.Fault{Status: http.StatusNotModified})
		t.Cleanup(func() { idp.ClearFault(jwksPath) })
		before := idp.Requests(jwksPath)
		_, err := f.fetchKeys(t.Context(), reg, u, validators{})
		fe := wantFetchError(t, err, ClassStatus)
		if fe.StatusCode != http.StatusNotModified {
			t.Errorf("StatusCode = %d", fe.StatusCode)
		}
		wantIs(t, err, true, ErrUpstream)
		if n := idp.Requests(jwksPath) - before; n != 1 {
			t.Errorf("%d requests, want 1 (not retried)", n)
		}
	})
}

// TestFetchFaultsClassified runs every testidp fault over real TLS and
// checks its class, status code and how many attempts reached the IdP.
func TestFetchFaultsClassified(t *testing.T) {
	for _, c := range []struct {
		name     string
		fault    testidp.Fault
		retry    RetryPolicy
		class    ErrorClass
		status   int
		requests int
	}{
		{"500", testidp.Fault{Status: 500}, fastRetry, ClassStatus, 500, 3},
		{"503", testidp.Fault{Status: 503}, fastRetry, ClassStatus, 503, 3},
		{"502", testidp.Fault{Status: 502}, fastRetry, ClassStatus, 502, 3},
		{"429", testidp.Fault{Status: 429}, fastRetry, ClassStatus, 429, 3},
		{"408", testidp.Fault{Status: 408}, fastRetry, ClassStatus, 408, 3},
		{"404", testidp.Fault{Status: 404}, fastRetry, ClassStatus, 404, 1},
		{"403", testidp.Fault{Status: 403}, fastRetry, ClassStatus, 403, 1},
		{"400", testidp.Fault{Status: 400}, fastRetry, ClassStatus, 400, 1},
		{"html", testidp.Fault{HTML: true}, fastRetry, ClassParse, 0, 1},
		{"truncated", testidp.Fault{Truncated: true}, fastRetry, ClassParse, 0, 1},
		{"reset", testidp.Fault{Reset: true}, fastRetry, ClassNetwork, 0, 3},
		{"refuse", testidp.Fault{Refuse: true}, fastRetry, ClassNetwork, 0, 3},
		{"delay beyond attempt timeout", testidp.Fault{Delay: time.Minute},
			RetryPolicy{MaxRetries: -1, AttemptTimeout: 300 * time.Millisecond}, ClassTimeout, 0, 1},
		{"redirect loop", testidp.Fault{RedirectTo: jwksPath}, fastRetry, ClassRedirect, 0, 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			idp, srv := tlsIdP(t)
			idp.SetFault(jwksPath, c.fault)
			f := newTestFetcher(t, tlsOptions(idp))
			reg := testReg(t, f, func(r *Registration) { r.Retry = c.retry })
			u := srv.URL + jwksPath
			_, err := f.fetchKeys(t.Context(), reg, u, validators{})
			fe := wantFetchError(t, err, c.class)
			if fe.StatusCode != c.status {
				t.Errorf("StatusCode = %d, want %d", fe.StatusCode, c.status)
			}
			if fe.URL != u {
				t.Errorf("URL = %q, want %q", fe.URL, u)
			}
			wantIs(t, err, true, ErrUpstream)
			wantIs(t, err, false, ErrSecurityPolicy, ErrTooLarge, ErrNoKeys)
			if n := idp.Requests(jwksPath); n != c.requests {
				t.Errorf("IdP saw %d requests, want %d", n, c.requests)
			}
			// The error names tenant, provider and URL.
			for _, s := range []string{"acme", "auth0", u, string(c.class)} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not name %q", err, s)
				}
			}
			if c.status != 0 && !strings.Contains(err.Error(), strconv.Itoa(c.status)) {
				t.Errorf("error %q does not name the status", err)
			}
		})
	}
}

func TestFetchRetryAfterBeyondDeadline(t *testing.T) {
	idp, srv := tlsIdP(t)
	idp.SetFault(jwksPath, testidp.Fault{Status: 429, RetryAfter: "120"})
	f := newTestFetcher(t, tlsOptions(idp))
	_, err := f.fetchKeys(t.Context(), testReg(t, f, nil), srv.URL+jwksPath, validators{})
	fe := wantFetchError(t, err, ClassStatus)
	if fe.RetryAfter != 120*time.Second {
		t.Errorf("RetryAfter = %v, want 2m", fe.RetryAfter)
	}
	// The wait does not fit in the 8s deadline, so the fetch gives up at once.
	// That it gives up at once, rather than after waiting, is measured in
	// virtual time by TestFetchRetryTimingVirtual.
	if n := idp.Requests(jwksPath); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

func TestFetchNoKeysAndNotJSON(t *testing.T) {
	idp, srv := tlsIdP(t)
	f := newTestFetcher(t, tlsOptions(idp))
	reg := testReg(t, f, func(r *Registration) { r.Retry = fastRetry })

	idp.SetKeys("/empty")
	_, err := f.fetchKeys(t.Context(), reg, srv.URL+"/empty", validators{})
	wantFetchError(t, err, ClassNoKeys)
	wantIs(t, err, true, ErrNoKeys)
	wantIs(t, err, false, ErrUpstream, ErrSecurityPolicy)
	if n := idp.Requests("/empty"); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}

	idp.SetBody("/garbage", []byte(`{"keys":`), "")
	_, err = f.fetchKeys(t.Context(), reg, srv.URL+"/garbage", validators{})
	wantFetchError(t, err, ClassParse)

	idp.SetBody("/html-no-type", []byte("  <!doctype html><p>login"), "application/json")
	_, err = f.fetchKeys(t.Context(), reg, srv.URL+"/html-no-type", validators{})
	wantFetchError(t, err, ClassParse)
	wantIs(t, err, true, errHTML)
}

func TestFetchCallerCancellationNotRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := testidp.NewDefault()
		idp.SetFault(jwksPath, testidp.Fault{Delay: time.Hour})
		f := newTestFetcher(t, Options{HTTPClient: idp.Client()})
		reg := testReg(t, f, nil)
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(time.Second, cancel)
		_, err := f.fetchKeys(ctx, reg, "https://idp.test/jwks.json", validators{})
		wantFetchError(t, err, ClassNetwork)
		wantIs(t, err, true, context.Canceled)
		if n := idp.Requests(jwksPath); n != 1 {
			t.Errorf("%d requests after cancellation, want 1", n)
		}
	})
}

func TestFetchCallerCancellationDuringBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := testidp.NewDefault()
		idp.SetFault(jwksPath, testidp.Fault{Status: 500})
		f := newTestFetcher(t, Options{HTTPClient: idp.Client()})
		reg := testReg(t, f, func(r *Registration) { r.Retry = RetryPolicy{Jitter: JitterNone} })
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(100*time.Millisecond, cancel) // during the 250ms backoff
		start := time.Now()
		_, err := f.fetchKeys(ctx, reg, "https://idp.test/jwks.json", validators{})
		fe := wantFetchError(t, err, ClassStatus) // the last attempt's error
		if fe.StatusCode != 500 || time.Since(start) != 100*time.Millisecond || idp.Requests(jwksPath) != 1 {
			t.Errorf("status %d after %v and %d requests; want 500 after 100ms and 1", fe.StatusCode, time.Since(start), idp.Requests(jwksPath))
		}
	})
}

func TestFetchMalformedURL(t *testing.T) {
	f := newTestFetcher(t, Options{})
	reg := testReg(t, f, nil)
	for _, u := range []string{"https://idp.test/%zz", "ftp://idp.test/jwks.json", "/jwks.json"} {
		_, err := f.fetchKeys(t.Context(), reg, u, validators{})
		var fe *FetchError
		if !errors.As(err, &fe) || fe.URL != u {
			t.Errorf("fetchKeys(%q) = %v, want a *FetchError naming the URL", u, err)
		}
	}
}

func TestFetchBodyErrors(t *testing.T) {
	idp, srv := tlsIdP(t)
	f := newTestFetcher(t, tlsOptions(idp))
	reg := testReg(t, f, func(r *Registration) { r.Retry = fastRetry })

	t.Run("unsupported Content-Encoding", func(t *testing.T) {
		idp.SetBody("/br", []byte(`{"keys":[]}`), testidp.ContentTypeJWKS)
		idp.SetHeader("/br", "Content-Encoding", "br")
		_, err := f.fetchKeys(t.Context(), reg, srv.URL+"/br", validators{})
		wantFetchError(t, err, ClassParse)
		wantIs(t, err, true, errBadEncoding, ErrUpstream)
		if n := idp.Requests("/br"); n != 1 {
			t.Errorf("%d requests, want 1", n)
		}
	})

	t.Run("body shorter than Content-Length", func(t *testing.T) {
		short := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte(`{"keys":[`)) // the server then closes the connection
		}))
		short.TLS = &tls.Config{Certificates: []tls.Certificate{idp.Certificate()}}
		short.StartTLS()
		t.Cleanup(short.Close)
		_, err := f.fetchKeys(t.Context(), reg, short.URL+jwksPath, validators{})
		fe := wantFetchError(t, err, ClassNetwork)
		wantIs(t, err, true, ErrUpstream)
		if fe.URL != short.URL+jwksPath {
			t.Errorf("URL = %q", fe.URL)
		}
	})
}

func TestPinsOnResponseState(t *testing.T) {
	idp := testidp.New()
	pins, err := decodePins([]string{testidp.SPKIPin(idp.Leaf())})
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		cs *tls.ConnectionState
		ok bool
	}{
		"no TLS":           {nil, false},
		"no certificates":  {&tls.ConnectionState{}, false},
		"leaf unverified":  {&tls.ConnectionState{PeerCertificates: []*x509.Certificate{idp.Leaf(), idp.CA()}}, true},
		"leaf in chain":    {&tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{idp.Leaf(), idp.CA()}}}, true},
		"only CA verified": {&tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{idp.CA()}}}, false},
		// Unverified: a pinned key further up an unverified chain proves nothing.
		"leaf second, unverified": {&tls.ConnectionState{PeerCertificates: []*x509.Certificate{idp.CA(), idp.Leaf()}}, false},
	} {
		err := checkPinsOnResponse(c.cs, pins)
		if (err == nil) != c.ok {
			t.Errorf("%s: checkPinsOnResponse = %v, want ok %v", name, err, c.ok)
		}
		if err != nil && classify(err) != ClassPin {
			t.Errorf("%s: classified %s", name, classify(err))
		}
	}
}

// recordingTransport records the virtual time of each request.
type recordingTransport struct {
	rt    http.RoundTripper
	start time.Time
	mu    sync.Mutex
	at    []time.Duration
}

func (r *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.at = append(r.at, time.Since(r.start))
	r.mu.Unlock()
	return r.rt.RoundTrip(req)
}

// TestFetchRetryTimingVirtual checks deadlines, attempt timeouts,
// Retry-After and backoff in the fake time of a synctest bubble, with the
// IdP's in-memory RoundTripper.
func TestFetchRetryTimingVirtual(t *testing.T) {
	const u = "https://idp.test/jwks.json"

	t.Run("Deadline bounds the fetch", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			idp, _ := testidp.NewDefault()
			idp.SetFault(jwksPath, testidp.Fault{Delay: time.Hour})
			f := newTestFetcher(t, Options{HTTPClient: idp.Client()})
			reg := testReg(t, f, func(r *Registration) { r.Retry = RetryPolicy{MaxRetries: 10, Jitter: JitterNone} })
			start := time.Now()
			_, err := f.fetchKeys(t.Context(), reg, u, validators{})
			elapsed := time.Since(start)
			wantFetchError(t, err, ClassTimeout)
			wantIs(t, err, true, ErrUpstream)
			// 3s attempt, 250ms, 3s attempt, 500ms, then the third attempt is
			// cut by the 8s deadline.
			if elapsed != DefaultDeadline {
				t.Errorf("elapsed %v, want exactly the %v deadline", elapsed, DefaultDeadline)
			}
			if n := idp.Requests(jwksPath); n != 3 {
				t.Errorf("%d attempts, want 3", n)
			}
		})
	})

	t.Run("AttemptTimeout bounds each attempt", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			idp, _ := testidp.NewDefault()
			idp.SetFault(jwksPath, testidp.Fault{Delay: time.Hour})
			rec := &recordingTransport{rt: idp, start: time.Now()}
			f := newTestFetcher(t, Options{HTTPClient: &http.Client{Transport: rec}})
			reg := testReg(t, f, func(r *Registration) {
				r.Retry = RetryPolicy{MaxRetries: 1, AttemptTimeout: time.Second, Jitter: JitterNone}
			})
			_, err := f.fetchKeys(t.Context(), reg, u, validators{})
			wantFetchError(t, err, ClassTimeout)
			wantIs(t, err, true, context.DeadlineExceeded)
			if elapsed := time.Since(rec.start); elapsed != 2250*time.Millisecond {
				t.Errorf("elapsed %v, want 1s + 250ms + 1s", elapsed)
			}
			if want := []time.Duration{0, 1250 * time.Millisecond}; !equalDurations(rec.at, want) {
				t.Errorf("attempts at %v, want %v", rec.at, want)
			}
		})
	})

	t.Run("slow success within AttemptTimeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			idp, _ := testidp.NewDefault()
			idp.SetFault(jwksPath, testidp.Fault{Delay: 2900 * time.Millisecond})
			f := newTestFetcher(t, Options{HTTPClient: idp.Client()})
			start := time.Now()
			res := mustFetchKeys(t, f, testReg(t, f, nil), u, validators{})
			wantKeys(t, res, 3)
			if elapsed := time.Since(start); elapsed != 2900*time.Millisecond {
				t.Errorf("elapsed %v", elapsed)
			}
		})
	})

	t.Run("Retry-After honoured", func(t *testing.T) {
		for _, c := range []struct {
			name, retryAfter string
			status           int
			want             time.Duration
		}{
			{"503 seconds", "2", 503, 2 * time.Second},
			{"429 seconds", "2", 429, 2 * time.Second},
			{"429 HTTP date", "", 429, 3 * time.Second},
		} {
			t.Run(c.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					idp, _ := testidp.NewDefault()
					ra := c.retryAfter
					if ra == "" {
						ra = time.Now().Add(3 * time.Second).UTC().Format(http.TimeFormat)
					}
					idp.SetFault(jwksPath, testidp.Fault{Status: c.status, RetryAfter: ra, Count: 1})
					f := newTestFetcher(t, Options{HTTPClient: idp.Client()})
					start := time.Now()
					res := mustFetchKeys(t, f, testReg(t, f, nil), u, validators{})
					elapsed := time.Since(start)
					wantKeys(t, res, 3)
					if res.Attempts != 2 {
						t.Errorf("Attempts = %d, want 2", res.Attempts)
					}
					// Full jitter would wait at most 250ms; Retry-After wins.
					if elapsed != c.want {
						t.Errorf("elapsed %v, want %v", elapsed, c.want)
					}
				})
			})
		}
	})

	t.Run("Retry-After beyond Deadline gives up at once", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			idp, _ := testidp.NewDefault()
			idp.SetFault(jwksPath, testidp.Fault{Status: 503, RetryAfter: "30"})
			f := newTestFetcher(t, Options{HTTPClient: idp.Client()})
			start := time.Now()
			_, err := f.fetchKeys(t.Context(), testReg(t, f, nil), u, validators{})
			fe := wantFetchError(t, err, ClassStatus)
			if fe.RetryAfter != 30*time.Second || time.Since(start) != 0 || idp.Requests(jwksPath) != 1 {
				t.Errorf("RetryAfter %v, elapsed %v, requests %d", fe.RetryAfter, time.Since(start), idp.Requests(jwksPath))
			}
		})
	})

	t.Run("JitterNone exact backoff", func(t *testing.T) {
		for _, c := range []struct {
			name  string
			retry RetryPolicy
			want  []time.Duration
		}{
			{"defaults", RetryPolicy{Jitter: JitterNone}, []time.Duration{0, 250 * time.Millisecond, 750 * time.Millisecond}},
			{"capped", RetryPolicy{Jitter: JitterNone, MaxRetries: 4, MaxBackoff: 600 * time.Millisecond},
				[]time.Duration{0, 250 * time.Millisecond, 750 * time.Millisecond, 1350 * time.Millisecond, 1950 * time.Millisecond}},
		} {
			t.Run(c.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					idp, _ := testidp.NewDefault()
					idp.SetFault(jwksPath, testidp.Fault{Status: 500})
					rec := &recordingTransport{rt: idp, start: time.Now()}
					f := newTestFetcher(t, Options{HTTPClient: &http.Client{Transport: rec}})
					reg := testReg(t, f, func(r *Registration) { r.Retry = c.retry })
					_, err := f.fetchKeys(t.Context(), reg, u, validators{})
					wantFetchError(t, err, ClassStatus)
					if !equalDurations(rec.at, c.want) {
						t.Errorf("attempts at %v, want %v", rec.at, c.want)
					}
					if elapsed := time.Since(rec.start); elapsed != c.want[len(c.want)-1] {
						t.Errorf("elapsed %v", elapsed)
					}
				})
			})
		}
	})

	t.Run("jittered backoff within bounds", func(t *testing.T) {
		for _, j := range []Jitter{JitterFull, JitterDecorrelated} {
			t.Run(string(j), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					idp, _ := testidp.NewDefault()
					idp.SetFault(jwksPath, testidp.Fault{Status: 500})
					rec := &recordingTransport{rt: idp, start: time.Now()}
					f := newTestFetcher(t, Options{HTTPClient: &http.Client{Transport: rec}})
					reg := testReg(t, f, func(r *Registration) { r.Retry = RetryPolicy{Jitter: j, MaxRetries: 5} })
					_, err := f.fetchKeys(t.Context(), reg, u, validators{})
					wantFetchError(t, err, ClassStatus)
					if len(rec.at) != 6 {
						t.Fatalf("%d attempts, want 6", len(rec.at))
					}
					for i := 1; i < len(rec.at); i++ {
						gap := rec.at[i] - rec.at[i-1]
						lo := time.Duration(0)
						if j == JitterDecorrelated {
							lo = DefaultInitialBackoff
						}
						if gap < lo || gap > DefaultMaxBackoff {
							t.Errorf("gap %d = %v, want within [%v, %v]", i, gap, lo, DefaultMaxBackoff)
						}
					}
				})
			})
		}
	})
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBackoff(t *testing.T) {
	rp := RetryPolicy{InitialBackoff: 250 * time.Millisecond, MaxBackoff: 2 * time.Second, Jitter: JitterNone}
	for attempt, want := range map[int]time.Duration{
		1: 250 * time.Millisecond, 2: 500 * time.Millisecond, 3: time.Second, 4: 2 * time.Second,
		5: 2 * time.Second, 40: 2 * time.Second, 100: 2 * time.Second,
	} {
		if got := backoff(&rp, attempt, 0); got != want {
			t.Errorf("none: backoff(%d) = %v, want %v", attempt, got, want)
		}
	}

	rp.Jitter = JitterFull
	for attempt := 1; attempt <= 6; attempt++ {
		base := min(rp.InitialBackoff<<(attempt-1), rp.MaxBackoff)
		for range 200 {
			if got := backoff(&rp, attempt, 0); got < 0 || got > base {
				t.Fatalf("full: backoff(%d) = %v, want within [0, %v]", attempt, got, base)
			}
		}
	}

	rp.Jitter = JitterDecorrelated
	if got := backoff(&rp, 1, 0); got != rp.InitialBackoff {
		t.Errorf("decorrelated first backoff = %v, want %v", got, rp.InitialBackoff)
	}
	prev := time.Duration(0)
	sawAboveInitial := false
	for i := range 500 {
		got := backoff(&rp, i+1, prev)
		hi := max(3*prev, rp.InitialBackoff)
		if got < rp.InitialBackoff || got > rp.MaxBackoff || got > hi {
			t.Fatalf("decorrelated: backoff after %v = %v, want within [%v, min(%v, %v)]", prev, got, rp.InitialBackoff, hi, rp.MaxBackoff)
		}
		sawAboveInitial = sawAboveInitial || got > rp.InitialBackoff
		prev = got
	}
	if !sawAboveInitial {
		t.Errorf("decorrelated backoff never grew")
	}
}

func TestFetchRetryable(t *testing.T) {
	for _, c := range []struct {
		fe   FetchError
		want bool
	}{
		{FetchError{Class: ClassNetwork, Err: errors.New("reset")}, true},
		{FetchError{Class: ClassNetwork, Err: context.Canceled}, false},
		{FetchError{Class: ClassTimeout, Err: context.DeadlineExceeded}, true},
		{FetchError{Class: ClassStatus, StatusCode: 408}, true},
		{FetchError{Class: ClassStatus, StatusCode: 429}, true},
		{FetchError{Class: ClassStatus, StatusCode: 500}, true},
		{FetchError{Class: ClassStatus, StatusCode: 599}, true},
		{FetchError{Class: ClassStatus, StatusCode: 404}, false},
		{FetchError{Class: ClassStatus, StatusCode: 304}, false},
		{FetchError{Class: ClassTLS}, false},
		{FetchError{Class: ClassPin}, false},
		{FetchError{Class: ClassBlockedAddress}, false},
		{FetchError{Class: ClassRedirect}, false},
		{FetchError{Class: ClassTooLarge}, false},
		{FetchError{Class: ClassParse}, false},
		{FetchError{Class: ClassNoKeys}, false},
	} {
		if got := c.fe.retryable(); got != c.want {
			t.Errorf("%s %d %v: retryable = %v, want %v", c.fe.Class, c.fe.StatusCode, c.fe.Err, got, c.want)
		}
	}
}

func TestFetchClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want ErrorClass
	}{
		{&net.OpError{Op: "dial", Err: &blockedAddressError{reason: "loopback"}}, ClassBlockedAddress},
		{&pinError{"x"}, ClassPin},
		{errTooManyRedirects, ClassRedirect},
		{errPolicyHop, ClassRedirect},
		{&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, ClassTLS},
		{x509.HostnameError{}, ClassTLS},
		{tls.RecordHeaderError{}, ClassTLS},
		{context.DeadlineExceeded, ClassTimeout},
		{&net.OpError{Op: "read", Err: timeoutErr{}}, ClassTimeout},
		{context.Canceled, ClassNetwork},
		{io.ErrUnexpectedEOF, ClassNetwork},
	} {
		if got := classify(c.err); got != c.want {
			t.Errorf("classify(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestFetchReadBody(t *testing.T) {
	gz := func(b []byte) []byte {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		_, _ = zw.Write(b)
		_ = zw.Close()
		return buf.Bytes()
	}
	resp := func(body []byte, length int64, encoding string) *http.Response {
		h := make(http.Header)
		if encoding != "" {
			h.Set("Content-Encoding", encoding)
		}
		return &http.Response{Header: h, Body: io.NopCloser(bytes.NewReader(body)), ContentLength: length}
	}
	doc := []byte(`{"keys":[]}`)
	for _, c := range []struct {
		name    string
		resp    *http.Response
		limit   int64
		wantErr error
	}{
		{"identity at limit", resp(doc, -1, ""), int64(len(doc)), nil},
		{"identity over limit", resp(doc, -1, "identity"), int64(len(doc)) - 1, ErrTooLarge},
		{"content-length over limit", resp(nil, 100, ""), 99, ErrTooLarge},
		{"gzip", resp(gz(doc), -1, "gzip"), 1 << 10, nil},
		{"x-gzip", resp(gz(doc), -1, "X-Gzip"), 1 << 10, nil},
		// The limit also applies to the bytes received: a gzip stream
		// larger than the limit fails even if its output would fit.
		{"gzip input over limit", resp(gz(doc), -1, "gzip"), int64(len(doc)), ErrTooLarge},
		{"gzip output over limit", resp(gz(bytes.Repeat([]byte(" "), 1<<16)), -1, "gzip"), 1 << 10, ErrTooLarge},
		{"gzip corrupt header", resp([]byte("not gzip at all"), -1, "gzip"), 1 << 10, errBadEncoding},
		{"gzip truncated", resp(gz(doc)[:15], -1, "gzip"), 1 << 10, errBadEncoding},
		{"unsupported encoding", resp(doc, -1, "br"), 1 << 10, errBadEncoding},
		{"gzip header over a tiny limit", resp(gz(doc), -1, "gzip"), 5, ErrTooLarge},
		{"read error", &http.Response{Header: http.Header{}, ContentLength: -1,
			Body: io.NopCloser(io.MultiReader(bytes.NewReader(doc[:4]), iotest.ErrReader(io.ErrUnexpectedEOF)))}, 1 << 10, io.ErrUnexpectedEOF},
	} {
		t.Run(c.name, func(t *testing.T) {
			body, err := readBody(c.resp, c.limit)
			if c.wantErr == nil {
				if err != nil || !bytes.Equal(body, doc) {
					t.Fatalf("readBody = %q, %v; want the document", body, err)
				}
				return
			}
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("readBody error = %v, want %v", err, c.wantErr)
			}
		})
	}
}

func TestFetchDiscovery(t *testing.T) {
	const discPath = "/.well-known/openid-configuration"
	idp, srv := tlsIdP(t)
	plain := idp.Start(t)
	issuer := srv.URL
	jwksURI := srv.URL + jwksPath
	f := newTestFetcher(t, tlsOptions(idp))
	regFor := func(iss string) *Registration {
		return testReg(t, f, func(r *Registration) { r.JWKSURL, r.Issuer, r.Retry = "", iss, fastRetry })
	}

	t.Run("success", func(t *testing.T) {
		idp.SetDiscovery(discPath, issuer, jwksURI)
		res, err := f.fetchDiscovery(t.Context(), regFor(issuer), validators{})
		if err != nil {
			t.Fatal(err)
		}
		if res.NotModified || res.Doc == nil || res.Doc.JWKSURI != jwksURI || res.Doc.Issuer != issuer {
			t.Fatalf("result = %+v", res)
		}
		if res.URL != issuer+discPath {
			t.Errorf("URL = %q", res.URL)
		}
		wantKeys(t, mustFetchKeys(t, f, regFor(issuer), res.Doc.JWKSURI, validators{}), 3)

		nm, err := f.fetchDiscovery(t.Context(), regFor(issuer), res.Validators)
		if err != nil || !nm.NotModified || nm.Doc != nil {
			t.Fatalf("revalidation = %+v, %v; want NotModified", nm, err)
		}
	})

	for _, c := range []struct {
		name, docIssuer, regIssuer, jwksURI string
		policy                              bool
	}{
		{"registered issuer has trailing slash", issuer, issuer + "/", jwksURI, false},
		{"document issuer has trailing slash", issuer + "/", issuer, jwksURI, false},
		{"other issuer", "https://evil.example", issuer, jwksURI, false},
		{"http jwks_uri", issuer, issuer, plain.URL + jwksPath, true},
		{"jwks_uri outside AllowedAddresses", issuer, issuer, "https://10.0.0.1/jwks.json", true},
		{"relative jwks_uri", issuer, issuer, "/jwks.json", false},
		{"empty jwks_uri", issuer, issuer, "", false},
		{"jwks_uri over 2 KiB", issuer, issuer, jwksURI + "?" + strings.Repeat("a", maxDiscoveredURL), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			idp.SetDiscovery(discPath, c.docIssuer, c.jwksURI)
			_, err := f.fetchDiscovery(t.Context(), regFor(c.regIssuer), validators{})
			wantFetchError(t, err, ClassParse)
			wantIs(t, err, c.policy, ErrSecurityPolicy)
		})
	}

	t.Run("html", func(t *testing.T) {
		idp.SetBody(discPath, []byte("<html>login</html>"), "application/json")
		_, err := f.fetchDiscovery(t.Context(), regFor(issuer), validators{})
		wantFetchError(t, err, ClassParse)
		wantIs(t, err, true, errHTML)
	})

	t.Run("not JSON", func(t *testing.T) {
		idp.SetBody(discPath, []byte("{"), "application/json")
		_, err := f.fetchDiscovery(t.Context(), regFor(issuer), validators{})
		wantFetchError(t, err, ClassParse)
	})
}

// TestCheckAddrIANARegistries lists every entry of the IANA IPv4 and IPv6
// Special-Purpose Address Registries (and the special blocks of the address
// space registries) with an address inside it, and the dial guard's
// verdict without AllowedAddresses. Entries marked global are "Globally
// Reachable = True" in the registry and blocked for the reason given in
// blockedRanges. The allowed cases are the public neighbours of blocked
// ranges.
func TestCheckAddrIANARegistries(t *testing.T) {
	for _, c := range []struct {
		name, addr string
		blocked    bool
		reason     string // a substring of the refusal
	}{
		// IPv4 Special-Purpose Address Registry.
		{"0.0.0.0/8 this network", "0.1.2.3", true, "this network"},
		{"0.0.0.0/32 this host", "0.0.0.0", true, "this host"},
		{"10.0.0.0/8 private", "10.200.0.1", true, "private"},
		{"100.64.0.0/10 shared address space", "100.127.255.254", true, "carrier-grade NAT"},
		{"127.0.0.0/8 loopback", "127.1.2.3", true, "loopback"},
		{"169.254.0.0/16 link-local", "169.254.169.254", true, "link-local"},
		{"172.16.0.0/12 private", "172.20.0.1", true, "private"},
		{"192.0.0.0/24 IETF protocol assignments", "192.0.0.100", true, "IETF protocol assignments"},
		{"192.0.0.0/29 IPv4 service continuity", "192.0.0.2", true, "service continuity"},
		{"192.0.0.8/32 IPv4 dummy", "192.0.0.8", true, "dummy"},
		{"192.0.0.9/32 PCP anycast (global)", "192.0.0.9", true, "PCP anycast"},
		{"192.0.0.10/32 TURN anycast (global)", "192.0.0.10", true, "TURN anycast"},
		{"192.0.0.170/32 NAT64 discovery", "192.0.0.170", true, "NAT64/DNS64 discovery"},
		{"192.0.0.171/32 DNS64 discovery", "192.0.0.171", true, "NAT64/DNS64 discovery"},
		{"192.0.2.0/24 TEST-NET-1", "192.0.2.55", true, "documentation"},
		{"192.31.196.0/24 AS112-v4 (global)", "192.31.196.1", true, "AS112"},
		{"192.52.193.0/24 AMT (global)", "192.52.193.1", true, "AMT"},
		{"192.88.99.0/24 deprecated 6to4 relay anycast", "192.88.99.1", true, "6to4 relay"},
		{"192.88.99.2/32 6a44 relay anycast", "192.88.99.2", true, "6to4 relay"},
		{"192.168.0.0/16 private", "192.168.255.1", true, "private"},
		{"192.175.48.0/24 AS112 direct delegation (global)", "192.175.48.6", true, "AS112"},
		{"198.18.0.0/15 benchmarking", "198.19.255.1", true, "benchmarking"},
		{"198.51.100.0/24 TEST-NET-2", "198.51.100.1", true, "documentation"},
		{"203.0.113.0/24 TEST-NET-3", "203.0.113.254", true, "documentation"},
		{"240.0.0.0/4 reserved", "250.1.2.3", true, "reserved"},
		{"255.255.255.255/32 limited broadcast", "255.255.255.255", true, "broadcast"},
		{"224.0.0.0/4 multicast (own registry)", "239.1.2.3", true, "multicast"},

		// IPv6 Special-Purpose Address Registry.
		{"::1/128 loopback", "::1", true, "loopback"},
		{"::/128 unspecified", "::", true, "unspecified"},
		{"::ffff:0:0/96 IPv4-mapped", "::ffff:8.8.8.8", true, "IPv4-mapped"},
		{"64:ff9b::/96 NAT64 (global)", "64:ff9b::a00:1", true, "NAT64"},
		{"64:ff9b:1::/48 local-use NAT64", "64:ff9b:1::a00:1", true, "local-use NAT64"},
		{"100::/64 discard-only", "100::1", true, "discard-only"},
		{"100:0:0:1::/64 dummy prefix", "100:0:0:1::1", true, "dummy"},
		{"2001::/23 IETF protocol assignments", "2001:1ff::1", true, "IETF protocol assignments"},
		{"2001::/32 Teredo", "2001:0:4136:e378::1", true, "Teredo"},
		{"2001:1::1/128 PCP anycast (global)", "2001:1::1", true, "PCP anycast"},
		{"2001:1::2/128 TURN anycast (global)", "2001:1::2", true, "TURN anycast"},
		{"2001:1::3/128 DNS-SD SRP anycast (global)", "2001:1::3", true, "SRP anycast"},
		{"2001:2::/48 benchmarking", "2001:2::1", true, "benchmarking"},
		{"2001:3::/32 AMT (global)", "2001:3::1", true, "AMT"},
		{"2001:4:112::/48 AS112-v6 (global)", "2001:4:112::1", true, "AS112"},
		{"2001:10::/28 deprecated ORCHID", "2001:10::1", true, "ORCHID"},
		{"2001:20::/28 ORCHIDv2 (global)", "2001:2f::1", true, "ORCHIDv2"},
		{"2001:30::/28 drone remote ID DETs (global)", "2001:30::1", true, "drone remote ID"},
		{"2001:db8::/32 documentation", "2001:db8::1", true, "documentation"},
		{"2002::/16 6to4", "2002:a00:1::1", true, "6to4"},
		{"2620:4f:8000::/48 AS112 direct delegation (global)", "2620:4f:8000::42", true, "AS112"},
		{"3fff::/20 documentation (RFC 9637)", "3fff:fff::1", true, "documentation"},
		{"5f00::/16 SRv6 SIDs", "5f00::1", true, "SRv6"},
		{"fc00::/7 unique local", "fd00::1", true, "unique local"},
		{"fe80::/10 link-local", "fe80::1", true, "link-local"},

		// IPv6 address space registry: special blocks outside the
		// special-purpose registry, and what is not global unicast.
		{"::/96 IPv4-compatible", "::a00:1", true, "IPv4-compatible"},
		{"::/96 IPv4-compatible public", "::8.8.8.8", true, "IPv4-compatible"},
		{"fec0::/10 site-local", "fec0::1", true, "site-local"},
		{"ff00::/8 multicast", "ff02::1", true, "multicast"},
		{"::/8 reserved by the IETF", "::1:0:0:1", true, "global unicast"},
		{"4000::/3 reserved by the IETF", "4000::1", true, "global unicast"},
		{"e000::/4 reserved by the IETF", "e000::1", true, "global unicast"},

		// Public neighbours stay allowed.
		{"below 100.64.0.0/10", "100.63.255.255", false, ""},
		{"above 100.64.0.0/10", "100.128.0.0", false, ""},
		{"above 172.16.0.0/12", "172.32.0.1", false, ""},
		{"next to 192.0.0.0/24", "192.0.1.1", false, ""},
		{"next to 192.88.99.0/24", "192.88.98.1", false, ""},
		{"below 198.18.0.0/15", "198.17.255.255", false, ""},
		{"above 198.18.0.0/15", "198.20.0.1", false, ""},
		{"below 224.0.0.0/4", "223.255.255.254", false, ""},
		{"public IPv4", "8.8.8.8", false, ""},
		{"above 2001::/23", "2001:200::1", false, ""},
		{"next to 2001:db8::/32", "2001:db9::1", false, ""},
		{"below 3fff::/20", "3ffe:ffff::1", false, ""},
		{"above 3fff::/20", "3fff:1000::1", false, ""},
		{"next to 2620:4f:8000::/48", "2620:4f:8001::1", false, ""},
		{"public IPv6", "2606:4700::1111", false, ""},
		{"public IPv6 2a00::/12", "2a00:1450:4001::200e", false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := checkAddr(netip.MustParseAddr(c.addr), nil)
			if !c.blocked {
				if err != nil {
					t.Fatalf("checkAddr(%s) = %v, want allowed", c.addr, err)
				}
				return
			}
			var be *blockedAddressError
			if !errors.As(err, &be) || !errors.Is(err, ErrSecurityPolicy) {
				t.Fatalf("checkAddr(%s) = %v, want a blockedAddressError matching ErrSecurityPolicy", c.addr, err)
			}
			if !strings.Contains(be.reason, c.reason) {
				t.Errorf("checkAddr(%s) reason %q, want it to mention %q", c.addr, be.reason, c.reason)
			}
			// The allowlist still overrides every entry.
			allow := []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr(c.addr), 128).Masked()}
			if a := netip.MustParseAddr(c.addr); a.Is4() {
				allow[0] = netip.PrefixFrom(a, 32)
			}
			if err := checkAddr(netip.MustParseAddr(c.addr), allow); err != nil {
				t.Errorf("checkAddr(%s) within AllowedAddresses = %v", c.addr, err)
			}
		})
	}
}

// TestURLPolicyOddIPv4OnHops: the URL policy refuses IPv4 spellings other
// than dotted decimal on every redirect hop and in a discovered jwks_uri, as
// it does at registration (TestURLPolicyIPv4Spellings). The dial never
// happens: the refusal is ClassRedirect or ClassParse, not a dial error.
func TestURLPolicyOddIPv4OnHops(t *testing.T) {
	const discPath = "/.well-known/openid-configuration"
	idp, srv := tlsIdP(t)
	port := portOf(t, srv)
	f := newTestFetcher(t, tlsOptions(idp))
	for _, c := range []struct{ name, host string }{
		{"decimal", "2130706433"},
		{"hex", "0x7f000001"},
		{"octal parts", "0177.0.0.01"},
		{"two parts", "127.1"},
		{"hex parts", "0x7f.0x0.0x0.0x1"},
		{"trailing dot", "127.0.0.1."},
		{"name ending in a hex label", "idp.0x10"},
		{"fullwidth digits", "\uff11\uff12\uff17.0.0.1"},
	} {
		target := "https://" + c.host + ":" + port + jwksPath
		t.Run("redirect to "+c.name, func(t *testing.T) {
			idp.SetRedirect("/hop", target)
			before := idp.Requests(jwksPath)
			_, err := f.fetchKeys(t.Context(), testReg(t, f, nil), srv.URL+"/hop", validators{})
			wantFetchError(t, err, ClassRedirect)
			wantIs(t, err, true, ErrSecurityPolicy)
			if n := idp.Requests(jwksPath) - before; n != 0 {
				t.Errorf("the refused hop reached the IdP %d times", n)
			}
		})
		t.Run("jwks_uri "+c.name, func(t *testing.T) {
			idp.SetDiscovery(discPath, srv.URL, target)
			reg := testReg(t, f, func(r *Registration) { r.JWKSURL, r.Issuer = "", srv.URL })
			_, err := f.fetchDiscovery(t.Context(), reg, validators{})
			wantFetchError(t, err, ClassParse)
			wantIs(t, err, true, ErrSecurityPolicy)
		})
	}
}

// TestFetchTransportPerPinSet: one built-in transport per pin set (in any
// order, repeats ignored), counted by registration, closed and dropped when
// the last one goes; a fetch without a counted entry still gets a working
// transport.
func TestFetchTransportPerPinSet(t *testing.T) {
	idp := testidp.New()
	idp.SetKeys(jwksPath, testidp.NewKey("ES256", "ec-1"))
	var opened, closed atomic.Int32
	closedCh := make(chan struct{}, 16)
	srv := httptest.NewUnstartedServer(idp)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{idp.Certificate()}}
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			opened.Add(1)
		case http.StateClosed:
			closed.Add(1)
			closedCh <- struct{}{}
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	u := srv.URL + jwksPath
	leafPin, caPin := testidp.SPKIPin(idp.Leaf()), testidp.SPKIPin(idp.CA())
	waitClosed := func(t *testing.T) {
		t.Helper()
		select {
		case <-closedCh:
		case <-time.After(10 * time.Second):
			t.Fatalf("the idle connection was not closed")
		}
	}
	entry := func(f *fetcher, pins [][32]byte) *pinTransport {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.transports[pinKey(pins)]
	}

	t.Run("two providers share one transport; the last release closes it", func(t *testing.T) {
		f := newTestFetcher(t, tlsOptions(idp))
		regA := testReg(t, f, func(r *Registration) { r.PinnedSPKI = []string{leafPin, caPin} })
		regB := testReg(t, f, func(r *Registration) { r.PinnedSPKI = []string{caPin, leafPin, caPin} })
		f.acquirePins(regA.pins())
		f.acquirePins(regB.pins())
		if n := len(f.transports); n != 1 {
			t.Fatalf("%d transports for one pin set in two orders", n)
		}
		if f.transport(regA.pins()) != f.transport(regB.pins()) {
			t.Fatalf("the same pin set in another order got another transport")
		}
		if e := entry(f, regA.pins()); e == nil || e.users != 2 {
			t.Fatalf("entry = %+v, want 2 users", e)
		}
		opened0 := opened.Load()
		wantKeys(t, mustFetchKeys(t, f, regA, u, validators{}), 1)

		f.releasePins(regA.pins())
		e := entry(f, regB.pins())
		if e == nil || e.users != 1 {
			t.Fatalf("after one release: entry = %+v, want 1 user", e)
		}
		// The transport kept its idle connection: regB reuses it.
		wantKeys(t, mustFetchKeys(t, f, regB, u, validators{}), 1)
		if n := opened.Load() - opened0; n != 1 {
			t.Errorf("%d connections for two fetches through one kept transport, want 1", n)
		}
		if n := closed.Load(); n != 0 {
			t.Errorf("%d connections closed while a user remained", n)
		}

		f.releasePins(regB.pins())
		if e := entry(f, regB.pins()); e != nil {
			t.Errorf("entry still present after the last release: %+v", e)
		}
		if n := len(f.transports); n != 0 {
			t.Errorf("%d transports left", n)
		}
		waitClosed(t)
	})

	t.Run("distinct sets get distinct transports, the empty set too", func(t *testing.T) {
		f := newTestFetcher(t, tlsOptions(idp))
		leaf := testReg(t, f, func(r *Registration) { r.PinnedSPKI = []string{leafPin} })
		none := testReg(t, f, nil)
		f.acquirePins(leaf.pins())
		f.acquirePins(none.pins())
		f.acquirePins(nil)
		if f.transport(leaf.pins()) == f.transport(none.pins()) {
			t.Fatalf("pinned and unpinned providers share a transport")
		}
		if e := entry(f, nil); e == nil || e.users != 2 {
			t.Fatalf("empty set entry = %+v, want 2 users", e)
		}
		f.releasePins(leaf.pins())
		f.releasePins(none.pins())
		if e := entry(f, nil); e == nil || e.users != 1 {
			t.Fatalf("empty set entry = %+v, want 1 user", e)
		}
		f.releasePins([][32]byte{})
		if n := len(f.transports); n != 0 {
			t.Errorf("%d transports left", n)
		}
	})

	t.Run("a fetch without a counted entry works and is pruned later", func(t *testing.T) {
		f := newTestFetcher(t, tlsOptions(idp))
		reg := testReg(t, f, func(r *Registration) { r.PinnedSPKI = []string{leafPin} })
		f.acquirePins(reg.pins())
		f.releasePins(reg.pins()) // unregistered; a refresh already running goes on
		tr := f.transport(reg.pins())
		if tr == nil {
			t.Fatal("no transport")
		}
		wantKeys(t, mustFetchKeys(t, f, reg, u, validators{}), 1)
		if e := entry(f, reg.pins()); e == nil || e.users != 0 {
			t.Fatalf("uncounted entry = %+v", e)
		}
		closed0 := closed.Load()
		f.acquirePins(nil) // any acquire or release prunes it
		if e := entry(f, reg.pins()); e != nil {
			t.Errorf("uncounted entry not pruned: %+v", e)
		}
		if e := entry(f, nil); e == nil || e.users != 1 {
			t.Errorf("the acquired entry = %+v", e)
		}
		waitClosed(t)
		if closed.Load() == closed0 {
			t.Errorf("no connection closed")
		}
		// The pruned transport still works for whoever holds it.
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("pruned transport: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("pruned transport: status %d", resp.StatusCode)
		}
	})

	t.Run("release without acquire is a no-op", func(t *testing.T) {
		f := newTestFetcher(t, tlsOptions(idp))
		f.acquirePins(nil)
		f.releasePins([][32]byte{{1}})
		f.releasePins([][32]byte{{1}})
		if e := entry(f, nil); e == nil || e.users != 1 {
			t.Errorf("entry = %+v, want 1 user", e)
		}
	})

	t.Run("caller's transport: nothing counted", func(t *testing.T) {
		custom := &http.Transport{}
		f := newTestFetcher(t, Options{HTTPClient: &http.Client{Transport: custom}})
		f.acquirePins(nil)
		if f.transport(nil) != custom || len(f.transports) != 0 {
			t.Errorf("transport = %v with %d entries", f.transport(nil), len(f.transports))
		}
		f.releasePins(nil)
	})

	t.Run("concurrent users", func(t *testing.T) {
		f := newTestFetcher(t, Options{})
		sets := [][][32]byte{nil, {{1}}, {{1}, {2}}, {{2}, {1}}, {{3}}}
		var wg sync.WaitGroup
		for g := range 16 {
			wg.Go(func() {
				for i := range 200 {
					pins := sets[(g+i)%len(sets)]
					f.acquirePins(pins)
					if f.transport(pins) == nil {
						t.Error("nil transport")
					}
					f.releasePins(pins)
				}
			})
		}
		wg.Wait()
		if n := len(f.transports); n != 0 {
			t.Errorf("%d transports left after every user went", n)
		}
	})
}

func TestPinKey(t *testing.T) {
	a, b, c := [32]byte{1}, [32]byte{2}, [32]byte{3}
	for _, tc := range []struct {
		name string
		x, y [][32]byte
		same bool
	}{
		{"order", [][32]byte{a, b, c}, [][32]byte{c, a, b}, true},
		{"repeats", [][32]byte{a, b}, [][32]byte{b, a, b, a}, true},
		{"empty and nil", nil, [][32]byte{}, true},
		{"subset", [][32]byte{a, b}, [][32]byte{a}, false},
		{"other pin", [][32]byte{a}, [][32]byte{b}, false},
		{"none and one", nil, [][32]byte{a}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := slices.Clone(tc.x)
			if got := pinKey(tc.x) == pinKey(tc.y); got != tc.same {
				t.Errorf("pinKey equal = %v, want %v", got, tc.same)
			}
			if !slices.Equal(x, tc.x) {
				t.Errorf("pinKey reordered its argument")
			}
		})
	}
}

// hostileTransport answers every request with resp, built per request.
type hostileTransport func(*http.Request) *http.Response

func (h hostileTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp := h(req)
	resp.Request = req
	if resp.Header == nil {
		resp.Header = http.Header{}
	}
	if resp.Body == nil {
		resp.Body = io.NopCloser(strings.NewReader(""))
	}
	return resp, nil
}

// TestFetchErrorTextCapped: upstream data of 100 KB (an issuer, a status
// line, a Content-Encoding, a redirect target, a certificate-sized parser
// message) never makes a FetchError text longer than about a KiB, and the
// text still names the tenant, provider and URL.
func TestFetchErrorTextCapped(t *testing.T) {
	const issuer = "https://idp.test"
	huge := strings.Repeat("A", 100<<10)
	ok := func(body string, hdr ...string) *http.Response {
		h := http.Header{"Content-Type": {"application/json"}}
		for i := 0; i+1 < len(hdr); i += 2 {
			h.Set(hdr[i], hdr[i+1])
		}
		return &http.Response{StatusCode: 200, Status: "200 OK", Header: h, Body: io.NopCloser(strings.NewReader(body))}
	}
	for _, c := range []struct {
		name   string
		resp   func(*http.Request) *http.Response
		disc   bool
		class  ErrorClass
		limit  int
		status int
	}{
		{"discovery issuer", func(*http.Request) *http.Response {
			return ok(`{"issuer":"https://evil.test/` + huge + `","jwks_uri":"https://idp.test/jwks.json"}`)
		}, true, ClassParse, 1200, 0},
		{"discovery issuer invalid UTF-8", func(*http.Request) *http.Response {
			return ok(`{"issuer":"` + strings.Repeat("\xff", 100<<10) + `","jwks_uri":"https://idp.test/jwks.json"}`)
		}, true, ClassParse, 1200, 0},
		{"discovery jwks_uri", func(*http.Request) *http.Response {
			return ok(`{"issuer":"` + issuer + `","jwks_uri":"http://idp.test/` + huge + `"}`)
		}, true, ClassParse, 1200, 0},
		{"discovery JSON error", func(*http.Request) *http.Response {
			return ok(`{"issuer":"` + issuer + `","jwks_uri":1,"` + huge + `":[}`)
		}, true, ClassParse, 1200, 0},
		{"status line", func(*http.Request) *http.Response {
			return &http.Response{StatusCode: 599, Status: "599 " + huge}
		}, false, ClassStatus, 1200, 599},
		{"Content-Encoding", func(*http.Request) *http.Response {
			return ok(`{"keys":[]}`, "Content-Encoding", huge)
		}, false, ClassParse, 1200, 0},
		// The hop URL shows twice (as the URL and in the policy message),
		// each capped.
		{"redirect target", func(*http.Request) *http.Response {
			return &http.Response{StatusCode: 302, Status: "302 Found", Header: http.Header{"Location": {"http://idp.test/" + huge}}}
		}, false, ClassRedirect, 2000, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newTestFetcher(t, Options{HTTPClient: &http.Client{Transport: hostileTransport(c.resp)}})
			reg := testReg(t, f, func(r *Registration) {
				r.Retry.MaxRetries = -1
				if c.disc {
					r.JWKSURL, r.Issuer = "", issuer
				}
			})
			var err error
			u := "https://idp.test/jwks.json"
			if c.disc {
				u = issuer + "/.well-known/openid-configuration"
				_, err = f.fetchDiscovery(t.Context(), reg, validators{})
			} else {
				_, err = f.fetchKeys(t.Context(), reg, u, validators{})
			}
			fe := wantFetchError(t, err, c.class)
			msg := err.Error()
			if len(msg) > c.limit {
				t.Errorf("error text of %d bytes, want at most %d: %.300s...", len(msg), c.limit, msg)
			}
			if !utf8.ValidString(msg) {
				t.Errorf("error text is not valid UTF-8")
			}
			if c.class == ClassRedirect {
				u = "http://idp.test/AAAA" // the refused hop, capped
			}
			if !strings.Contains(msg, "acme/auth0") || !strings.Contains(msg, "fetch "+u) {
				t.Errorf("error text does not name acme/auth0 and %s: %.300s", u, msg)
			}
			t.Logf("%d bytes: %.200s", len(msg), msg)
			if fe.StatusCode != c.status {
				t.Errorf("StatusCode = %d, want %d", fe.StatusCode, c.status)
			}
		})
	}
}

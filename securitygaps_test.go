package jwkscache

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

// Tests that close the testable "Known gaps" of docs/security.md: proxy
// environment variables (threat 2), the cap on response headers (threat 5)
// and pins with an untrusted chain, on a redirect hop and on a provider
// that serves keys (threat 10). Every test runs against loopback TLS
// servers; none touches the internet or sleeps.

const sgPath = "/sg/jwks.json"

// sgManager returns a Manager with opts, closed when the test ends.
func sgManager(t *testing.T, opts Options) *Manager {
	t.Helper()
	m, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// sgRetry makes two attempts with a 1 ms backoff: a retried fault costs
// two requests and no noticeable time.
var sgRetry = RetryPolicy{MaxRetries: 1, AttemptTimeout: 5 * time.Second, Deadline: 10 * time.Second,
	InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}

// sgRefreshError refreshes acme/main and fails the test unless the refresh
// fails with a *FetchError of class.
func sgRefreshError(t *testing.T, m *Manager, class ErrorClass) (*FetchError, error) {
	t.Helper()
	err := m.Refresh(t.Context(), mtTenant, mtProvider)
	var fe *FetchError
	if !errors.As(err, &fe) {
		t.Fatalf("Refresh: %v (%T), want a *FetchError of class %s", err, err, class)
	}
	if fe.Class != class {
		t.Fatalf("Refresh: class %q, want %q; error: %v", fe.Class, class, err)
	}
	return fe, err
}

// sgKeptOnly checks that acme/main still serves exactly want, is Ready,
// and reports the failure of class in its status.
func sgKeptOnly(t *testing.T, m *Manager, class ErrorClass, want *testidp.Key) ProviderStatus {
	t.Helper()
	mtMustKey(t, m, mtTenant, mtProvider, want)
	st := mtStatus(t, m, mtTenant, mtProvider)
	if got := mtStatusKIDs(st); !slices.Equal(got, []string{want.KID}) {
		t.Errorf("status keys %v, want only the last good key %q", got, want.KID)
	}
	if st.State != StateReady {
		t.Errorf("state %v, want %v (the last good keys still serve)", st.State, StateReady)
	}
	if st.LastErrorClass != string(class) || st.ErrorCount < 1 || st.LastError == "" {
		t.Errorf("status: LastErrorClass %q, ErrorCount %d, LastError %q; want class %q, at least one error",
			st.LastErrorClass, st.ErrorCount, st.LastError, class)
	}
	return st
}

// TestFetchIgnoresProxyEnvironment: with HTTPS_PROXY and HTTP_PROXY (both
// spellings) pointing at a loopback proxy, a Manager fetches the JWKS
// directly from the IdP, and the proxy sees no request.
//
// The IdP is addressed by a name, idp.test: Go's environment proxy rules
// never proxy "localhost" or a loopback IP literal, so an https://127.0.0.1
// URL would bypass even a transport that honoured HTTPS_PROXY, and the
// test could not fail. The test makes the built-in transport's dialer,
// before its first use, dial idp.test:PORT as 127.0.0.1:PORT through the
// original dialer (dial guard included); the proxy's address is dialled
// unchanged. A control fetch through a transport that does use the proxy
// shows that the proxy sees a CONNECT for that URL.
//
// http.ProxyFromEnvironment reads the environment once per process, so a
// transport using it would keep whatever an earlier test saw; the test
// therefore also checks that the Manager's built-in transports have no
// Proxy function at all.
func TestFetchIgnoresProxyEnvironment(t *testing.T) {
	var proxied atomic.Int64
	var seen sync.Map // method and target of every proxied request
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied.Add(1)
		seen.Store(r.Method+" "+r.Host, true)
		http.Error(w, "proxy: not forwarding", http.StatusBadGateway)
	}))
	t.Cleanup(proxy.Close)
	for _, k := range []string{"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"} {
		t.Setenv(k, proxy.URL)
	}
	t.Setenv("NO_PROXY", "")
	t.Setenv("no_proxy", "")

	idp := testidp.New()
	k1 := testidp.NewKey("ES256", "k1")
	i6Serve(idp, sgPath, 3600, k1)
	srv := idp.StartTLS(t)
	port := portOf(t, srv)
	named := "idp.test:" + port // the IdP's certificate names idp.test
	u := "https://" + named + sgPath

	m := sgManager(t, Options{RootCAs: idp.CertPool(), AllowedAddresses: loopbackPrefixes})
	tr, ok := m.fetcher.transport(nil).(*http.Transport)
	if !ok {
		t.Fatalf("built-in transport is %T, want *http.Transport", m.fetcher.transport(nil))
	}
	dial := tr.DialContext
	var dialled sync.Map
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialled.Store(addr, true)
		if addr == named {
			addr = "127.0.0.1:" + port
		}
		return dial(ctx, network, addr)
	}
	if err := m.Register(t.Context(), Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: u, Retry: sgRetry}); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if err := m.Refresh(t.Context(), mtTenant, mtProvider); err != nil {
		t.Fatalf("Refresh with HTTPS_PROXY set: %v", err)
	}
	mtMustKey(t, m, mtTenant, mtProvider, k1)
	if n := proxied.Load(); n != 0 {
		var reqs []string
		seen.Range(func(k, _ any) bool { reqs = append(reqs, k.(string)); return true })
		t.Errorf("the proxy saw %d requests (%v), want none", n, reqs)
	}
	if _, ok := dialled.Load(named); !ok {
		t.Errorf("the built-in transport never dialled %s itself", named)
	}
	if n := idp.Requests(sgPath); n < 1 {
		t.Errorf("the IdP saw %d requests, want the fetch to reach it directly", n)
	}

	// The built-in transports, unpinned and pinned, have no Proxy.
	for _, pins := range [][][32]byte{nil, {{1}}} {
		tr, ok := m.fetcher.transport(pins).(*http.Transport)
		if !ok || tr.Proxy != nil {
			t.Errorf("built-in transport (%d pins): %T, Proxy set %v; want an *http.Transport without Proxy", len(pins), m.fetcher.transport(pins), ok && tr.Proxy != nil)
		}
	}

	// Control: a fetch of the same URL through a transport that uses the
	// proxy reaches the proxy (a CONNECT for idp.test:PORT) and fails.
	proxyURL, err := url.Parse(proxy.URL)
	if err != nil {
		t.Fatal(err)
	}
	viaProxy := &http.Transport{Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: idp.CertPool()}}
	t.Cleanup(viaProxy.CloseIdleConnections)
	f := newTestFetcher(t, Options{HTTPClient: &http.Client{Transport: viaProxy}, AllowedAddresses: loopbackPrefixes})
	if _, err := f.fetchKeys(t.Context(), testReg(t, f, nil), u, validators{}); err == nil {
		t.Errorf("control fetch through the proxy succeeded; the proxy does not forward")
	}
	if _, ok := seen.Load(http.MethodConnect + " " + named); !ok {
		t.Errorf("control: the proxy saw %d requests, none a CONNECT to %s; it would not notice a proxied fetch", proxied.Load(), named)
	}
}

// TestFetchResponseHeaderCap: the built-in transport reads at most 64 KiB
// of response headers, over HTTP/1.1 and HTTP/2. A 200 whose headers total
// just under the cap (two headers of 31.5 KiB) loads; one just over it (two
// of 33 KiB, each under the cap alone) fails with class network (the transport's error, retried like
// any network error, matching ErrUpstream and neither ErrTooLarge nor
// ErrSecurityPolicy), the new keys are not taken, and the provider keeps
// serving its last good keys.
func TestFetchResponseHeaderCap(t *testing.T) {
	const limit = 64 << 10
	for _, proto := range []string{"HTTP/1.1", "HTTP/2.0"} {
		t.Run(proto, func(t *testing.T) {
			idp := testidp.New()
			k1, k2 := testidp.NewKey("ES256", "k1"), testidp.NewKey("ES256", "k2")
			i6Serve(idp, sgPath, 3600, k1)
			var otherProto atomic.Value
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Proto != proto {
					otherProto.Store(r.Proto)
				}
				idp.ServeHTTP(w, r)
			}))
			srv.EnableHTTP2 = proto == "HTTP/2.0"
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{idp.Certificate()}}
			srv.StartTLS()
			t.Cleanup(srv.Close)
			m := sgManager(t, Options{RootCAs: idp.CertPool(), AllowedAddresses: loopbackPrefixes})

			// Just under the cap: loads.
			pad := func(each int) {
				idp.SetHeader(sgPath, "X-Pad-1", strings.Repeat("a", each))
				idp.SetHeader(sgPath, "X-Pad-2", strings.Repeat("b", each))
			}
			pad(limit/2 - 512)
			if err := m.Register(t.Context(), Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: srv.URL + sgPath, Retry: sgRetry}); err != nil {
				t.Fatalf("Register: %v", err)
			}
			if err := m.Refresh(t.Context(), mtTenant, mtProvider); err != nil {
				t.Fatalf("Refresh with %d bytes of headers (under the cap): %v", limit-1<<10, err)
			}
			mtMustKey(t, m, mtTenant, mtProvider, k1)

			// Just over the cap: refused, k2 never taken, k1 kept.
			idp.SetKeys(sgPath, k2)
			pad(limit/2 + 1<<10)
			before := idp.Requests(sgPath)
			fe, err := sgRefreshError(t, m, ClassNetwork)
			wantIs(t, err, true, ErrUpstream)
			wantIs(t, err, false, ErrTooLarge, ErrSecurityPolicy)
			t.Logf("over the cap: %v", err)
			if fe.URL != srv.URL+sgPath || fe.StatusCode != 0 {
				t.Errorf("FetchError URL %q status %d, want %q and no status (the response was never read)", fe.URL, fe.StatusCode, srv.URL+sgPath)
			}
			if n := idp.Requests(sgPath) - before; n != 2 {
				t.Errorf("%d requests, want 2 (class network is retried once under MaxRetries 1)", n)
			}
			sgKeptOnly(t, m, ClassNetwork, k1)

			// Back under the cap, the new keys load: the refusal was the headers.
			pad(1)
			if err := m.Refresh(t.Context(), mtTenant, mtProvider); err != nil {
				t.Fatalf("Refresh after the headers shrank: %v", err)
			}
			mtMustKey(t, m, mtTenant, mtProvider, k2)
			if p := otherProto.Load(); p != nil {
				t.Errorf("the IdP was asked over %v, want %s only", p, proto)
			}
		})
	}
}

// TestFetchPinMatchUntrustedChain: with the built-in transport, pins that
// match the certificates presented (the leaf's, the CA's) do not make an
// untrusted chain acceptable: chain verification runs first, the fetch
// fails with class tls (ErrUpstream, not ErrSecurityPolicy), and no
// request reaches the IdP. The same pins with the CA trusted load.
func TestFetchPinMatchUntrustedChain(t *testing.T) {
	idp, srv := tlsIdP(t)
	u := srv.URL + jwksPath
	pins := []string{testidp.SPKIPin(idp.Leaf()), testidp.SPKIPin(idp.CA())}

	// A pool holding another root only: the IdP's chain does not verify.
	_, other := selfSignedCert(t, net.IPv4(127, 0, 0, 1))
	untrusted := x509.NewCertPool()
	untrusted.AddCert(other)
	for name, pool := range map[string]*x509.CertPool{"other root": untrusted, "system roots": nil} {
		t.Run(name, func(t *testing.T) {
			f := newTestFetcher(t, Options{RootCAs: pool, AllowedAddresses: loopbackPrefixes})
			for _, pin := range append([][]string{pins}, []string{pins[0]}, []string{pins[1]}) {
				reg := testReg(t, f, func(r *Registration) { r.PinnedSPKI = pin })
				before := idp.TotalRequests()
				_, err := f.fetchKeys(t.Context(), reg, u, validators{})
				wantFetchError(t, err, ClassTLS)
				wantIs(t, err, true, ErrUpstream)
				wantIs(t, err, false, ErrSecurityPolicy)
				if !strings.Contains(err.Error(), "unknown authority") {
					t.Errorf("error %q is not a chain verification failure", err)
				}
				if n := idp.TotalRequests() - before; n != 0 {
					t.Errorf("%d requests over an untrusted, pinned connection", n)
				}
			}
		})
	}

	t.Run("control: trusted", func(t *testing.T) {
		f := newTestFetcher(t, tlsOptions(idp))
		reg := testReg(t, f, func(r *Registration) { r.PinnedSPKI = pins[:1] })
		wantKeys(t, mustFetchKeys(t, f, reg, u, validators{}), 3)
	})
}

// TestFetchPinMismatchOnRedirectHop: pins are checked on every hop's
// handshake. The first hop (a front server whose key is pinned) redirects
// to a second TLS server, trusted but with another key: the fetch fails
// with class pin, matches ErrSecurityPolicy, names the second hop, and
// the second server sees no request. With its key pinned too, the same
// redirect loads.
func TestFetchPinMismatchOnRedirectHop(t *testing.T) {
	idp, srv := tlsIdP(t)
	target := srv.URL + jwksPath

	cert, root := selfSignedCert(t, net.IPv4(127, 0, 0, 1))
	var frontHits atomic.Int64
	front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		frontHits.Add(1)
		http.Redirect(w, r, target, http.StatusFound)
	}))
	front.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	front.StartTLS()
	t.Cleanup(front.Close)

	pool := idp.CertPool()
	pool.AddCert(root)
	frontPin := testidp.SPKIPin(root)
	f := newTestFetcher(t, Options{RootCAs: pool, AllowedAddresses: loopbackPrefixes})

	reg := testReg(t, f, func(r *Registration) { r.PinnedSPKI = []string{frontPin} })
	_, err := f.fetchKeys(t.Context(), reg, front.URL+"/start", validators{})
	fe := wantFetchError(t, err, ClassPin)
	wantIs(t, err, true, ErrSecurityPolicy)
	wantIs(t, err, false, ErrUpstream)
	if fe.URL != target {
		t.Errorf("URL = %q, want the refused hop %q", fe.URL, target)
	}
	if n := frontHits.Load(); n != 1 {
		t.Errorf("the pinned first hop was requested %d times, want 1", n)
	}
	if n := idp.TotalRequests(); n != 0 {
		t.Errorf("%d requests reached the unpinned second hop", n)
	}

	// Control: with the second hop's leaf pinned as well, the redirect
	// is followed and the keys load.
	both := testReg(t, f, func(r *Registration) { r.PinnedSPKI = []string{frontPin, testidp.SPKIPin(idp.Leaf())} })
	before := idp.TotalRequests()
	res := mustFetchKeys(t, f, both, front.URL+"/start", validators{})
	wantKeys(t, res, 3)
	if n := idp.TotalRequests() - before; res.URL != target || n != 1 {
		t.Errorf("control: final URL %q, %d IdP requests; want %q and 1", res.URL, n, target)
	}
}

// TestRefreshPinFailureKeepsServedKeys: a provider pinned to its IdP's
// TLS key serves k1; the server then presents another certificate, trusted
// by RootCAs but with another key (an attacker's certificate from a rogue
// CA, or an unannounced key rotation), and serves k2. The refresh fails
// with class pin before any request, Status reports it, k1 keeps serving
// and k2 is never taken, not even by a lookup of k2.
func TestRefreshPinFailureKeepsServedKeys(t *testing.T) {
	idp := testidp.New()
	k1, k2 := testidp.NewKey("ES256", "k1"), testidp.NewKey("ES256", "k2")
	i6Serve(idp, sgPath, 3600, k1)

	// A server whose certificate can be switched between handshakes. The
	// rotated certificate is trusted from the start: only the pin refuses it.
	rotated := fmCert(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), net.IPv4(127, 0, 0, 1))
	pool := idp.CertPool()
	pool.AddCert(rotated.Leaf)
	var cur atomic.Pointer[tls.Certificate]
	first := idp.Certificate()
	cur.Store(&first)
	srv := httptest.NewUnstartedServer(idp)
	srv.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return &tls.Config{Certificates: []tls.Certificate{*cur.Load()}}, nil
	}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes refused on purpose
	srv.StartTLS()
	t.Cleanup(srv.Close)

	m := sgManager(t, Options{RootCAs: pool, AllowedAddresses: loopbackPrefixes})
	if err := m.Register(t.Context(), Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: srv.URL + sgPath,
		PinnedSPKI: []string{testidp.SPKIPin(idp.Leaf())}, Retry: sgRetry}); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if err := m.Refresh(t.Context(), mtTenant, mtProvider); err != nil {
		t.Fatalf("first load: %v", err)
	}
	mtMustKey(t, m, mtTenant, mtProvider, k1)

	idp.SetKeys(sgPath, k2)
	cur.Store(&rotated)
	srv.CloseClientConnections()
	before := idp.Requests(sgPath)
	_, err := sgRefreshError(t, m, ClassPin)
	wantIs(t, err, true, ErrSecurityPolicy)
	wantIs(t, err, false, ErrUpstream)
	if n := idp.Requests(sgPath) - before; n != 0 {
		t.Errorf("%d requests reached the IdP over the unpinned certificate", n)
	}
	st := sgKeptOnly(t, m, ClassPin, k1)
	if !strings.Contains(st.LastError, "pin") {
		t.Errorf("LastError %q does not name the pin", st.LastError)
	}

	// A token's kid k2 makes the cache look again: that fetch fails the pin
	// too, and the lookup fails with ErrKeyNotFound, naming the pin failure.
	got, err := m.Key(t.Context(), mtTenant, mtProvider, k2.KID)
	var kfe *FetchError
	switch {
	case err == nil:
		t.Errorf("Key(k2) = %q from a certificate failing the pin, want an error", got.KeyID)
	case !errors.Is(err, ErrKeyNotFound):
		t.Errorf("Key(k2): %v, want ErrKeyNotFound", err)
	case !errors.As(err, &kfe) || kfe.Class != ClassPin:
		t.Errorf("Key(k2): %v, want it to carry the pin failure of its refresh", err)
	}
	if n := idp.Requests(sgPath) - before; n != 0 {
		t.Errorf("%d requests reached the IdP over the unpinned certificate", n)
	}
	sgKeptOnly(t, m, ClassPin, k1)

	// The IdP's pinned certificate back: the refresh succeeds and takes k2.
	cur.Store(&first)
	srv.CloseClientConnections()
	if err := m.Refresh(t.Context(), mtTenant, mtProvider); err != nil {
		t.Fatalf("Refresh with the pinned certificate back: %v", err)
	}
	mtMustKey(t, m, mtTenant, mtProvider, k2)
	if st := mtStatus(t, m, mtTenant, mtProvider); st.LastErrorClass != "" || st.ErrorCount != 0 {
		t.Errorf("after recovery: LastErrorClass %q, ErrorCount %d, want none", st.LastErrorClass, st.ErrorCount)
	}
}

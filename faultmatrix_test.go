package jwkscache

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

// TestFaultMatrix injects one upstream fault per row into a provider that
// has loaded good keys (k1), triggers a refresh and checks the error class
// the refresh returns, that the last good keys still serve, and the metric
// that moved. Rows marked memory run in a synctest bubble against the fake
// IdP's in-memory RoundTripper (wrapped by fmRT, which can replace the
// answer), so timeouts and Retry-After cost no real time; rows marked tls
// run against a real loopback TLS server whose certificate can be switched,
// because the built-in transport's TLS checks, pins and dial guard need a
// real socket. With -v every row logs a markdown table row for
// docs/faults.md.
func TestFaultMatrix(t *testing.T) {
	fetchErr := func(class ErrorClass) fmMetric {
		return fmMetric{name: metricFetchErrors, labels: map[string]string{"class": string(class)}, prov: true}
	}
	refreshes := func(result string) fmMetric {
		return fmMetric{name: metricRefreshes, labels: map[string]string{"result": result}, prov: true}
	}
	// serveRaw makes the JWKS path answer body with contentType.
	serveRaw := func(body []byte, contentType string) func(t *testing.T, e *fmEnv) {
		return func(t *testing.T, e *fmEnv) { e.idp.SetBody(fmPath, body, contentType) }
	}
	fault := func(f testidp.Fault) func(t *testing.T, e *fmEnv) {
		return func(t *testing.T, e *fmEnv) { e.idp.SetFault(fmPath, f) }
	}
	answer := func(fn func(req *http.Request) (*http.Response, error)) func(t *testing.T, e *fmEnv) {
		return func(t *testing.T, e *fmEnv) { e.rt.fn.Store(&fn) }
	}
	octKey := `{"kty":"oct","kid":"s1","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}`

	rows := []fmRow{
		// Network and timeouts.
		{name: "connect timeout (dial blackhole)", inject: answer(func(req *http.Request) (*http.Response, error) {
			<-req.Context().Done()
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: req.Context().Err()}
		}), class: ClassTimeout, metric: fetchErr(ClassTimeout)},
		{name: "response header timeout", inject: fault(testidp.Fault{Delay: time.Minute}),
			class: ClassTimeout, metric: fetchErr(ClassTimeout)},
		{name: "slow drip body (1 byte / 100ms)", inject: answer(func(req *http.Request) (*http.Response, error) {
			return fmResponse(req, 200, &fmDrip{ctx: req.Context()}), nil
		}), class: ClassTimeout, metric: fetchErr(ClassTimeout)},
		{name: "connection reset mid-body (ECONNRESET)", inject: answer(func(req *http.Request) (*http.Response, error) {
			return fmCutBody(req, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)})
		}), class: ClassNetwork, metric: fetchErr(ClassNetwork)},
		{name: "unexpected EOF mid-body", inject: answer(func(req *http.Request) (*http.Response, error) {
			return fmCutBody(req, io.ErrUnexpectedEOF)
		}), class: ClassNetwork, metric: fetchErr(ClassNetwork)},
		{name: "connection reset before response", inject: fault(testidp.Fault{Reset: true}),
			class: ClassNetwork, metric: fetchErr(ClassNetwork)},
		{name: "connection refused", inject: fault(testidp.Fault{Refuse: true}),
			class: ClassNetwork, metric: fetchErr(ClassNetwork)},
		{name: "DNS failure (no such host)", inject: answer(func(req *http.Request) (*http.Response, error) {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: req.URL.Hostname(), IsNotFound: true}}
		}), class: ClassNetwork, metric: fetchErr(ClassNetwork)},

		// HTTP status.
		{name: "500", inject: fault(testidp.Fault{Status: 500}), class: ClassStatus, status: 500, metric: fetchErr(ClassStatus), attempts: 2},
		{name: "502 storm (every attempt)", inject: fault(testidp.Fault{Status: 502}), class: ClassStatus, status: 502, metric: fetchErr(ClassStatus), attempts: 2},
		{name: "404", inject: fault(testidp.Fault{Status: 404}), class: ClassStatus, status: 404, metric: fetchErr(ClassStatus), attempts: 1},
		{name: "429 with Retry-After: 1", inject: fault(testidp.Fault{Status: 429, RetryAfter: "1"}), class: ClassStatus, status: 429,
			retryAfter: time.Second, metric: fetchErr(ClassStatus), attempts: 2},
		{name: "503 with Retry-After: 1", inject: fault(testidp.Fault{Status: 503, RetryAfter: "1"}), class: ClassStatus, status: 503,
			retryAfter: time.Second, metric: fetchErr(ClassStatus), attempts: 2},

		// Bodies.
		{name: "HTML login page", inject: fault(testidp.Fault{HTML: true}), class: ClassParse, metric: fetchErr(ClassParse)},
		{name: "wrong content type (text/plain JWKS of k1)", inject: func(t *testing.T, e *fmEnv) {
			e.idp.SetBody(fmPath, mtJWKS(t, e.k1.Public), "text/plain")
		}, class: "", metric: refreshes("not_modified"),
			note: "content type ignored by design: the body is parsed; the same keys, so not_modified"},
		{name: "truncated JSON", inject: fault(testidp.Fault{Truncated: true}), class: ClassParse, metric: fetchErr(ClassParse)},
		{name: "truncated JSON, no Content-Length", inject: fault(testidp.Fault{Truncated: true, HideLength: true}), class: ClassParse, metric: fetchErr(ClassParse)},
		{name: `empty set {"keys":[]}`, inject: serveRaw([]byte(`{"keys":[]}`), testidp.ContentTypeJWKS), class: ClassNoKeys, metric: fetchErr(ClassNoKeys)},
		{name: "only unusable keys (oct)", inject: func(t *testing.T, e *fmEnv) {
			e.idp.SetBody(fmPath, mtJWKS(t, octKey), testidp.ContentTypeJWKS)
		}, class: ClassNoKeys, metric: fetchErr(ClassNoKeys)},
		{name: "10,000 unusable keys", inject: func(t *testing.T, e *fmEnv) {
			e.idp.SetBody(fmPath, mtJWKS(t, slices.Repeat([]any{octKey}, 10000)...), testidp.ContentTypeJWKS)
		}, class: ClassNoKeys, metric: fetchErr(ClassNoKeys), note: "first 100 decoded, the rest skipped as too_many_keys"},
		{name: "10,000 keys, k1 first", inject: func(t *testing.T, e *fmEnv) {
			e.idp.SetBody(fmPath, mtJWKS(t, append([]any{e.k1.Public}, slices.Repeat([]any{octKey}, 9999)...)...), testidp.ContentTypeJWKS)
		}, class: "", metric: refreshes("updated"), note: "not an error: usable keys among the first 100 are served"},
		{name: "deeply nested JSON", inject: serveRaw([]byte(`{"keys":`+strings.Repeat("[", 100000)+strings.Repeat("]", 100000)+`}`), testidp.ContentTypeJWKS),
			class: ClassParse, metric: fetchErr(ClassParse), note: "encoding/json max depth"},
		{name: "not a JWKS (JSON without keys)", inject: serveRaw([]byte(`{"hello":"world"}`), testidp.ContentTypeJSON), class: ClassParse, metric: fetchErr(ClassParse)},
		{name: "duplicate kids (k1 twice, other key material)", inject: func(t *testing.T, e *fmEnv) {
			other := testidp.NewUniqueKey("ES256", "k1")
			e.idp.SetBody(fmPath, mtJWKS(t, e.k1.Public, other.Public), testidp.ContentTypeJWKS)
		}, class: "", metric: refreshes("updated"), kids: []string{"k1", "k1"}, after: func(t *testing.T, m *Manager, e *fmEnv) {
			// Both keys are served; a lookup by kid alone is refused as ambiguous.
			if _, err := m.Key(t.Context(), mtTenant, mtProvider, "k1"); !errors.Is(err, ErrKeyNotFound) || !strings.Contains(err.Error(), "names 2 keys") {
				t.Errorf("Key(k1) with two keys of kid k1: %v, want an ambiguous-kid ErrKeyNotFound", err)
			}
		}, keptText: "both k1 keys served; Key by kid refused as ambiguous (Keyfunc tells them apart by alg)",
			note: "not an error: the set is accepted"},
		{name: "oversize body (> MaxResponseBytes)", inject: fault(testidp.Fault{Oversize: 2 << 20}), class: ClassTooLarge, metric: fetchErr(ClassTooLarge)},
		{name: "oversize body, chunked", inject: fault(testidp.Fault{Oversize: 2 << 20, HideLength: true}), class: ClassTooLarge, metric: fetchErr(ClassTooLarge)},
		{name: "gzip bomb (16 MiB decompressed)", inject: fault(testidp.Fault{GzipBomb: 16 << 20}), class: ClassTooLarge, metric: fetchErr(ClassTooLarge)},

		// Redirects.
		{name: "redirect to http", inject: func(t *testing.T, e *fmEnv) { e.idp.SetRedirect(fmPath, "http://idp.test/q") },
			class: ClassRedirect, metric: fetchErr(ClassRedirect), policy: true},
		{name: "redirect to a private address", inject: func(t *testing.T, e *fmEnv) { e.idp.SetRedirect(fmPath, "https://10.0.0.1/q") },
			class: ClassRedirect, metric: fetchErr(ClassRedirect), policy: true},
		{name: "redirect to a host outside the allowlist", pre: func(t *testing.T, e *fmEnv) { e.reg.AllowedDomains = []string{"idp.test"} },
			inject: func(t *testing.T, e *fmEnv) { e.idp.SetRedirect(fmPath, "https://evil.example/q") },
			class:  ClassRedirect, metric: fetchErr(ClassRedirect), policy: true},
		{name: "redirect loop", inject: func(t *testing.T, e *fmEnv) {
			e.idp.SetRedirect(fmPath, "/loop")
			e.idp.SetRedirect("/loop", fmPath)
		}, class: ClassRedirect, metric: fetchErr(ClassRedirect)},

		// Discovery and revalidation.
		{name: "discovery with a mismatched issuer", pre: func(t *testing.T, e *fmEnv) {
			e.reg.JWKSURL, e.reg.Issuer = "", mtHost+"/t1"
			e.idp.SetDiscovery("/t1/.well-known/openid-configuration", mtHost+"/t1", mtHost+fmPath)
			e.idp.SetHeader("/t1/.well-known/openid-configuration", "Cache-Control", "max-age=60")
		}, inject: func(t *testing.T, e *fmEnv) {
			e.idp.SetDiscovery("/t1/.well-known/openid-configuration", "https://evil.example/t1", mtHost+fmPath)
			time.Sleep(2 * time.Minute) // virtual: the discovery document expires, the keys do not
		}, class: ClassParse, errText: "issuer", metric: fetchErr(ClassParse)},
		{name: "304 without validators", pre: func(t *testing.T, e *fmEnv) {
			e.idp.SetETag(fmPath, false)
		}, inject: func(t *testing.T, e *fmEnv) {
			e.idp.SetFault(fmPath, testidp.Fault{Status: http.StatusNotModified})
		}, class: ClassStatus, status: 304, metric: fetchErr(ClassStatus), attempts: 1, after: func(t *testing.T, m *Manager, e *fmEnv) {
			h := e.idp.LastRequest(fmPath)
			if h.Get("If-None-Match") != "" || h.Get("If-Modified-Since") != "" {
				t.Errorf("validators sent: If-None-Match %q, If-Modified-Since %q", h.Get("If-None-Match"), h.Get("If-Modified-Since"))
			}
			mtMustKey(t, m, mtTenant, mtProvider, e.k1)
		}, note: "no ETag/Last-Modified, so no validator sent; the fetcher refuses the 304"},

		// Store.
		{name: "store down (saves fail)", store: true, inject: func(t *testing.T, e *fmEnv) {
			e.store.setFail(errMemDown)
			e.idp.SetKeys(fmPath, e.k1, testidp.NewKey("ES256", "k2"))
		}, class: "", kids: []string{"k1", "k2"},
			metric: fmMetric{name: metricStoreErrors, labels: map[string]string{"op": "save"}},
			note:   "the refresh succeeds and serves from memory; the failed save is counted"},

		// TLS, pins and the dial guard: real loopback sockets.
		{name: "expired TLS certificate", tls: true, inject: func(t *testing.T, e *fmEnv) {
			e.switchCert(t, fmCert(t, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour), net.IPv4(127, 0, 0, 1)), true)
		}, class: ClassTLS, errText: "expired", metric: fetchErr(ClassTLS)},
		{name: "wrong TLS host", tls: true, inject: func(t *testing.T, e *fmEnv) {
			e.switchCert(t, fmCert(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), net.IPv4(127, 0, 0, 9)), true)
		}, class: ClassTLS, errText: "not 127.0.0.1", metric: fetchErr(ClassTLS)},
		{name: "untrusted CA", tls: true, inject: func(t *testing.T, e *fmEnv) {
			e.switchCert(t, fmCert(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), net.IPv4(127, 0, 0, 1)), false)
		}, class: ClassTLS, errText: "unknown authority", metric: fetchErr(ClassTLS)},
		{name: "pin mismatch (trusted cert, other key)", tls: true, pre: func(t *testing.T, e *fmEnv) {
			e.reg.PinnedSPKI = []string{testidp.SPKIPin(e.idp.Leaf())}
		}, inject: func(t *testing.T, e *fmEnv) {
			e.switchCert(t, fmCert(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), net.IPv4(127, 0, 0, 1)), true)
		}, class: ClassPin, metric: fetchErr(ClassPin), policy: true},
		{name: "DNS rebinding between hops (name resolving to 127.0.0.1)", tls: true, rebind: true, inject: func(t *testing.T, e *fmEnv) {
			e.idp.SetRedirect(fmPath, "https://localhost:"+strconv.Itoa(e.srv.Listener.Addr().(*net.TCPAddr).Port)+fmPath)
		}, class: ClassBlockedAddress, metric: fetchErr(ClassBlockedAddress), policy: true,
			note: "no resolver hook: a redirect to a name that resolves to a refused address, stopped by the dial guard"},
	}

	var table []string
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			if row.tls {
				fmRun(t, row)
			} else {
				synctest.Test(t, func(t *testing.T) { fmRun(t, row) })
			}
			if !t.Failed() {
				table = append(table, row.markdown())
			}
		})
	}
	if len(rows) < 30 {
		t.Errorf("%d faults, want at least 30", len(rows))
	}
	t.Logf("\n| fault | class | keys kept | metric |\n|---|---|---|---|\n%s", strings.Join(table, "\n"))
	if !t.Failed() {
		fmCheckDocs(t, rows, table)
	}
}

// fmCheckDocs fails unless docs/faults.md holds exactly the table the
// matrix produced (so the published results are the tested ones) and
// docs/security.md links every row of it by its anchor.
func fmCheckDocs(t *testing.T, rows []fmRow, table []string) {
	t.Helper()
	faults, err := os.ReadFile("docs/faults.md")
	if err != nil {
		t.Fatal(err)
	}
	var doc []string
	for line := range strings.Lines(string(faults)) {
		if strings.HasPrefix(line, "| <a id=") {
			doc = append(doc, strings.TrimRight(line, "\n"))
		}
	}
	if !slices.Equal(doc, table) {
		t.Errorf("docs/faults.md does not hold the table this matrix produced; paste the table of `go test -v -run '^TestFaultMatrix$' .` into it")
	}
	security, err := os.ReadFile("docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, row := range rows {
		id := row.anchor()
		if seen[id] {
			t.Errorf("two rows have the anchor %s", id)
		}
		seen[id] = true
		if !strings.Contains(string(security), "(faults.md#"+id+")") {
			t.Errorf("docs/security.md does not link the fault %q (faults.md#%s)", row.name, id)
		}
	}
}

// anchor is the row's HTML id in docs/faults.md: "fault-" and its name,
// lower-cased, with every run of other characters than letters and
// digits turned into one hyphen.
func (r fmRow) anchor() string {
	var b strings.Builder
	b.WriteString("fault")
	hyphen := true
	for _, c := range strings.ToLower(r.name) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			if hyphen {
				b.WriteByte('-')
				hyphen = false
			}
			b.WriteRune(c)
		} else {
			hyphen = true
		}
	}
	return b.String()
}

const fmPath = "/p"

type fmMetric struct {
	name   string
	labels map[string]string
	prov   bool // also labelled tenant=acme, provider=main
}

func (mm fmMetric) String() string {
	var parts []string
	if mm.prov {
		parts = append(parts, `tenant="acme"`, `provider="main"`)
	}
	keys := make([]string, 0, len(mm.labels))
	for k := range mm.labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, k+`="`+mm.labels[k]+`"`)
	}
	return mm.name + "{" + strings.Join(parts, ",") + "}"
}

type fmRow struct {
	name       string
	tls        bool // real loopback TLS server, outside synctest
	rebind     bool // the TLS server listens on 127.0.0.2, the only allowed address
	store      bool // Options.Store is a memStore
	pre        func(t *testing.T, e *fmEnv)
	inject     func(t *testing.T, e *fmEnv)
	class      ErrorClass // "" when the refresh succeeds
	status     int        // FetchError.StatusCode for ClassStatus
	retryAfter time.Duration
	policy     bool   // errors.Is(err, ErrSecurityPolicy)
	errText    string // the error's text contains it, when set
	attempts   int    // requests the refresh made to the JWKS path, when > 0
	kids       []string
	// after, when set, replaces the check that Key(k1) returns k1.
	after    func(t *testing.T, m *Manager, e *fmEnv)
	keptText string   // the "keys kept" cell, when not the default
	metric   fmMetric // moved by exactly 1
	note     string
}

func (r fmRow) markdown() string {
	class, kept := string(r.class), "yes (k1)"
	if class == "" {
		class = "none (refresh succeeds)"
	}
	if r.kids != nil {
		kept = "yes (" + strings.Join(r.kids, ", ") + ")"
	}
	if r.keptText != "" {
		kept = r.keptText
	}
	name := r.name
	if r.note != "" {
		name += " — " + r.note
	}
	return fmt.Sprintf("| <a id=\"%s\"></a>%s | `%s` | %s | `%s` +1 |", r.anchor(), name, class, kept, r.metric)
}

type fmEnv struct {
	idp   *testidp.IdP
	k1    *testidp.Key
	opts  Options
	reg   Registration
	reg2  *prometheus.Registry
	rt    *fmRT
	store *memBackend
	// tls rows
	srv  *httptest.Server
	cert atomic.Pointer[tls.Certificate]
	pool *x509.CertPool
}

// switchCert makes the TLS server present cert from its next handshake on,
// trusted or not, and drops the client's kept-alive connections.
func (e *fmEnv) switchCert(t *testing.T, cert tls.Certificate, trusted bool) {
	t.Helper()
	if trusted {
		e.pool.AddCert(cert.Leaf)
	}
	e.cert.Store(&cert)
	e.srv.CloseClientConnections()
}

func fmRun(t *testing.T, row fmRow) {
	e := &fmEnv{idp: testidp.New(), k1: testidp.NewKey("ES256", "k1"), reg2: prometheus.NewPedanticRegistry()}
	i6Serve(e.idp, fmPath, 3600, e.k1)
	e.opts = Options{Registerer: e.reg2}
	e.reg = Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: mtHost + fmPath,
		Retry: RetryPolicy{MaxRetries: 1, AttemptTimeout: time.Second, Deadline: 3 * time.Second,
			InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}}
	if row.tls {
		fmStartTLS(t, e, row.rebind)
	} else {
		e.rt = &fmRT{idp: e.idp}
		e.opts.HTTPClient = &http.Client{Transport: e.rt}
	}
	if row.store {
		e.store = newMemBackend()
		e.opts.Store = memStore{e.store}.plain()
	}
	if row.pre != nil {
		row.pre(t, e)
	}
	m, err := New(e.opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	ctx := t.Context()
	if err := m.Register(ctx, e.reg); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if err := m.Refresh(ctx, mtTenant, mtProvider); err != nil {
		t.Fatalf("first load: %v", err)
	}
	if !row.tls {
		synctest.Wait()
	}
	mtMustKey(t, m, mtTenant, mtProvider, e.k1)

	before := fmValue(t, e.reg2, row.metric)
	row.inject(t, e)
	reqs := e.idp.Requests(fmPath)
	start := time.Now()
	err = m.Refresh(ctx, mtTenant, mtProvider)
	took := time.Since(start)
	if !row.tls {
		synctest.Wait() // the store writer, when there is one
	}
	st := mtStatus(t, m, mtTenant, mtProvider)

	// (a) the error class, in the error and in the status.
	if row.class == "" {
		if err != nil {
			t.Fatalf("Refresh: %v, want success", err)
		}
		if st.LastErrorClass != "" {
			t.Errorf("LastErrorClass = %q, want none", st.LastErrorClass)
		}
	} else {
		var fe *FetchError
		if !errors.As(err, &fe) {
			t.Fatalf("Refresh error = %v (%T), want a *FetchError of class %s", err, err, row.class)
		}
		if fe.Class != row.class {
			t.Fatalf("class = %q, want %q; error: %v", fe.Class, row.class, err)
		}
		if st.LastErrorClass != string(row.class) {
			t.Errorf("LastErrorClass = %q, want %q", st.LastErrorClass, row.class)
		}
		if fe.StatusCode != row.status {
			t.Errorf("StatusCode = %d, want %d", fe.StatusCode, row.status)
		}
		if fe.RetryAfter != row.retryAfter {
			t.Errorf("RetryAfter = %v, want %v", fe.RetryAfter, row.retryAfter)
		}
		if row.retryAfter > 0 && took < row.retryAfter {
			// Virtual time: the retry waited as the server asked.
			t.Errorf("refresh took %v, want the retry to wait Retry-After %v", took, row.retryAfter)
		}
		if row.class == ClassTimeout && took > e.reg.Retry.Deadline {
			t.Errorf("refresh took %v, over its Deadline %v", took, e.reg.Retry.Deadline)
		}
		if row.errText != "" && !strings.Contains(err.Error(), row.errText) {
			t.Errorf("error %q does not contain %q", err, row.errText)
		}
		if got := errors.Is(err, ErrSecurityPolicy); got != row.policy {
			t.Errorf("errors.Is(err, ErrSecurityPolicy) = %v, want %v; error: %v", got, row.policy, err)
		}
	}
	if row.attempts > 0 {
		if n := e.idp.Requests(fmPath) - reqs; n != row.attempts {
			t.Errorf("%d requests to the JWKS path, want %d", n, row.attempts)
		}
	}

	// (b) the last good keys still serve.
	if row.after != nil {
		row.after(t, m, e)
	} else {
		mtMustKey(t, m, mtTenant, mtProvider, e.k1)
	}
	wantKIDs := row.kids
	if wantKIDs == nil {
		wantKIDs = []string{"k1"}
	}
	if got := mtStatusKIDs(st); !slices.Equal(got, wantKIDs) {
		t.Errorf("status keys %v, want %v", got, wantKIDs)
	}
	if st.State != StateReady {
		t.Errorf("state %v, want %v", st.State, StateReady)
	}

	// (c) the metric moved by one.
	if d := fmValue(t, e.reg2, row.metric) - before; d != 1 {
		t.Errorf("%s moved by %v, want 1", row.metric, d)
	}
	if row.class != "" {
		if d := fmValue(t, e.reg2, fmMetric{name: metricRefreshes, labels: map[string]string{"result": "error"}, prov: true}); d < 1 {
			t.Errorf(`jwks_cache_refreshes_total{result="error"} = %v, want >= 1`, d)
		}
	}
}

// fmStartTLS serves e.idp over TLS on loopback with a switchable
// certificate (first the IdP's own), and points e.opts and e.reg at it. With
// rebind, the server listens on 127.0.0.2 under a certificate of its own and
// only 127.0.0.2 is allowed.
func fmStartTLS(t *testing.T, e *fmEnv, rebind bool) {
	t.Helper()
	e.pool = e.idp.CertPool()
	srv := httptest.NewUnstartedServer(e.idp)
	allowed := loopbackPrefixes
	first := e.idp.Certificate()
	if rebind {
		ln, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Skipf("cannot listen on 127.0.0.2: %v", err)
		}
		srv.Listener.Close()
		srv.Listener = ln
		first = fmCert(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), net.IPv4(127, 0, 0, 2))
		e.pool.AddCert(first.Leaf)
		allowed = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
	}
	e.cert.Store(&first)
	// GetConfigForClient, not GetCertificate: a client dialling an IP
	// literal sends no SNI, and GetCertificate would then not be asked.
	srv.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return &tls.Config{Certificates: []tls.Certificate{*e.cert.Load()}}, nil
	}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes refused on purpose
	srv.StartTLS()
	t.Cleanup(srv.Close)
	e.srv = srv
	e.opts.RootCAs, e.opts.AllowedAddresses = e.pool, allowed
	e.reg.JWKSURL = srv.URL + fmPath
}

// fmCert returns a self-signed certificate for ip, valid from notBefore to
// notAfter, that can serve as its own trust root.
func fmCert(t *testing.T, notBefore, notAfter time.Time, ip net.IP) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "fault matrix"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
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
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}
}

// fmValue sums the samples of mm gathered from g (0 when there are none).
func fmValue(t *testing.T, g prometheus.Gatherer, mm fmMetric) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	want := map[string]string{}
	for k, v := range mm.labels {
		want[k] = v
	}
	if mm.prov {
		want["tenant"], want["provider"] = mtTenant, mtProvider
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != mm.name {
			continue
		}
	metrics:
		for _, mt := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range mt.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue metrics
				}
			}
			switch {
			case mt.Counter != nil:
				sum += mt.GetCounter().GetValue()
			case mt.Gauge != nil:
				sum += mt.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// fmRT answers from the fake IdP in memory unless fn is set.
type fmRT struct {
	idp *testidp.IdP
	fn  atomic.Pointer[func(*http.Request) (*http.Response, error)]
}

func (r *fmRT) RoundTrip(req *http.Request) (*http.Response, error) {
	if fn := r.fn.Load(); fn != nil {
		return (*fn)(req)
	}
	return r.idp.RoundTrip(req)
}

// fmResponse is a response of status with body, of unknown length.
func fmResponse(req *http.Request, status int, body io.ReadCloser) *http.Response {
	return &http.Response{
		Status: strconv.Itoa(status) + " " + http.StatusText(status), StatusCode: status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {testidp.ContentTypeJWKS}, "Cache-Control": {"max-age=3600"}},
		Body:          body,
		ContentLength: -1,
		Request:       req,
	}
}

// fmCutJWKS is a JWKS document whose first half fmCutBody sends.
const fmCutJWKS = `{"keys":[{"kty":"EC","kid":"k9","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}`

// fmCutBody answers 200 with a body that fails with cause after half of a
// JWKS document.
func fmCutBody(req *http.Request, cause error) (*http.Response, error) {
	half := strings.NewReader(fmCutJWKS[:len(fmCutJWKS)/2])
	return fmResponse(req, 200, io.NopCloser(io.MultiReader(half, fmErrReader{cause}))), nil
}

type fmErrReader struct{ err error }

func (r fmErrReader) Read([]byte) (int, error) { return 0, r.err }

// fmDrip is a body that sends '{' then one space every 100ms until its
// request's context ends.
type fmDrip struct {
	ctx  context.Context
	sent bool
}

func (d *fmDrip) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if !d.sent {
		d.sent = true
		p[0] = '{'
		return 1, nil
	}
	select {
	case <-d.ctx.Done():
		return 0, d.ctx.Err()
	case <-time.After(100 * time.Millisecond):
		p[0] = ' '
		return 1, nil
	}
}

func (d *fmDrip) Close() error { return nil }

package jwkscache

// Tests of the spans (tracing.go) with the SDK's in-memory SpanRecorder,
// inside synctest bubbles against the in-memory IdP (see refresh_test.go).

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

// trEnv is an rtEnv whose Manager traces into a SpanRecorder.
type trEnv struct {
	*rtEnv
	rec *tracetest.SpanRecorder
	tp  *sdktrace.TracerProvider
}

func newTREnv(t *testing.T, cfg rtConfig) *trEnv {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	cfg.opts.TracerProvider = tp
	return &trEnv{rtEnv: newRTEnv(t, cfg), rec: rec, tp: tp}
}

// newTracedManager returns a Manager fetching from idp in memory and
// tracing into a SpanRecorder, with no provider registered yet.
func newTracedManager(t *testing.T, idp *testidp.IdP) *trEnv {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	m, err := New(Options{HTTPClient: &http.Client{Transport: idp}, TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	e := &trEnv{rtEnv: &rtEnv{t: t, idp: idp, m: m}, rec: rec, tp: tp}
	t.Cleanup(e.close)
	return e
}

// spans returns the ended spans named name, in the order they ended.
func (e *trEnv) spans(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range e.rec.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// children returns the ended spans named name whose parent is parent.
func (e *trEnv) children(parent sdktrace.ReadOnlySpan, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range e.spans(name) {
		if s.Parent().SpanID() == parent.SpanContext().SpanID() && s.Parent().TraceID() == parent.SpanContext().TraceID() {
			out = append(out, s)
		}
	}
	return out
}

// one returns the only ended span named name, or fails.
func (e *trEnv) one(name string) sdktrace.ReadOnlySpan {
	e.t.Helper()
	ss := e.spans(name)
	if len(ss) != 1 {
		e.t.Fatalf("%d spans %s, want 1: %v", len(ss), name, spanNames(e.rec.Ended()))
	}
	return ss[0]
}

func spanNames(ss []sdktrace.ReadOnlySpan) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.Name()
	}
	return out
}

// attr returns the value of s's attribute key, and whether s has it.
func attr(s sdktrace.ReadOnlySpan, key string) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

// checkAttrs fails unless s has each attribute of want, with that value
// (as Value.String prints it).
func checkAttrs(t *testing.T, s sdktrace.ReadOnlySpan, want map[string]string) {
	t.Helper()
	for k, v := range want {
		got, ok := attr(s, k)
		switch {
		case !ok:
			t.Errorf("%s: no attribute %s (want %q)", s.Name(), k, v)
		case got.String() != v:
			t.Errorf("%s: %s = %q, want %q", s.Name(), k, got.String(), v)
		}
	}
}

// linked reports whether s links to target.
func linked(s, target sdktrace.ReadOnlySpan) bool {
	for _, l := range s.Links() {
		if l.SpanContext.Equal(target.SpanContext()) {
			return true
		}
	}
	return false
}

// A scheduled refresh whose first attempt meets a 503 makes one refresh
// span, a root, with its attributes, and one fetch span per attempt.
func TestTraceScheduledRefreshRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newTREnv(t, rtConfig{})
		defer e.close()
		e.rec.Reset()
		e.idp.SetFault(rtPath, testidp.Fault{Status: 503, Count: 1})
		e.idp.Rotate(rtPath, "ES256") // a new document: the refresh updates
		e.sleepUntil(time.Now().Add(299 * time.Second))
		e.settle()

		r := e.one(spanRefresh)
		if r.Parent().IsValid() {
			t.Errorf("refresh span has parent %v: want a root", r.Parent())
		}
		if r.SpanKind() != trace.SpanKindInternal {
			t.Errorf("refresh span kind %v", r.SpanKind())
		}
		if r.InstrumentationScope().Name != tracerName || r.InstrumentationScope().Version != Version {
			t.Errorf("scope %+v", r.InstrumentationScope())
		}
		checkAttrs(t, r, map[string]string{
			"jwkscache.tenant": rtTenant, "jwkscache.provider": rtProvider,
			"jwkscache.reason": "scheduled", "jwkscache.result": "updated", "jwkscache.source": "network",
		})
		if _, ok := attr(r, "error.type"); ok || r.Status().Code == codes.Error {
			t.Errorf("successful refresh has an error: %v", r.Status())
		}

		fs := e.children(r, spanFetch)
		if len(fs) != 2 || len(e.spans(spanFetch)) != 2 {
			t.Fatalf("%d fetch spans under the refresh (%d in all), want 2", len(fs), len(e.spans(spanFetch)))
		}
		slices.SortFunc(fs, func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) })
		for i, want := range []map[string]string{
			{"jwkscache.attempt": "1", "http.response.status_code": "503", "error.type": "status", "jwkscache.error.class": "status"},
			{"jwkscache.attempt": "2", "http.response.status_code": "200", "http.request.resend_count": "1"},
		} {
			want["url.full"] = rtURL
			want["jwkscache.fetch.kind"] = "jwks"
			want["http.request.method"] = "GET"
			want["server.address"] = "idp.test"
			checkAttrs(t, fs[i], want)
			if fs[i].SpanKind() != trace.SpanKindClient {
				t.Errorf("fetch span %d kind %v", i, fs[i].SpanKind())
			}
		}
		if fs[0].Status().Code != codes.Error || !strings.Contains(fs[0].Status().Description, "503") {
			t.Errorf("503 attempt status %+v", fs[0].Status())
		}
		if fs[1].Status().Code == codes.Error {
			t.Errorf("200 attempt status %+v", fs[1].Status())
		}
		if n, ok := attr(fs[1], "jwkscache.response.bytes"); !ok || n.AsInt64() < 100 {
			t.Errorf("response bytes %v", n.String())
		}
		if _, ok := attr(fs[0], "jwkscache.response.bytes"); ok {
			t.Error("a 503 attempt has response bytes")
		}
	})
}

// A cold lookup waits in a span of its own, a child of the caller's span,
// linked to the refresh span, which is not the caller's child.
func TestTraceColdLookupLinked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := testidp.NewDefault()
		idp.SetFault(rtPath, testidp.Fault{Delay: time.Second, Count: 1}) // still loading when Key asks
		e := newTracedManager(t, idp)
		m, rec, tp := e.m, e.rec, e.tp
		if err := m.Register(context.Background(), Registration{TenantID: rtTenant, ProviderID: rtProvider, JWKSURL: rtURL}); err != nil {
			t.Fatal(err)
		}
		ctx, req := tp.Tracer("test").Start(context.Background(), "request")
		if _, err := m.Key(ctx, rtTenant, rtProvider, "rsa-1"); err != nil {
			t.Fatalf("Key: %v", err)
		}
		req.End()
		e.settle()

		r := e.one(spanRefresh)
		w := e.one(spanWait)
		checkAttrs(t, r, map[string]string{"jwkscache.reason": "first_load", "jwkscache.result": "updated"})
		checkAttrs(t, w, map[string]string{
			"jwkscache.tenant": rtTenant, "jwkscache.provider": rtProvider,
			"jwkscache.reason": "first_load", "jwkscache.result": "ok", "jwkscache.refreshes": "1",
		})
		reqSC := req.SpanContext()
		if w.Parent().SpanID() != reqSC.SpanID() || w.SpanContext().TraceID() != reqSC.TraceID() {
			t.Errorf("wait span's parent %v, want the request %v", w.Parent(), reqSC)
		}
		if !linked(w, r) {
			t.Errorf("wait span links %v, want the refresh %v", w.Links(), r.SpanContext())
		}
		if r.Parent().IsValid() || r.SpanContext().TraceID() == reqSC.TraceID() {
			t.Errorf("refresh span is in the request's trace (parent %v)", r.Parent())
		}
		if len(e.children(r, spanFetch)) != 1 {
			t.Errorf("fetch spans %v", spanNames(rec.Ended()))
		}

		// Warm lookups make no span.
		rec.Reset()
		for range 3 {
			if _, err := m.Key(ctx, rtTenant, rtProvider, "rsa-1"); err != nil {
				t.Fatal(err)
			}
		}
		if n := len(rec.Started()); n != 0 {
			t.Errorf("warm lookups started %d spans", n)
		}
	})
}

// Keyfunc waits (an unknown kid) have no parent; KeyfuncContext's are
// children of ctx's span. Both link to the refresh.
func TestTraceKeyfuncWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newTREnv(t, rtConfig{})
		defer e.close()
		tracer := e.tp.Tracer("test")

		for _, withCtx := range []bool{false, true} {
			e.rec.Reset()
			k := e.idp.Rotate(rtPath, "ES256")
			tok := k.Sign(rtClaims())
			kf := e.m.Keyfunc(rtTenant, rtProvider)
			ctx, req := tracer.Start(context.Background(), "request")
			if withCtx {
				kf = e.m.KeyfuncContext(ctx, rtTenant, rtProvider)
			}
			if _, err := jwt.Parse(tok, kf, jwt.WithValidMethods(rtAllAlgs)); err != nil {
				t.Fatalf("withCtx %v: %v", withCtx, err)
			}
			req.End()
			e.settle()
			r, w := e.one(spanRefresh), e.one(spanWait)
			checkAttrs(t, w, map[string]string{"jwkscache.reason": "unknown_kid", "jwkscache.result": "ok"})
			checkAttrs(t, r, map[string]string{"jwkscache.reason": "unknown_kid", "jwkscache.result": "updated"})
			if !linked(w, r) || r.Parent().IsValid() {
				t.Errorf("withCtx %v: links %v, refresh parent %v", withCtx, w.Links(), r.Parent())
			}
			if withCtx {
				if w.Parent().SpanID() != req.SpanContext().SpanID() {
					t.Errorf("KeyfuncContext wait span's parent %v, want %v", w.Parent(), req.SpanContext())
				}
			} else if w.Parent().IsValid() {
				t.Errorf("Keyfunc wait span has parent %v", w.Parent())
			}

			// The token's key is now warm: no span.
			e.rec.Reset()
			if _, err := jwt.Parse(tok, kf, jwt.WithValidMethods(rtAllAlgs)); err != nil {
				t.Fatal(err)
			}
			if n := len(e.rec.Started()); n != 0 {
				t.Errorf("withCtx %v: warm Keyfunc started %d spans", withCtx, n)
			}
		}
	})
}

// A URL's query string (here with a secret) is recorded nowhere: not in
// url.full, not in an error message.
func TestTraceURLWithoutQuery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const secret = "s3cr3t"
		e := newTREnv(t, rtConfig{reg: Registration{JWKSURL: rtURL + "?tenant=acme&sig=" + secret + "#frag"}})
		defer e.close()
		f := e.one(spanFetch)
		checkAttrs(t, f, map[string]string{"url.full": rtURL, "http.response.status_code": "200"})

		e.idp.SetFault(rtPath, testidp.Fault{Status: 404})
		if err := e.m.Refresh(context.Background(), rtTenant, rtProvider); err == nil {
			t.Fatal("Refresh: no error")
		}
		for _, s := range e.rec.Ended() {
			for _, kv := range s.Attributes() {
				if strings.Contains(kv.Value.String(), secret) || strings.Contains(kv.Value.String(), "frag") {
					t.Errorf("%s: %s = %q", s.Name(), kv.Key, kv.Value.String())
				}
			}
			if d := s.Status().Description; strings.Contains(d, secret) || strings.Contains(d, "?") {
				t.Errorf("%s: status %q", s.Name(), d)
			}
		}
	})
}

// A failing refresh sets status Error and the error class on the refresh
// span, and on the span of the Refresh call waiting on it.
func TestTraceFailedRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newTREnv(t, rtConfig{})
		defer e.close()
		e.rec.Reset()
		e.idp.SetFault(rtPath, testidp.Fault{Status: 404})
		err := e.m.Refresh(context.Background(), rtTenant, rtProvider)
		if !errors.Is(err, ErrUpstream) {
			t.Fatalf("Refresh: %v", err)
		}
		e.settle()
		r, w := e.one(spanRefresh), e.one(spanWait)
		errAttrs := map[string]string{"jwkscache.result": "error", "jwkscache.error.class": "status", "error.type": "status", "jwkscache.reason": "manual"}
		checkAttrs(t, r, errAttrs)
		checkAttrs(t, w, errAttrs)
		for _, s := range []sdktrace.ReadOnlySpan{r, w} {
			st := s.Status()
			if st.Code != codes.Error || !strings.Contains(st.Description, "404") || len(st.Description) > maxErrorText+64 {
				t.Errorf("%s status %+v", s.Name(), st)
			}
		}
		if !linked(w, r) {
			t.Error("Refresh's wait span is not linked to the refresh")
		}
		fs := e.children(r, spanFetch)
		if len(fs) != 1 {
			t.Fatalf("%d fetch spans, want 1 (404 is not retried)", len(fs))
		}
		checkAttrs(t, fs[0], map[string]string{"http.response.status_code": "404", "error.type": "status"})
	})
}

// A caller whose context ends first records that it gave up, and still
// links to the refresh it was waiting on.
func TestTraceWaiterGivesUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newTREnv(t, rtConfig{})
		defer e.close()
		e.rec.Reset()
		e.idp.SetFault(rtPath, testidp.Fault{Delay: 2 * time.Second, Count: 1})
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := e.m.Refresh(ctx, rtTenant, rtProvider); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Refresh: %v", err)
		}
		w := e.one(spanWait)
		checkAttrs(t, w, map[string]string{"jwkscache.result": "gave_up", "jwkscache.refreshes": "1"})
		if _, ok := attr(w, "error.type"); ok || w.Status().Code != codes.Error {
			t.Errorf("gave-up wait: status %+v, attributes %v", w.Status(), w.Attributes())
		}
		e.settle()
		r := e.one(spanRefresh)
		if !linked(w, r) {
			t.Error("the wait span is not linked to the refresh that was running")
		}
		checkAttrs(t, r, map[string]string{"jwkscache.result": "not_modified"})
	})
}

// A discovery fetch is a fetch span of kind discovery, before the key
// set's, under one refresh span.
func TestTraceDiscovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const issuer = "https://idp.test/tenant"
		idp, _ := testidp.NewDefault()
		idp.SetDiscovery("/tenant/.well-known/openid-configuration", issuer, rtURL)
		e := newTracedManager(t, idp)
		if err := e.m.Register(context.Background(), Registration{TenantID: rtTenant, ProviderID: rtProvider, Issuer: issuer}); err != nil {
			t.Fatal(err)
		}
		e.settle()
		r := e.one(spanRefresh)
		fs := e.children(r, spanFetch)
		if len(fs) != 2 {
			t.Fatalf("fetch spans %v", spanNames(e.rec.Ended()))
		}
		slices.SortFunc(fs, func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) })
		checkAttrs(t, fs[0], map[string]string{"jwkscache.fetch.kind": "discovery", "url.full": issuer + "/.well-known/openid-configuration", "http.response.status_code": "200"})
		checkAttrs(t, fs[1], map[string]string{"jwkscache.fetch.kind": "jwks", "url.full": rtURL})
	})
}

// With tracing on, a warm Key still allocates nothing.
func TestTraceWarmKeyAllocatesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newTREnv(t, rtConfig{})
		defer e.close()
		ctx := context.Background()
		if n := testing.AllocsPerRun(100, func() { _, _ = e.m.Key(ctx, rtTenant, rtProvider, "rsa-1") }); n != 0 {
			t.Errorf("warm Key: %v allocations", n)
		}
	})
}

func TestSpanURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://idp.test/jwks":                        "https://idp.test/jwks",
		"https://idp.test/jwks?sig=x&a=b":              "https://idp.test/jwks",
		"https://u:p@idp.test/jwks?x#f":                "https://idp.test/jwks",
		"https://idp.test/jwks?":                       "https://idp.test/jwks",
		"https://idp.test:8443/a/b#frag":               "https://idp.test:8443/a/b",
		"https://u:p@idp.test/%zz?secret":              "https://idp.test/%zz",
		"https://idp.test/" + strings.Repeat("a", 2e3): capText("https://idp.test/" + strings.Repeat("a", 2e3)),
	} {
		if got := spanURL(in); got != want {
			t.Errorf("spanURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestScrubURLs(t *testing.T) {
	for in, want := range map[string]string{
		"no url here": "no url here",
		`fetch "https://a.test/j?sig=1": status 503`:  `fetch "https://a.test/j": status 503`,
		"redirect to http://u:p@b.test/x?t=2#f, then": "redirect to http://b.test/x then", // the query runs to the blank
		"two https://a.test/?q https://c.test/p#x":    "two https://a.test/ https://c.test/p",
		"ends with https://a.test?q=1":                "ends with https://a.test",
	} {
		if got := scrubURLs(in); got != want {
			t.Errorf("scrubURLs(%q) = %q, want %q", in, got, want)
		}
	}
}

// The library depends on the OpenTelemetry API only: the SDK is for tests.
func TestTraceNoSDKDependency(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found:", err)
	}
	out, err := exec.Command(goCmd, "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "go.opentelemetry.io/otel/trace") {
		t.Fatalf("go list -deps looks wrong: %v", deps)
	}
	for _, d := range deps {
		if strings.HasPrefix(d, "go.opentelemetry.io/otel/sdk") {
			t.Errorf("the library depends on %s", d)
		}
	}
}

// A refresh that panics (here in a caller's transport) still ends its
// spans, as failures of class panic.
func TestTracePanicEndsSpans(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := testidp.NewDefault()
		rt := &atkPanicRT{next: idp}
		rt.armed.Store(1)
		rec := tracetest.NewSpanRecorder()
		m, err := New(Options{HTTPClient: &http.Client{Transport: rt}, TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		e := &trEnv{rtEnv: &rtEnv{t: t, idp: idp, m: m}, rec: rec}
		t.Cleanup(e.close)
		if err := m.Register(context.Background(), Registration{TenantID: rtTenant, ProviderID: rtProvider, JWKSURL: rtURL}); err != nil {
			t.Fatal(err)
		}
		e.settle()
		if n := len(rec.Started()) - len(rec.Ended()); n != 0 {
			t.Errorf("%d spans never ended", n)
		}
		r := e.spans(spanRefresh)[0]
		checkAttrs(t, r, map[string]string{"jwkscache.result": "error", "jwkscache.error.class": "panic"})
		f := e.children(r, spanFetch)
		if len(f) != 1 || r.Status().Code != codes.Error {
			t.Fatalf("refresh status %+v, fetch spans %d", r.Status(), len(f))
		}
		checkAttrs(t, f[0], map[string]string{"error.type": "panic"})
	})
}

package jwkscache

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Tracing (issue 8). The engine makes four kinds of spans, all with one
// tracer named tracerName:
//
//   - jwkscache.refresh around each refresh (doRefresh). A refresh is
//     shared by every caller waiting on it and runs on the Manager's
//     context, so its span is a root: it is no caller's child.
//   - jwkscache.fetch, a child of the refresh span, for each attempt of a
//     fetch (discovery or key set).
//   - jwkscache.store for each Store call a refresh waits on (a restore, a
//     fleet lease, a snapshot read), with the operation, tenant and
//     provider.
//   - jwkscache.wait for each caller that waits on a refresh (a cold load,
//     an unknown kid, Refresh), a child of the caller's span when its
//     context has one, with a link to each refresh span of the flight it
//     waited on.
//
// Warm lookups make no span. Attributes never carry a token or key
// material, and URLs are recorded without query string, fragment and
// userinfo.
//
// A waiter learns the refresh spans of its flight through a flightTrace:
// the flight's runner stores one in tracing.live under the provider while
// the flight runs, each refresh span of the flight adds its SpanContext to
// it, and it is the flight's result value, so that a waiter that saw the
// flight end reads it from the result, and one that gave up earlier reads
// it from live. Nothing is added to provider (it fits 256 bytes).

// tracerName is the instrumentation scope of every span of the package.
const tracerName = "github.com/jwkscache/jwkscache"

// Span names.
const (
	spanRefresh = "jwkscache.refresh"
	spanFetch   = "jwkscache.fetch"
	spanWait    = "jwkscache.wait"
	spanStore   = "jwkscache.store"
)

// Attribute keys of the package's own. Standard ones (url.full,
// http.response.status_code, error.type, ...) come from semconv.
const (
	attrTenant     = attribute.Key("jwkscache.tenant")
	attrProvider   = attribute.Key("jwkscache.provider")
	attrReason     = attribute.Key("jwkscache.reason")
	attrResult     = attribute.Key("jwkscache.result")
	attrSource     = attribute.Key("jwkscache.source")
	attrErrorClass = attribute.Key("jwkscache.error.class")
	attrAttempt    = attribute.Key("jwkscache.attempt")
	attrFetchKind  = attribute.Key("jwkscache.fetch.kind")
	attrBytes      = attribute.Key("jwkscache.response.bytes")
	attrRefreshes  = attribute.Key("jwkscache.refreshes")
	attrStoreOp    = attribute.Key("jwkscache.store.op")
)

// Values of jwkscache.fetch.kind and of jwkscache.result beyond
// refreshResult's.
const (
	fetchKindJWKS      = "jwks"
	fetchKindDiscovery = "discovery"

	resultDiscarded = "discarded" // refresh: the registration changed or went away during the fetch
	resultOK        = "ok"        // wait: the refresh waited on succeeded
	resultGaveUp    = "gave_up"   // wait: the caller's context ended first
	resultClosed    = "closed"    // wait: the Manager was closed
)

// tracing holds the tracer and the flights in progress. It belongs to the
// fetcher, which every part of the engine reaches (m.fetcher.tr).
type tracing struct {
	tracer trace.Tracer
	live   sync.Map // *provider -> *flightTrace, while the provider's flight runs
}

func newTracing(tp trace.TracerProvider) *tracing {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return &tracing{tracer: tp.Tracer(tracerName, trace.WithInstrumentationVersion(Version))}
}

// flightTrace collects the SpanContexts of the refresh spans of one
// flight (more than one when the registration changed during a fetch).
type flightTrace struct {
	mu   sync.Mutex
	refs []trace.SpanContext
}

func (ft *flightTrace) add(sc trace.SpanContext) {
	if !sc.IsValid() {
		return
	}
	ft.mu.Lock()
	ft.refs = append(ft.refs, sc)
	ft.mu.Unlock()
}

func (ft *flightTrace) links() []trace.Link {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	out := make([]trace.Link, len(ft.refs))
	for i, sc := range ft.refs {
		out[i] = trace.Link{SpanContext: sc}
	}
	return out
}

// tracedFlight is flight as the body of a singleflight call: it publishes
// the flight's flightTrace while it runs and returns it as the result
// value, which every waiter receives.
func (p *provider) tracedFlight(seen uint64, why flightReason) (any, error) {
	tr := p.m.fetcher.tr
	ft := new(flightTrace)
	tr.live.Store(p, ft)
	defer tr.live.CompareAndDelete(p, ft)
	return ft, p.flight(seen, why)
}

// refreshSpan is the span of one doRefresh. It is a value on doRefresh's
// stack: end records the outcome, and abort, deferred, ends a span that end
// did not (the refresh panicked).
type refreshSpan struct {
	span  trace.Span
	ended bool
}

// startRefreshSpan starts the root span of a refresh about to fetch, and
// returns the Manager's context with it for the fetch.
func (p *provider) startRefreshSpan(o *outcome) (context.Context, refreshSpan) {
	tr := p.m.fetcher.tr
	ctx, span := tr.tracer.Start(p.m.ctx, spanRefresh,
		trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(
			attrTenant.String(p.key.tenant), attrProvider.String(p.key.provider),
			attrReason.String(o.reason.String())))
	if v, ok := tr.live.Load(p); ok {
		v.(*flightTrace).add(span.SpanContext())
	}
	return ctx, refreshSpan{span: span}
}

// end records the refresh's result, err being doRefresh's error, ends the
// span and returns err.
func (rs *refreshSpan) end(o *outcome, err error) error {
	if rs.ended {
		return err
	}
	rs.ended = true
	span := rs.span
	if !span.IsRecording() {
		span.End()
		return err
	}
	span.SetAttributes(attrSource.String(o.source.String()))
	switch {
	case err == nil:
		span.SetAttributes(attrResult.String(o.result.String()))
	case errors.Is(err, errSuperseded), errors.Is(err, ErrNotRegistered):
		// The fetch's answer was dropped: not the IdP's failure, and the
		// flight fetches again for a new registration.
		span.SetAttributes(attrResult.String(resultDiscarded))
	default:
		span.SetAttributes(attrResult.String(resultError.String()))
		setSpanError(span, err)
	}
	span.End()
	return err
}

// abort ends a span that end did not: doRefresh is unwinding from a
// panic, which the flight recovers and records as class panic.
func (rs *refreshSpan) abort() {
	if rs.ended {
		return
	}
	rs.ended = true
	rs.span.SetAttributes(attrResult.String(resultError.String()),
		attrErrorClass.String(string(ClassPanic)), semconv.ErrorTypeKey.String(string(ClassPanic)))
	rs.span.SetStatus(codes.Error, "panic during the refresh")
	rs.span.End()
}

// setSpanError marks span failed with err's class and a message fit for a
// trace backend: capped, URLs without query string or userinfo.
// storeSpan is the span of one Store call made for a refresh (a restore,
// a fleet lease, a snapshot read).
type storeSpan struct{ span trace.Span }

// startStoreSpan starts the span of the Store call op about key.
func (t *tracing) startStoreSpan(ctx context.Context, op string, key providerKey) storeSpan {
	attrs := []attribute.KeyValue{attrStoreOp.String(op)}
	if key != (providerKey{}) {
		attrs = append(attrs, attrTenant.String(key.tenant), attrProvider.String(key.provider))
	}
	_, span := t.tracer.Start(ctx, spanStore, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return storeSpan{span}
}

func (s storeSpan) end(err error) {
	if err != nil && !errors.Is(err, ErrStoreNotFound) {
		s.span.SetStatus(codes.Error, capText(err.Error()))
	}
	s.span.End()
}

func setSpanError(span trace.Span, err error) {
	class := string(errorClass(err))
	span.SetAttributes(attrErrorClass.String(class), semconv.ErrorTypeKey.String(class))
	span.SetStatus(codes.Error, spanErrorText(err))
}

// startFetchSpan starts the span of one fetch attempt (1-based) of rawURL.
func (f *fetcher) startFetchSpan(ctx context.Context, reg *Registration, rawURL string, attempt int, discovery bool) (context.Context, trace.Span) {
	kind := fetchKindJWKS
	if discovery {
		kind = fetchKindDiscovery
	}
	attrs := []attribute.KeyValue{
		attrTenant.String(reg.TenantID), attrProvider.String(reg.ProviderID),
		attrFetchKind.String(kind), attrAttempt.Int(attempt),
		semconv.HTTPRequestMethodGet, semconv.URLFull(spanURL(rawURL)),
	}
	if attempt > 1 {
		attrs = append(attrs, semconv.HTTPRequestResendCount(attempt-1))
	}
	if u, err := url.Parse(rawURL); err == nil && u.Hostname() != "" {
		attrs = append(attrs, semconv.ServerAddress(capText(u.Hostname())))
	}
	return f.tr.tracer.Start(ctx, spanFetch, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
}

// tracedAttempt is attemptParsed inside the span of attempt number
// attempt (1-based) of a fetch.
func tracedAttempt[T any](ctx context.Context, f *fetcher, reg *Registration, rawURL string, attempt int, discovery bool, val validators, parse func([]byte) (*T, error)) (*parsedResult[T], *FetchError) {
	ctx, span := f.startFetchSpan(ctx, reg, rawURL, attempt, discovery)
	ended := false
	defer func() {
		if !ended { // a panic, which the flight recovers
			span.SetAttributes(attrErrorClass.String(string(ClassPanic)), semconv.ErrorTypeKey.String(string(ClassPanic)))
			span.SetStatus(codes.Error, "panic during the fetch")
			span.End()
		}
	}()
	res, fe := attemptParsed(ctx, f, reg, rawURL, val, parse)
	ended = true
	if fe != nil {
		endFetchSpan(span, nil, fe)
	} else {
		endFetchSpan(span, &res.fetchResult, nil)
	}
	return res, fe
}

// endFetchSpan records an attempt's answer: the status code and document
// size of a success (304 for not modified), or the status code and class
// of a failure.
func endFetchSpan(span trace.Span, res *fetchResult, fe *FetchError) {
	if !span.IsRecording() {
		span.End()
		return
	}
	switch {
	case fe != nil:
		if fe.StatusCode != 0 {
			span.SetAttributes(semconv.HTTPResponseStatusCode(fe.StatusCode))
		}
		setSpanError(span, fe)
	case res.NotModified:
		span.SetAttributes(semconv.HTTPResponseStatusCode(304))
	default:
		span.SetAttributes(semconv.HTTPResponseStatusCode(200), attrBytes.Int(len(res.Body)))
	}
	span.End()
}

// waitSpan is the span of a caller waiting on a provider's flight.
type waitSpan struct {
	p    *provider
	span trace.Span
}

// startWait starts the span of a caller about to wait on p's flight, a
// child of ctx's span if it has one.
func (p *provider) startWait(ctx context.Context, why flightReason) waitSpan {
	_, span := p.m.fetcher.tr.tracer.Start(ctx, spanWait, trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(
			attrTenant.String(p.key.tenant), attrProvider.String(p.key.provider),
			attrReason.String(why.String())))
	return waitSpan{p: p, span: span}
}

// end links the span to the refresh spans of the flight waited on (val is
// the flight's result value, nil when the caller stopped waiting first),
// records how the wait ended, ends the span and returns err.
func (w waitSpan) end(val any, err error, result string) error {
	span := w.span
	if !span.IsRecording() {
		span.End()
		return err
	}
	ft, _ := val.(*flightTrace)
	if ft == nil {
		if v, ok := w.p.m.fetcher.tr.live.Load(w.p); ok {
			ft = v.(*flightTrace)
		}
	}
	n := 0
	if ft != nil {
		links := ft.links()
		n = len(links)
		for _, l := range links {
			span.AddLink(l)
		}
	}
	span.SetAttributes(attrRefreshes.Int(n))
	switch {
	case result != "":
	case err == nil:
		result = resultOK
	default:
		result = resultError.String()
	}
	span.SetAttributes(attrResult.String(result))
	switch {
	case err == nil:
	case result == resultGaveUp:
		// The caller's own deadline or cancellation: no refresh class.
		span.SetStatus(codes.Error, spanErrorText(err))
	default:
		setSpanError(span, err)
	}
	span.End()
	return err
}

// spanURL returns raw fit for a span attribute: without userinfo, query
// string and fragment, capped.
func spanURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		// Not a URL we could fetch; keep what cannot carry a secret.
		if i := strings.IndexAny(raw, "?#"); i >= 0 {
			raw = raw[:i]
		}
		if i := strings.Index(raw, "://"); i >= 0 {
			if at := strings.LastIndexByte(raw[i+3:], '@'); at >= 0 {
				raw = raw[:i+3] + raw[i+3+at+1:]
			}
		}
		return capText(raw)
	}
	u.User = nil
	u.RawQuery, u.ForceQuery = "", false
	u.Fragment, u.RawFragment = "", ""
	return capText(u.String())
}

// spanErrorText returns err's text for a span status: every URL in it
// without userinfo, query string and fragment, and capped. Errors of the
// engine never hold a token or key material.
func spanErrorText(err error) string {
	return capText(scrubURLs(err.Error()))
}

// scrubURLs removes the userinfo, query string and fragment of every
// http(s) URL in s. A URL ends at white space, a quote or a bracket.
func scrubURLs(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "://")
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i+3])
		s = s[i+3:]
		end := strings.IndexAny(s, " \t\r\n\"'`<>()[]{}")
		if end < 0 {
			end = len(s)
		}
		tok := s[:end]
		if q := strings.IndexAny(tok, "?#"); q >= 0 {
			tok = tok[:q]
		}
		host := tok
		if slash := strings.IndexByte(tok, '/'); slash >= 0 {
			host = tok[:slash]
		}
		if at := strings.LastIndexByte(host, '@'); at >= 0 {
			tok = tok[at+1:]
		}
		b.WriteString(tok)
		s = s[end:]
	}
}

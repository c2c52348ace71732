package jwkscache

import (
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
)

// Options configures a Manager. The zero value is a safe production
// configuration: https only, any host, public addresses only, system roots,
// no logging.
type Options struct {
	// AllowHTTP permits http URLs for registrations that also set
	// Registration.AllowHTTP. Default: false (https only).
	AllowHTTP bool

	// AllowedDomains is the global host allowlist, checked on Register and
	// on every redirect hop: a host passes when it equals an entry or ends
	// with "." + entry. Entries are lower-case without a trailing dot.
	// Default: empty (any host).
	AllowedDomains []string

	// AllowedAddresses lists address ranges that the dial guard lets
	// through although they are loopback, private, link-local or otherwise
	// refused (see the package documentation), for tests and on-premises
	// identity providers. IP-literal URL hosts are accepted only within
	// these ranges. Default: none.
	AllowedAddresses []netip.Prefix

	// RootCAs are the trust roots for fetches. Default: nil, the system roots.
	RootCAs *x509.CertPool

	// HTTPClient, when set, supplies the transport of every fetch in place
	// of the built-in one: the caller then owns dialing, proxies and TLS,
	// and the dial guard and RootCAs do not apply. The URL policy, redirect
	// checks, body caps, timeouts and (on the TLS state the transport
	// reports) SPKI pins still apply. Its Timeout, Jar and CheckRedirect are
	// not used. Default: nil (built-in transport).
	HTTPClient *http.Client

	// Logger receives structured logs. Tokens and key material are never
	// logged, and every attribute derived from upstream data is capped
	// (1 KiB). Its handler is user code: it runs on the Manager's delivery
	// goroutine (see OnEvent), never on a lookup, a refresh worker or the
	// scheduler, so a slow handler cannot stall the cache. Default: nil, no
	// logging.
	Logger *slog.Logger

	// OnEvent, when set, is called for key set changes, state changes and
	// failed refreshes. Events and log records are queued (at most 1,024)
	// and delivered in order by one goroutine the Manager owns, which holds
	// no engine lock: OnEvent may call the Manager. When the queue is full,
	// as when OnEvent blocks, new items are dropped and counted in
	// ProviderStatus.EventsDropped; lookups, refreshes and expiry go on
	// regardless. After Close nothing more is delivered, and Close does not
	// wait for a callback that does not return. A panic in OnEvent is
	// recovered and logged. Default: nil.
	OnEvent func(Event)

	// TracerProvider makes the spans of refreshes, fetch attempts and
	// callers waiting on a refresh (see Tracing in docs/operations.md);
	// warm lookups make none. Default: nil, otel.GetTracerProvider().
	TracerProvider trace.TracerProvider

	// RefreshWorkers bounds how many fetches the background scheduler runs
	// at once across all providers; callers waiting on a cold provider or
	// an unknown kid do not count against it. Default: 8.
	RefreshWorkers int

	// MaxUnknownKIDRefreshes caps the refreshes triggered by unknown kids
	// across all tenants, per second, with a burst of the same size. The
	// per-provider bucket (see Registration.NegativeCacheTTL) applies first.
	// Default: 50.
	MaxUnknownKIDRefreshes int

	// Registerer, when set, receives a Prometheus Collector of the
	// Manager's metrics (see docs/operations.md#metrics): New registers it
	// there, never on the global registry, and Close unregisters it. The
	// Collector reads the engine's counters when scraped; lookups do no
	// metric work. Two Managers on one registry need distinct constant
	// labels: wrap it with prometheus.WrapRegistererWith. Default: nil, no
	// metrics.
	Registerer prometheus.Registerer

	// MetricsProviderLimit bounds the per-provider series: with more
	// providers registered, the series labelled by tenant and provider
	// collapse into one per tenant (label provider=""), and with more
	// tenants than the limit too, into one for all (tenant="" and
	// provider=""). Default: 10,000.
	MetricsProviderLimit int

	// Store, when set, persists registrations and snapshots (see Store):
	// a provider's first load restores its stored snapshot, with the
	// lifetime it had left, before any fetch; Restore re-registers the
	// providers registered at run time. A FleetStore (store/redisstore)
	// also coordinates a fleet of Managers, so that they cost each
	// identity provider about one fetch per TTL between them. Store calls
	// run on goroutines of the Manager's own, never on a lookup, and a
	// failing Store only degrades the Manager to memory (see
	// ProviderStatus.StoreError). The caller owns the Store: Close does
	// not close it. Default: nil, memory only.
	Store Store

	// StoreKeys authenticate the records written to the Store with
	// HMAC-SHA256: the first key signs, any of them verifies (list the new
	// key first to rotate, and drop the old one once every record has been
	// rewritten). With keys set, a record without a valid MAC is refused.
	// Without keys, records carry only a checksum, which detects
	// corruption, not forgery: whoever can write to the Store (a shared
	// Redis, say) can then plant signing keys that this Manager will
	// serve. Each key must be at least 32 bytes. Default: none.
	StoreKeys [][]byte

	// StoreTimeout bounds each Store call, and so how long a refresh
	// (never a warm lookup) waits for the Store before going on without
	// it. Default: 1s.
	StoreTimeout time.Duration
}

// Option defaults.
const (
	DefaultRefreshWorkers         = 8
	DefaultMaxUnknownKIDRefreshes = 50
	DefaultStoreTimeout           = time.Second
)

// minStoreKey is the shortest accepted StoreKeys entry.
const minStoreKey = 32

func (o Options) withDefaults() Options {
	o.AllowedDomains = cloneStrings(o.AllowedDomains)
	o.AllowedAddresses = append([]netip.Prefix(nil), o.AllowedAddresses...)
	setDefault(&o.RefreshWorkers, DefaultRefreshWorkers)
	setDefault(&o.MaxUnknownKIDRefreshes, DefaultMaxUnknownKIDRefreshes)
	setDefault(&o.MetricsProviderLimit, DefaultMetricsProviderLimit)
	setDefault(&o.StoreTimeout, DefaultStoreTimeout)
	keys := make([][]byte, len(o.StoreKeys))
	for i, k := range o.StoreKeys {
		keys[i] = append([]byte(nil), k...)
	}
	o.StoreKeys = keys
	return o
}

// validate checks options with defaults applied and reports every bad
// field in one *OptionsError.
func (o *Options) validate() error {
	e := &OptionsError{}
	bad := func(field, format string, args ...any) {
		e.Fields = append(e.Fields, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
	}
	for i, d := range o.AllowedDomains {
		if msg := checkDomain(d); msg != "" {
			bad(fmt.Sprintf("AllowedDomains[%d]", i), "%q: %s", d, msg)
		}
	}
	for i, p := range o.AllowedAddresses {
		if !p.IsValid() {
			bad(fmt.Sprintf("AllowedAddresses[%d]", i), "invalid prefix")
		}
	}
	if o.RefreshWorkers < 0 {
		bad("RefreshWorkers", "must not be negative, got %d", o.RefreshWorkers)
	}
	if o.MaxUnknownKIDRefreshes < 0 {
		bad("MaxUnknownKIDRefreshes", "must not be negative, got %d", o.MaxUnknownKIDRefreshes)
	}
	if o.MetricsProviderLimit < 0 {
		bad("MetricsProviderLimit", "must not be negative, got %d", o.MetricsProviderLimit)
	}
	if o.StoreTimeout < 0 {
		bad("StoreTimeout", "must not be negative, got %v", o.StoreTimeout)
	}
	if len(o.StoreKeys) > 0 && o.Store == nil {
		bad("StoreKeys", "set without a Store")
	}
	for i, k := range o.StoreKeys {
		if len(k) < minStoreKey {
			bad(fmt.Sprintf("StoreKeys[%d]", i), "must be at least %d bytes, got %d", minStoreKey, len(k)) // the length only: never the key
		}
	}
	if len(e.Fields) > 0 {
		return e
	}
	return nil
}

package jwkscache

import (
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// provider is the state of one registered (tenant, provider) pair.
//
// The read path uses only the atomic fields. Everything else is guarded by
// mu, except the scheduler's fields at the end, which scheduler.mu guards
// (see Manager for the whole lock order).
type provider struct {
	m       *Manager
	key     providerKey
	id      uint64      // unique per registration of a pair: names its flights
	slot    uint32      // hit counter slot
	removed atomic.Bool // set once by Unregister or Close

	// refreshQueued: a RefreshAsync waits to begin its fetch.
	refreshQueued atomic.Bool

	cfg    atomic.Pointer[Registration]        // current registration, defaults applied
	snap   atomic.Pointer[snapshot]            // keys served; nil when none
	denied atomic.Pointer[map[string]struct{}] // copy on write; nil when none
	// servedCache is the ServedJWKS of snap, built on the first JWKS call.
	servedCache atomic.Pointer[ServedJWKS]
	// applied counts the refresh outcomes applied, bumped after the
	// snapshot is stored: a caller that read it before deciding to fetch
	// can tell that a fetch has completed since, and take that outcome.
	applied atomic.Uint64
	// fetchSeq numbers fetches as they start; okSeq is the number of the
	// latest successful one. An unknown kid is negative-cached only when a
	// fetch begun after the miss succeeded without it.
	fetchSeq, okSeq atomic.Uint64

	// Slow-path counters, read by Status (and the metrics Collector).
	misses        atomic.Uint64
	eventsDropped atomic.Uint64

	mu         sync.Mutex // guards the fields below
	gen        uint64     // bumped when Register changes the source: fetches begun before are void
	errorCount int32      // consecutive failed fetches
	state      State
	inflight   bool // a fetch is running; its apply reschedules p
	// slow marks a provider whose latest fetch failed or took at least
	// slowFetch, or that has never completed one (a first load). Slow
	// providers may hold at most half of the refresh workers (see
	// scheduler). Register leaves it alone, so re-registering cannot
	// reset fairness.
	slow bool
	// staleSignalled: EventStaleBegan was emitted for the keys served and
	// EventStaleEnded not yet.
	staleSignalled bool
	lastErr        error
	nextRefresh    time.Time
	jwksURL        string          // reg.JWKSURL, or the one discovered; "" before discovery
	disc           *discoveryState // nil unless the registration uses discovery
	kid            *kidState       // unknown-kid budget; nil until the first unknown kid
	met            *provMetrics    // refresh counters; nil until the first refresh outcome

	// Scheduler fields, guarded by scheduler.mu.
	due         int64 // when the timer goroutine looks at p next (scheduler.mono)
	heapIdx     int32 // position in the timer heap; -1 when not in it
	queued      bool  // waiting in the workers' queue
	slowWaiting bool  // in line for a slow slot
	slowGranted bool  // handed a slow slot, not yet taken
}

// discoveryState is what a provider remembers of its discovery document.
type discoveryState struct {
	val     validators
	expires time.Time
}

// registration returns the current registration, defaults applied.
func (p *provider) registration() *Registration { return p.cfg.Load() }

// flightKey names p's fetch in the Manager's singleflight.Group. The id
// keeps a re-registered pair from joining the fetch of its removed
// predecessor. It is built per flight (the slow path) rather than stored,
// which saves its bytes on every provider.
func (p *provider) flightKey() string {
	return p.key.tenant + "/" + p.key.provider + "#" + strconv.FormatUint(p.id, 10)
}

// setStateLocked changes the state and returns the event to emit, if any.
func (p *provider) setStateLocked(s State, evs []Event) []Event {
	if p.state == s {
		return evs
	}
	ev := Event{Kind: EventStateChanged, TenantID: p.key.tenant, ProviderID: p.key.provider, Time: time.Now(), From: p.state, To: s}
	p.state = s
	return append(evs, ev)
}

// nextDueLocked is when the scheduler must look at p next: the next
// refresh, or the end of the snapshot's freshness or stale window if that
// comes first.
// Readers never check the clock; the scheduler withdraws keys whose stale
// window has run out.
func (p *provider) nextDueLocked() time.Time {
	due := p.nextRefresh
	if w := p.watchLocked(); !w.IsZero() && w.Before(due) {
		due = w
	}
	return due
}

// watchLocked is when the keys served need the scheduler's look whatever
// the refresh schedule: at their expiry, to signal stale serving (only
// while that is not yet signalled and refreshes fail), and at the end of
// their stale window, to withdraw them. Zero when no keys are served.
func (p *provider) watchLocked() time.Time {
	s := p.snap.Load()
	if s == nil {
		return time.Time{}
	}
	// The end of freshness, once: to signal stale serving while refreshes
	// fail, and to start counting stale lookups (see markStaleLocked).
	if s.expiresAt.Before(s.staleUntil) && (!p.staleMarkedLocked() || !p.staleSignalled && p.errorCount > 0) {
		return s.expiresAt
	}
	return s.staleUntil
}

// emit queues events for Options.OnEvent. Callers must not hold p.mu only
// by convention: queueing never blocks and runs no user code.
func (p *provider) emit(evs []Event) {
	for _, ev := range evs {
		p.m.notify.event(ev, &p.eventsDropped)
		p.logEvent(ev)
	}
}

// logEvent queues the log record of an event. Failed refreshes and key set
// changes are logged by logOutcome, with the fetch's details.
func (p *provider) logEvent(ev Event) {
	if !p.m.notify.logs() {
		return
	}
	attrs := []slog.Attr{slog.String("tenant", ev.TenantID), slog.String("provider", ev.ProviderID)}
	switch ev.Kind {
	case EventStateChanged:
		p.m.logf(p, slog.LevelDebug, "jwks state changed", append(attrs,
			slog.String("from", ev.From.String()), slog.String("to", ev.To.String()))...)
	case EventStaleBegan:
		p.m.logf(p, slog.LevelWarn, "jwks keys served stale: refreshes fail past expiry", attrs...)
	case EventStaleEnded:
		p.m.logf(p, slog.LevelInfo, "jwks stale serving ended", append(attrs, slog.Bool("withdrawn", ev.Withdrawn))...)
	case EventRecovered:
		p.m.logf(p, slog.LevelInfo, "jwks refresh recovered", append(attrs, slog.Int("failures", ev.Failures))...)
	case EventKeyDenied:
		p.m.logf(p, slog.LevelWarn, "jwks key denied", append(attrs, slog.String("kid", capTo(ev.KID, maxShownID)))...)
	case EventKeyAllowed:
		p.m.logf(p, slog.LevelInfo, "jwks key allowed again", append(attrs, slog.String("kid", capTo(ev.KID, maxShownID)))...)
	}
}

// recentFailure returns the last error when the provider has no keys and
// its last attempt failed so recently that the next background attempt is
// not yet due: a caller then gets that error at once instead of adding load
// to a failing IdP.
func (p *provider) recentFailure() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.errorCount > 0 && p.lastErr != nil && time.Now().Before(p.nextRefresh) {
		return p.lastErr
	}
	return nil
}

// lastError returns the last error, or nil.
func (p *provider) lastError() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastErr
}

// opError names p, its URL and the operation around err.
func (p *provider) opError(op string, err error) error {
	return &ProviderError{TenantID: p.key.tenant, ProviderID: p.key.provider, URL: p.urlForError(), Op: op, Err: err}
}

// urlForError returns the URL to name in an error.
func (p *provider) urlForError() string {
	if s := p.snap.Load(); s != nil {
		return s.url
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.jwksURL != "" {
		return p.jwksURL
	}
	r := p.registration()
	if r.usesDiscovery() {
		return r.discoveryURL()
	}
	return r.JWKSURL
}

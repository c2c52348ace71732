package jwkscache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// failureBackoffMin and failureBackoffMax bound the delay between
	// background attempts after a failed refresh or first load.
	failureBackoffMin = time.Second
	failureBackoffMax = 5 * time.Minute
	// kidBurst is the burst of the per-provider unknown-kid bucket.
	kidBurst = 2
	// maxNegativeKIDs bounds the per-provider negative cache.
	maxNegativeKIDs = 256
	// maxKIDLen bounds the kids that may trigger a refresh or enter the
	// negative cache; real kids are far shorter.
	maxKIDLen = 256
)

// provider is the state of one registered (tenant, provider) pair.
//
// The read path uses only the atomic fields. Everything else is guarded by
// mu, except the scheduler's fields at the end, which its mutex guards. The
// lock order is p.mu, then scheduler.mu.
type provider struct {
	m    *Manager
	key  providerKey
	slot uint32 // hit counter slot

	cfg    atomic.Pointer[Registration]        // current registration, defaults applied
	snap   atomic.Pointer[snapshot]            // keys served; nil when none
	denied atomic.Pointer[map[string]struct{}] // copy on write; nil when none
	// flightKey names p's fetch in the Manager's singleflight.Group; the
	// sequence number keeps a re-registered pair from joining the fetch of
	// its removed predecessor.
	flightKey string
	// applied counts the fetch outcomes applied, bumped after the snapshot
	// is stored: a caller that read it before deciding to fetch can tell
	// that a fetch has completed since, and take that outcome instead.
	applied atomic.Uint64
	// fetchSeq numbers fetches as they start; okSeq is the number of the
	// latest successful one. An unknown kid is negative-cached only when a
	// fetch begun after the miss succeeded without it.
	fetchSeq, okSeq atomic.Uint64

	// Slow-path counters: misses shows in Status; the others count the
	// outcomes the metrics of DESIGN section 8 will export.
	misses                                  atomic.Uint64
	kidRefreshed, kidRateLimited, kidNegHit atomic.Uint64
	refreshUpdated, refreshNotModified      atomic.Uint64
	refreshErrors                           atomic.Uint64

	mu          sync.Mutex // guards the fields below
	gen         uint64     // bumped when Register changes the source: fetches begun before are void
	removed     bool
	inflight    bool // a fetch is running; its apply reschedules p
	state       State
	errorCount  int
	lastErr     error
	nextRefresh time.Time
	jwksURL     string               // reg.JWKSURL, or the one discovered; "" before discovery
	disc        *discoveryState      // nil unless the registration uses discovery
	negative    map[string]time.Time // kid -> until; lazily allocated
	tokens      float64              // unknown-kid bucket
	tokensAt    time.Time            // last bucket update; zero before the first

	// Scheduler fields, guarded by scheduler.mu.
	due         time.Time
	heapIdx     int  // position in the timer heap; -1 when not in it
	queued      bool // waiting in the workers' queue
	failWaiting bool // in line for a failing slot
	failGranted bool // handed a failing slot, not yet taken
}

// discoveryState is what a provider remembers of its discovery document.
type discoveryState struct {
	val     validators
	expires time.Time
}

func (p *provider) reg() *Registration { return p.cfg.Load() }

// isDenied reports whether kid is denied.
func (p *provider) isDenied(kid string) bool {
	if d := p.denied.Load(); d != nil {
		_, ok := (*d)[kid]
		return ok
	}
	return false
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
// refresh, or the end of the snapshot's stale window if that comes first.
// Readers never check the clock; the scheduler withdraws keys whose stale
// window has run out.
func (p *provider) nextDueLocked() time.Time {
	due := p.nextRefresh
	if s := p.snap.Load(); s != nil && s.staleUntil.Before(due) {
		due = s.staleUntil
	}
	return due
}

// anyFetch, as the seen argument of await, asks for a fetch even if one
// completed since the caller last looked (manual Refresh).
const anyFetch = ^uint64(0)

// await joins (or starts) the provider's shared fetch and waits for it
// under ctx. The fetch itself runs on the Manager's context, so a caller
// that gives up does not cancel it for the others. seen is p.applied as the
// caller read it before deciding to fetch: if a fetch has completed since,
// its outcome is the answer and no new fetch starts.
func (p *provider) await(ctx context.Context, seen uint64) error {
	ch := p.m.flights.DoChan(p.flightKey, func() (any, error) { return p.flightFn(seen) })
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-p.m.ctx.Done():
		return ErrClosed
	}
}

// refreshNow runs (or joins) the shared fetch in the calling goroutine.
func (p *provider) refreshNow(seen uint64) error {
	_, err, _ := p.m.flights.Do(p.flightKey, func() (any, error) { return p.flightFn(seen) })
	return err
}

// errSuperseded is the outcome of a fetch started under a registration
// that Register has replaced since; the flight then fetches again for the
// current registration, so its callers never see it.
var errSuperseded = errors.New("jwkscache: registration changed during the fetch")

func (p *provider) flightFn(seen uint64) (_ any, err error) {
	if !p.m.enter() {
		return nil, ErrClosed
	}
	defer p.m.leave()
	// A panic here (in OnEvent or a Logger handler, both user code) would
	// be re-raised by singleflight where nothing can recover it.
	defer func() {
		if r := recover(); r != nil {
			p.m.panics.Add(1)
			p.m.log.LogAttrs(context.Background(), slog.LevelError, "jwkscache: panic during a fetch",
				slog.String("tenant", p.key.tenant), slog.String("provider", p.key.provider), slog.String("panic", fmt.Sprint(r)))
			err = fmt.Errorf("jwkscache: %s/%s: panic during a fetch: %v", p.key.tenant, p.key.provider, r)
			// The fetch did not finish: nobody else will reschedule p.
			p.mu.Lock()
			p.inflight = false
			if !p.removed {
				p.m.sched.schedule(p, time.Now().Add(failureBackoffMax))
			}
			p.mu.Unlock()
		}
	}()
	if seen != anyFetch && p.applied.Load() != seen {
		return nil, p.lastError() // a fetch completed since the caller looked
	}
	for {
		if err := p.doRefresh(p.m.ctx); !errors.Is(err, errSuperseded) {
			return nil, err
		}
	}
}

// doRefresh performs one fetch (with OIDC discovery first when due) and
// applies its outcome.
func (p *provider) doRefresh(ctx context.Context) error {
	m := p.m
	seq := p.fetchSeq.Add(1)
	p.mu.Lock()
	if p.removed {
		p.mu.Unlock()
		return ErrNotRegistered
	}
	reg := p.reg()
	gen := p.gen
	p.inflight = true
	snap := p.snap.Load()
	var evs []Event
	if snap == nil {
		evs = p.setStateLocked(StateLoading, evs)
	} else {
		evs = p.setStateLocked(StateRefreshing, evs)
	}
	url := p.jwksURL
	var discVal validators
	needDisc := false
	if reg.usesDiscovery() {
		needDisc = url == "" || p.disc == nil || !time.Now().Before(p.disc.expires)
		if p.disc != nil {
			discVal = p.disc.val
		}
	}
	p.mu.Unlock()
	m.emit(evs)

	start := time.Now()
	// One Deadline bounds the whole refresh, discovery included.
	ctx, cancel := context.WithTimeout(ctx, reg.Retry.Deadline)
	defer cancel()
	var (
		disc *discoveryResult
		err  error
		res  *keysResult
	)
	if needDisc {
		disc, err = m.fetcher.fetchDiscovery(ctx, reg, discVal)
		if err == nil && disc.Doc != nil {
			url = disc.Doc.JWKSURI
		}
	}
	if err == nil {
		var val validators
		if snap != nil && snap.url == url {
			val = snap.validators
		}
		res, err = m.fetcher.fetchKeys(ctx, reg, url, val)
	}
	return p.apply(gen, seq, reg, url, snap, disc, res, err, time.Since(start))
}

// apply records the outcome of a fetch started under registration
// generation gen with snapshot base (nil for a first load). A result for an
// older generation is dropped and reported as errSuperseded, so that the
// flight fetches again for the new one; a result for a removed provider is
// reported as ErrNotRegistered.
func (p *provider) apply(gen, seq uint64, reg *Registration, url string, base *snapshot, disc *discoveryResult, res *keysResult, ferr error, took time.Duration) error {
	m := p.m
	now := time.Now()
	var evs []Event
	p.mu.Lock()
	p.inflight = false
	if p.removed {
		p.mu.Unlock()
		return ErrNotRegistered
	}
	if p.gen != gen {
		// Registered anew while this fetch ran: its result is void. The
		// flight fetches again for the new registration (errSuperseded),
		// so its callers get the answer of the current source.
		p.mu.Unlock()
		return errSuperseded
	}
	// The issuer binding is the registration's as it is now: Register
	// changes it in place when the source stays the same.
	issuer := p.reg().Issuer
	old := p.snap.Load()
	if old == nil && base != nil && res != nil && res.NotModified {
		// The stale window ran out while the revalidation was in flight:
		// the IdP just confirmed the keys we sent validators for.
		old = base
	}
	if ferr == nil {
		if disc != nil {
			p.jwksURL = url
			p.disc = &discoveryState{val: disc.Validators, expires: disc.FetchedAt.Add(disc.Fresh.TTL)}
		}
		var ns *snapshot
		switch {
		case res.NotModified && old != nil:
			ns = old.renewed(res.Validators, res.Fresh, res.FetchedAt, reg.staleWindow())
			p.refreshNotModified.Add(1)
		case old != nil && old.url == url && old.hash == res.Hash:
			ns = old.renewed(res.Validators, res.Fresh, res.FetchedAt, reg.staleWindow())
			p.refreshNotModified.Add(1)
		case res.NotModified:
			// A 304 with nothing to renew cannot happen: validators are
			// sent only with a snapshot. Treat it as a protocol error.
			ferr = &FetchError{TenantID: reg.TenantID, ProviderID: reg.ProviderID, URL: url, Class: ClassStatus, StatusCode: 304, Err: errors.New("304 without a cached copy")}
		default:
			ns = &snapshot{keys: res.Keys, raw: res.Body, hash: res.Hash, url: url, issuer: issuer, validators: res.Validators}
			ns.setTimes(res.Fresh, res.FetchedAt, reg.staleWindow())
			p.refreshUpdated.Add(1)
			p.negative = nil
			evs = append(evs, Event{Kind: EventKeysChanged, TenantID: reg.TenantID, ProviderID: reg.ProviderID, Time: now, KIDs: kidsOf(res.Keys)})
		}
		if ferr == nil {
			p.snap.Store(ns)
			if seq > p.okSeq.Load() {
				p.okSeq.Store(seq)
			}
			p.errorCount = 0
			p.lastErr = nil
			p.nextRefresh = res.FetchedAt.Add(refreshDelay(res.Fresh.TTL, reg.RefreshEarly, reg.jitterWindow(), rand.Int64N))
			evs = p.setStateLocked(StateReady, evs)
		}
	}
	if ferr != nil {
		p.refreshErrors.Add(1)
		p.errorCount++
		p.lastErr = ferr
		if old != nil && now.Before(old.staleUntil) {
			evs = p.setStateLocked(StateReady, evs)
		} else {
			p.snap.Store(nil)
			evs = p.setStateLocked(StateEmpty, evs)
		}
		p.nextRefresh = now.Add(failureBackoff(p.errorCount, ferr))
		evs = append(evs, Event{Kind: EventRefreshFailed, TenantID: reg.TenantID, ProviderID: reg.ProviderID, Time: now, Err: ferr})
	}
	m.sched.schedule(p, p.nextDueLocked())
	errCount := p.errorCount
	p.applied.Add(1)
	p.mu.Unlock()

	m.emit(evs)
	if ferr != nil {
		m.log.LogAttrs(context.Background(), slog.LevelWarn, "jwks refresh failed",
			slog.String("tenant", reg.TenantID), slog.String("provider", reg.ProviderID), slog.String("url", url),
			slog.String("class", string(errorClass(ferr))), slog.Int("errorCount", errCount),
			slog.Duration("took", took), slog.String("error", ferr.Error()))
	} else if len(evs) > 0 && evs[0].Kind == EventKeysChanged {
		m.log.LogAttrs(context.Background(), slog.LevelInfo, "jwks keys changed",
			slog.String("tenant", reg.TenantID), slog.String("provider", reg.ProviderID), slog.String("url", url),
			slog.Any("kids", evs[0].KIDs), slog.Duration("took", took))
	}
	return ferr
}

func kidsOf(ks *keySet) []string {
	out := make([]string, len(ks.keys))
	for i, k := range ks.keys {
		out[i] = k.info.KID
	}
	return out
}

// errorClass returns the class of a fetch error.
func errorClass(err error) ErrorClass {
	var fe *FetchError
	if errors.As(err, &fe) {
		return fe.Class
	}
	return ClassNetwork
}

// failureBackoff is the delay before the next background attempt after n
// consecutive failures: exponential with equal jitter, in [1s, 2s] after
// the first failure and [2.5min, 5min] at the cap (so never zero, never a
// hot loop, never lockstep), and at least the server's Retry-After.
func failureBackoff(n int, err error) time.Duration {
	d := failureBackoffMax
	if n < 20 {
		d = min(2*failureBackoffMin<<(n-1), failureBackoffMax)
	}
	d = d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
	var fe *FetchError
	if errors.As(err, &fe) && fe.RetryAfter > d {
		d = min(fe.RetryAfter, failureBackoffMax)
	}
	return d
}

// expire is the scheduler's look at p when it comes due, in the timer
// goroutine: it withdraws keys whose stale window has run out and reports
// whether a refresh is due, rescheduling p otherwise. It does no I/O.
func (p *provider) expire(now time.Time) (refresh bool) {
	p.mu.Lock()
	if p.removed {
		p.mu.Unlock()
		return false
	}
	var evs []Event
	if s := p.snap.Load(); s != nil && !now.Before(s.staleUntil) {
		p.snap.Store(nil)
		evs = p.setStateLocked(StateEmpty, evs)
		if p.nextRefresh.After(now) && p.errorCount == 0 {
			p.nextRefresh = now
		}
	}
	switch {
	case p.inflight:
		// The running fetch reschedules p when it ends.
	case now.Before(p.nextRefresh):
		p.m.sched.schedule(p, p.nextDueLocked())
	default:
		refresh = true
	}
	p.mu.Unlock()
	p.m.emit(evs)
	return refresh
}

// tick is a worker's visit: it refreshes p if the refresh is (still) due.
// A provider whose last fetch failed needs one of the slots for failing
// providers, or waits in line for one (see scheduler).
func (p *provider) tick() {
	sched := p.m.sched
	held := sched.takeGrant(p)
	defer func() {
		if held {
			sched.releaseFailing()
		}
	}()
	now := time.Now()
	p.mu.Lock()
	if p.removed || p.inflight {
		p.mu.Unlock()
		return
	}
	if now.Before(p.nextRefresh) {
		sched.schedule(p, p.nextDueLocked())
		p.mu.Unlock()
		return
	}
	failing := p.errorCount > 0
	seen := p.applied.Load()
	p.mu.Unlock()
	if failing && !held {
		if !sched.acquireOrWait(p) {
			// In line for a slot. Keep the stale window enforced meanwhile.
			p.mu.Lock()
			if s := p.snap.Load(); s != nil && !p.removed {
				sched.schedule(p, s.staleUntil)
			}
			p.mu.Unlock()
			return
		}
		held = true
	}
	_ = p.refreshNow(seen) // apply reschedules
	// The flight may have been another caller's that ended before ours
	// began: make sure p stays scheduled.
	p.mu.Lock()
	if !p.removed && !p.inflight {
		sched.schedule(p, p.nextDueLocked())
	}
	p.mu.Unlock()
}

// allowKIDRefresh decides whether an unknown kid may trigger a refresh:
// not if a recent fetch showed the kid missing (negative cache), not if the
// provider's bucket is empty, not if the global cap is reached. It returns
// "" when the refresh may go ahead, else why not.
func (p *provider) allowKIDRefresh(kid string) string {
	now := time.Now()
	reg := p.reg()
	p.mu.Lock()
	if until, ok := p.negative[kid]; ok {
		if now.Before(until) {
			p.mu.Unlock()
			p.kidNegHit.Add(1)
			return "missing from a recent fetch"
		}
		delete(p.negative, kid)
	}
	// Refill the bucket: one token per NegativeCacheTTL, burst kidBurst.
	if !p.tokensAt.IsZero() {
		p.tokens = min(kidBurst, p.tokens+float64(now.Sub(p.tokensAt))/float64(reg.NegativeCacheTTL))
	}
	p.tokensAt = now
	if p.tokens < 1 || !p.m.kidLimiter.take(now) {
		p.mu.Unlock()
		p.kidRateLimited.Add(1)
		return "refresh rate-limited"
	}
	p.tokens--
	p.mu.Unlock()
	p.kidRefreshed.Add(1)
	return ""
}

// rememberMissing records that a fresh fetch did not contain kid.
func (p *provider) rememberMissing(kid string) {
	now := time.Now()
	until := now.Add(p.reg().NegativeCacheTTL)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.negative == nil {
		p.negative = make(map[string]time.Time)
	}
	if len(p.negative) >= maxNegativeKIDs {
		for k, t := range p.negative {
			if !t.After(now) {
				delete(p.negative, k) // expired
			}
		}
	}
	if len(p.negative) >= maxNegativeKIDs {
		// Evict the entry closest to expiry.
		var victim string
		var first time.Time
		for k, t := range p.negative {
			if victim == "" || t.Before(first) {
				victim, first = k, t
			}
		}
		delete(p.negative, victim)
	}
	p.negative[kid] = until
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

// kidBucket is a token bucket shared by all providers: the global cap of
// kid-driven refreshes.
type kidBucket struct {
	mu     sync.Mutex
	rate   float64 // tokens per second, also the burst
	tokens float64
	at     time.Time
}

func (b *kidBucket) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.at.IsZero() {
		b.tokens = b.rate
	} else {
		b.tokens = min(b.rate, b.tokens+now.Sub(b.at).Seconds()*b.rate)
	}
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// setDenied adds or removes kid from the denied set.
func (p *provider) setDenied(kid string, deny bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	next := make(map[string]struct{})
	if d := p.denied.Load(); d != nil {
		for k := range *d {
			next[k] = struct{}{}
		}
	}
	if deny {
		next[kid] = struct{}{}
	} else {
		delete(next, kid)
	}
	if len(next) == 0 {
		p.denied.Store(nil)
		return
	}
	p.denied.Store(&next)
}

// deniedKIDs returns the denied kids, sorted.
func (p *provider) deniedKIDs() []string {
	d := p.denied.Load()
	if d == nil {
		return nil
	}
	out := make([]string, 0, len(*d))
	for k := range *d {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

package jwkscache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"
)

const (
	// failureBackoffMin and failureBackoffMax bound the delay between
	// background attempts after a failed refresh or first load.
	failureBackoffMin = time.Second
	failureBackoffMax = 5 * time.Minute
	// slowFetch is the fetch duration from which a provider counts as slow
	// for the scheduler's fairness (see scheduler).
	slowFetch = time.Second
)

// flightReason says why a fetch started. The values are stable: they
// label metrics and spans.
type flightReason uint8

const (
	reasonFirstLoad  flightReason = iota // no keys yet: a cold lookup or the background first load
	reasonScheduled                      // the background refresh before expiry, or a retry after a failure
	reasonUnknownKID                     // a lookup met a kid the set lacks
	reasonManual                         // Refresh
	reasonRevalidate                     // a client asked to revalidate (Cache-Control: no-cache)
)

var reasonNames = [...]string{"first_load", "scheduled", "unknown_kid", "manual", "revalidate"}

func (r flightReason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "unknown"
}

// refreshResult is what a refresh did to the provider's keys.
type refreshResult uint8

const (
	resultUpdated     refreshResult = iota // a new key set is served
	resultNotModified                      // a 304 or an identical body renewed the keys
	resultError                            // the refresh failed; the keys, if any, stay
)

var resultNames = [...]string{"updated", "not_modified", "error"}

func (r refreshResult) String() string {
	if int(r) < len(resultNames) {
		return resultNames[r]
	}
	return "unknown"
}

// outcome is everything one refresh produced. doRefresh fills it and apply
// records it, in one place, under p.mu.
type outcome struct {
	reason flightReason
	gen    uint64 // registration generation the fetch began under
	seq    uint64 // fetch number (fetchSeq)
	reg    *Registration
	url    string    // the JWKS URL fetched
	base   *snapshot // the snapshot when the fetch began; nil for a first load
	disc   *discoveryResult
	res    *keysResult
	err    error
	source snapshotSource
	took   time.Duration
	lease  Lease // the fleet lease this refresh holds; nil when none

	// Set by apply.
	saved          *snapshot // the snapshot a success stored, for the Store
	result         refreshResult
	added, removed []string // kids, when the key set changed
	recovered      int      // consecutive failures this success ended
}

// anyFetch, as the seen argument of await, asks for a fetch even if one
// completed since the caller last looked (manual Refresh).
const anyFetch = ^uint64(0)

// await joins (or starts) the provider's shared fetch and waits for it
// under ctx. The fetch itself runs on the Manager's context, so a caller
// that gives up does not cancel it for the others. seen is p.applied as the
// caller read it before deciding to fetch: if a fetch has completed since,
// its outcome is the answer and no new fetch starts.
func (p *provider) await(ctx context.Context, seen uint64, why flightReason) error {
	w := p.startWait(ctx, why) // tracing.go: the caller's span, linked to the refresh
	ch := p.m.flights.DoChan(p.flightKey(), func() (any, error) { return p.tracedFlight(seen, why) })
	select {
	case r := <-ch:
		return w.end(r.Val, r.Err, "")
	case <-ctx.Done():
		return w.end(nil, context.Cause(ctx), resultGaveUp)
	case <-p.m.ctx.Done():
		return w.end(nil, ErrClosed, resultClosed)
	}
}

// refreshNow runs (or joins) the shared fetch in the calling goroutine.
func (p *provider) refreshNow(seen uint64, why flightReason) error {
	_, err, _ := p.m.flights.Do(p.flightKey(), func() (any, error) { return p.tracedFlight(seen, why) })
	return err
}

// errSuperseded is the outcome of a fetch started under a registration
// that Register has replaced since; the flight then fetches again for the
// current registration, so its callers never see it.
var errSuperseded = errors.New("jwkscache: registration changed during the fetch")

// panicError is a panic recovered during a refresh. It is an engine bug:
// the refresh fails with ClassPanic and the provider retries later.
type panicError struct {
	tenant, provider string
	value            string
}

func (e *panicError) Error() string {
	return "jwkscache: " + e.tenant + "/" + e.provider + ": panic during a refresh: " + e.value
}

// flight is the body of a shared fetch.
func (p *provider) flight(seen uint64, why flightReason) (err error) {
	m := p.m
	if !m.enter() {
		return ErrClosed
	}
	defer m.leave()
	// A panic would be re-raised by singleflight where nothing can recover
	// it. Every critical section of the flight (here, in doRefresh, apply
	// and the scheduler) unlocks with defer, so when the recovery runs no
	// lock is still held by the code that panicked, and recording the
	// failure cannot deadlock.
	defer func() {
		if r := recover(); r != nil {
			m.panics.Add(1)
			pe := &panicError{tenant: p.key.tenant, provider: p.key.provider, value: capText(fmt.Sprint(r))}
			err = pe
			m.logf(p, slog.LevelError, "jwkscache: panic during a refresh",
				slog.String("tenant", p.key.tenant), slog.String("provider", p.key.provider),
				slog.String("panic", pe.value), slog.String("stack", stackTrace()))
			p.failPanicked(pe, why)
		}
	}()
	if seen != anyFetch && p.applied.Load() != seen {
		return p.lastError() // a fetch completed since the caller looked
	}
	// Fetch again for the current registration when Register changed the
	// source meanwhile, so the callers get its answer; but a registration
	// that keeps changing must not hold a worker for ever, past the
	// scheduler's fairness: after a few tries the flight gives up, and the
	// scheduler takes the provider up again under its rules.
	for range maxSupersededTries {
		if err := p.doRefresh(why); !errors.Is(err, errSuperseded) {
			return err
		}
	}
	return errSupersededRepeatedly
}

// maxSupersededTries bounds the fetches of one flight whose registration
// changed while they ran.
const maxSupersededTries = 3

// errSupersededRepeatedly is a flight's error when the registration changed
// during each of its fetches.
var errSupersededRepeatedly = errors.New("jwkscache: the registration changed during each fetch; try again")

// failPanicked records a refresh that panicked as a failed one (class
// panic): the keys, if any, stay; the next attempt comes after the longest
// backoff, since retrying a bug at once would only repeat it.
func (p *provider) failPanicked(pe *panicError, why flightReason) {
	now := time.Now()
	var evs []Event
	func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.inflight = false
		if p.removed.Load() {
			return
		}
		if why == reasonScheduled && p.snap.Load() == nil {
			why = reasonFirstLoad // as doRefresh would have named it
		}
		p.recordOutcomeLocked(&outcome{reason: why, result: resultError, err: pe})
		p.errorCount++
		p.lastErr = pe
		p.slow = true
		p.nextRefresh = now.Add(failureBackoffMax)
		st := StateReady
		if p.snap.Load() == nil {
			st = StateEmpty
		}
		evs = p.setStateLocked(st, evs)
		p.m.sched.schedule(p, p.nextDueLocked())
		p.applied.Add(1)
	}()
	p.emit(append(evs, Event{Kind: EventRefreshFailed, TenantID: p.key.tenant, ProviderID: p.key.provider, Time: now, Err: pe}))
}

// doRefresh performs one fetch (with OIDC discovery first when due) and
// applies its outcome.
func (p *provider) doRefresh(why flightReason) error {
	m := p.m
	o := &outcome{reason: why, seq: p.fetchSeq.Add(1), source: sourceNetwork}
	var (
		evs      []Event
		discVal  validators
		needDisc bool
	)
	err := func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.removed.Load() {
			return ErrNotRegistered
		}
		o.reg, o.gen, o.url, o.base = p.registration(), p.gen, p.jwksURL, p.snap.Load()
		p.inflight = true
		if o.base == nil {
			if o.reason == reasonScheduled {
				o.reason = reasonFirstLoad
			}
			evs = p.setStateLocked(StateLoading, evs)
		} else {
			evs = p.setStateLocked(StateRefreshing, evs)
		}
		if o.reg.usesDiscovery() {
			needDisc = o.url == "" || p.disc == nil || !time.Now().Before(p.disc.expires)
			if p.disc != nil {
				discVal = p.disc.val
			}
		}
		return nil
	}()
	if err != nil {
		return err
	}
	p.emit(evs)
	if m.persist != nil {
		if done, err := p.storeStep(o); done {
			return err
		}
	}

	ctx, span := p.startRefreshSpan(o) // tracing.go: a root span on m.ctx
	defer span.abort()
	start := time.Now()
	// One Deadline bounds the whole refresh, discovery included.
	ctx, cancel := context.WithTimeout(ctx, o.reg.Retry.Deadline)
	defer cancel()
	if needDisc {
		o.disc, o.err = m.fetcher.fetchDiscovery(ctx, o.reg, discVal)
		if o.err == nil && o.disc.Doc != nil {
			o.url = o.disc.Doc.JWKSURI
		}
	}
	if o.err == nil {
		var val validators
		if o.base != nil && o.base.url == o.url {
			val = o.base.validators
		}
		o.res, o.err = m.fetcher.fetchKeys(ctx, o.reg, o.url, val)
	}
	o.took = time.Since(start)
	if m.ctx.Err() != nil {
		// Closed while fetching: the failure is ours, not the IdP's.
		p.mu.Lock()
		p.inflight = false
		p.mu.Unlock()
		return span.end(o, ErrClosed) // a lease lapses by itself
	}
	err = p.apply(o)
	if m.persist != nil {
		p.persistOutcome(o, err)
	}
	return span.end(o, err)
}

// apply records a refresh outcome: the new snapshot, the error count, the
// state, the next refresh and the events, all under p.mu; events and logs
// are queued after it is released. A result for an older registration
// generation is dropped and reported as errSuperseded, so that the flight
// fetches again for the new one; a result for a removed provider is
// reported as ErrNotRegistered.
func (p *provider) apply(o *outcome) error {
	now := time.Now()
	var (
		evs      []Event
		errCount int
		stale    bool
	)
	err := func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.inflight = false
		if p.removed.Load() {
			return ErrNotRegistered
		}
		if p.gen != o.gen {
			// Registered anew while this fetch ran: its result is void,
			// but what it cost still counts for fairness.
			if o.err != nil || o.took >= slowFetch {
				p.slow = true
			}
			return errSuperseded
		}
		p.slow = o.err != nil || o.took >= slowFetch
		evs = p.applyLocked(o, now, evs)
		p.recordOutcomeLocked(o)
		p.m.sched.schedule(p, p.nextDueLocked())
		errCount = int(p.errorCount)
		stale = o.err != nil && p.snap.Load() != nil
		p.applied.Add(1)
		return nil
	}()
	if err != nil {
		return err
	}
	p.emit(evs)
	p.logOutcome(o, errCount, stale)
	return o.err
}

// applyLocked is apply's work under p.mu: it sets o.result and returns the
// events to emit.
func (p *provider) applyLocked(o *outcome, now time.Time, evs []Event) []Event {
	// The issuer binding is the registration's as it is now: Register
	// changes it in place when the source stays the same.
	issuer := p.registration().Issuer
	old := p.snap.Load()
	if old == nil && o.base != nil && o.res != nil && o.res.NotModified {
		// The stale window ran out while the revalidation was in flight:
		// the IdP just confirmed the keys we sent validators for.
		old = o.base
	}
	if o.err == nil {
		var ns *snapshot
		res := o.res
		switch {
		case old != nil && (res.NotModified || old.url == o.url && old.doc.hash == res.Hash):
			ns = old.renewed(res.Validators, res.Fresh, res.FetchedAt, o.reg.staleWindow(), o.source)
			// The current source (p.gen == o.gen) confirmed these keys: they
			// now answer for the current issuer, not the one they were
			// first loaded under (a source change that kept the URL, or a
			// revalidation that outlived the stale window).
			ns.issuer = issuer
			o.result = resultNotModified
		case res.NotModified:
			// A 304 with nothing to renew cannot happen: validators are
			// sent only with a snapshot. Treat it as a protocol error.
			o.err = &FetchError{TenantID: o.reg.TenantID, ProviderID: o.reg.ProviderID, URL: o.url, Class: ClassStatus, StatusCode: 304, Err: errors.New("304 without a cached copy")}
		default:
			doc := p.m.docs.intern(res.Hash, res.Body, res.Keys)
			ns = &snapshot{keys: doc.keys, doc: doc, url: o.url, issuer: issuer, validators: res.Validators, source: o.source}
			ns.setTimes(res.Fresh, res.FetchedAt, o.reg.staleWindow())
			o.result = resultUpdated
			ev := p.keysChangedLocked(old, res.Keys, now)
			o.added, o.removed = ev.Added, ev.Removed
			evs = append(evs, ev)
		}
		if o.err == nil {
			if o.disc != nil {
				p.jwksURL = o.url
				p.disc = &discoveryState{val: o.disc.Validators, expires: o.disc.FetchedAt.Add(o.disc.Fresh.TTL)}
			}
			p.snap.Store(ns)
			o.saved = ns
			p.endStaleLocked()
			if o.seq > p.okSeq.Load() {
				p.okSeq.Store(o.seq)
			}
			o.recovered = int(p.errorCount)
			staleEnded := p.staleSignalled
			p.staleSignalled = false
			p.errorCount = 0
			p.lastErr = nil
			p.nextRefresh = res.FetchedAt.Add(refreshDelay(res.Fresh.TTL, o.reg.RefreshEarly, o.reg.jitterWindow(), rand.Int64N))
			evs = p.setStateLocked(StateReady, evs)
			if o.recovered > 0 {
				ev := p.newEvent(EventRecovered, now)
				ev.Failures = o.recovered
				evs = append(evs, ev)
			}
			if staleEnded {
				evs = append(evs, p.newEvent(EventStaleEnded, now))
			}
			return evs
		}
	}
	o.result = resultError
	p.errorCount++
	p.lastErr = o.err
	if old != nil && now.Before(old.staleUntil) {
		evs = p.setStateLocked(StateReady, evs)
		evs = p.staleBeganLocked(old, now, evs)
	} else {
		p.withdrawLocked(old)
		evs = p.setStateLocked(StateEmpty, evs)
		evs = p.staleEndedLocked(now, evs)
	}
	p.nextRefresh = now.Add(failureBackoff(int(p.errorCount), o.err))
	ev := p.newEvent(EventRefreshFailed, now)
	ev.Err, ev.Class = o.err, errorClass(o.err)
	return append(evs, ev)
}

// keysChangedLocked records that keys replace the keys of old (nil when
// none were served): the unknown kids remembered as missing are forgotten,
// the rotation is counted, and the event to emit is returned. p.mu must be
// held.
func (p *provider) keysChangedLocked(old *snapshot, keys *keySet, now time.Time) Event {
	if p.kid != nil {
		p.kid.negative = nil
	}
	ev := p.newEvent(EventKeysChanged, now)
	ev.KIDs = kidsOf(keys)
	if old == nil {
		ev.Added = ev.KIDs
		return ev
	}
	ev.Added, ev.Removed = diffKIDs(kidsOf(old.keys), ev.KIDs)
	p.recordRotationLocked(len(ev.Added), len(ev.Removed))
	return ev
}

// staleBeganLocked signals, once, that s is served past its expiry.
func (p *provider) staleBeganLocked(s *snapshot, now time.Time, evs []Event) []Event {
	if p.staleSignalled || now.Before(s.expiresAt) {
		return evs
	}
	p.staleSignalled = true
	return append(evs, p.newEvent(EventStaleBegan, now))
}

// staleEndedLocked signals the end of stale serving by withdrawal.
func (p *provider) staleEndedLocked(now time.Time, evs []Event) []Event {
	if !p.staleSignalled {
		return evs
	}
	p.staleSignalled = false
	ev := p.newEvent(EventStaleEnded, now)
	ev.Withdrawn = true
	return append(evs, ev)
}

// logOutcome queues the log record of an applied outcome.
func (p *provider) logOutcome(o *outcome, errCount int, stale bool) {
	m := p.m
	if !m.notify.logs() {
		return
	}
	base := []slog.Attr{
		slog.String("tenant", o.reg.TenantID), slog.String("provider", o.reg.ProviderID),
		slog.String("url", spanURL(o.url)), slog.String("reason", o.reason.String()),
	}
	switch o.result {
	case resultError:
		m.logf(p, slog.LevelWarn, "jwks refresh failed", append(base,
			slog.String("class", string(errorClass(o.err))), slog.Int("errorCount", errCount),
			slog.Bool("servingStale", stale), slog.Duration("took", o.took),
			slog.String("error", spanErrorText(o.err)))...)
	case resultUpdated:
		m.logf(p, slog.LevelInfo, "jwks keys changed", append(base,
			slog.Any("kids", capKIDs(kidsOf(o.res.Keys))), slog.Any("added", capKIDs(o.added)),
			slog.Any("removed", capKIDs(o.removed)), slog.Duration("took", o.took))...)
	}
}

// capKIDs returns kids fit for a log attribute: each shown capped, and no
// more than fit in maxErrorText bytes together; a last entry says how many
// were left out.
func capKIDs(kids []string) []string {
	out := make([]string, 0, min(len(kids), 21))
	total := 0
	for i, k := range kids {
		k = capTo(k, maxShownID)
		if total+len(k) > maxErrorText-32 {
			out = append(out, fmt.Sprintf("…and %d more", len(kids)-i))
			break
		}
		total += len(k) + 3 // quotes and separator, as a log handler prints them
		out = append(out, k)
	}
	return out
}

func kidsOf(ks *keySet) []string {
	out := make([]string, len(ks.keys))
	for i, k := range ks.keys {
		out[i] = k.info.KID
	}
	return out
}

// errorClass returns the class of a refresh error.
func errorClass(err error) ErrorClass {
	var (
		fe *FetchError
		pe *panicError
	)
	switch {
	case errors.As(err, &fe):
		return fe.Class
	case errors.As(err, &pe):
		return ClassPanic
	case errors.Is(err, ErrClosed):
		return ClassClosed
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

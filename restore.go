package jwkscache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// storeStep runs before a fetch when the Manager has a Store. A first load
// restores the stored snapshot, so that a restart needs no upstream call
// while it is fresh. In a fleet (a FleetStore), a first load, a scheduled
// refresh and an unknown-kid refresh first adopt a snapshot another
// instance committed since ours, then take the pair's lease: the holder
// fetches (and commits after), the others wait for its commit and adopt
// it. Every store call is bounded and optional: on any failure the refresh
// fetches for itself. done reports that the refresh is over without a
// fetch; err is then its result.
func (p *provider) storeStep(o *outcome) (done bool, err error) {
	ps := p.m.persist
	fleet := ps.fleet != nil && (o.reason == reasonFirstLoad || o.reason == reasonScheduled || o.reason == reasonUnknownKID)
	if o.reason != reasonFirstLoad && !fleet {
		return false, nil
	}
	start := time.Now()
	if !fleet {
		// A first load: restore what a previous run saved.
		if r := ps.load(p, o.reg, start); r != nil {
			return p.adoptFor(o, r, sourceStore, start)
		}
		return false, nil
	}
	src := sourceFleet
	if o.base == nil {
		src = sourceStore // an instance starting: what the fleet saved
	}
	// One round trip: the lease, and the snapshot as it is once the lease
	// was taken or found taken.
	l, r, err := ps.tryLease(p, o.reg)
	if err != nil {
		return false, nil // a lease is an optimisation: fetch for ourselves
	}
	if r != nil {
		if done, err := p.adoptFor(o, r, src, start); done || err != nil {
			if l != nil {
				ps.release(l)
			}
			return true, err
		}
	}
	if l != nil {
		o.lease = l
		return false, nil
	}
	// Another instance is fetching: wait for its commit, then adopt it.
	// Its note wakes us, and we read the store. Without a note (notes can
	// be lost while a subscription is re-established, and a holder whose
	// fetch failed releases the lease without one) we ask for the lease
	// again now and then: it comes with the snapshot, and if the holder
	// gave up, we fetch in its place.
	deadline := start.Add(leaseTTL(o.reg))
	for wait := fleetPollMin; ; wait = min(2*wait, fleetPollMax) {
		d := min(wait, time.Until(deadline))
		if d <= 0 || p.m.ctx.Err() != nil {
			return false, nil // the holder died: fetch for ourselves
		}
		var r *restoredSnapshot
		if ps.waitNote(p.key, d) {
			r = ps.load(p, o.reg, time.Now())
		} else if l, r, err = ps.tryLease(p, o.reg); err != nil {
			return false, nil
		}
		if r != nil {
			if done, err := p.adoptFor(o, r, sourceFleet, start); done || err != nil {
				if l != nil {
					ps.release(l)
				}
				return true, err
			}
		}
		if l != nil {
			o.lease = l // the holder gave up: fetch in its place
			return false, nil
		}
	}
}

// How often a refresh waiting for another instance's commit reads the
// store, besides waking on its note.
const (
	fleetPollMin = 250 * time.Millisecond
	fleetPollMax = time.Second
)

// adoptFor adopts r for the refresh o if it is newer than the keys served.
// done reports that no fetch is needed after it: an unknown-kid refresh is
// answered by any newer snapshot, the others by one not yet due for
// refresh. Otherwise o goes on with r as its base (its validators make the
// fetch conditional).
func (p *provider) adoptFor(o *outcome, r *restoredSnapshot, src snapshotSource, start time.Time) (done bool, err error) {
	now := time.Now()
	var evs []Event
	func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.removed.Load() {
			p.inflight = false
			err = ErrNotRegistered
			return
		}
		if p.gen != o.gen {
			p.inflight = false
			err = errSuperseded // r was checked against the old registration
			return
		}
		finish := func() {
			p.inflight = false
			p.slow = time.Since(start) >= slowFetch // a long wait for the fleet counts as slow
			p.m.sched.schedule(p, p.nextDueLocked())
			p.applied.Add(1)
		}
		if cur := p.snap.Load(); cur != nil && !r.newerThan(cur) {
			// Ours is as recent. If it changed during this refresh (a note
			// from the fleet adopted meanwhile), that answers the refresh.
			if cur != o.base {
				done = true
				finish()
			}
			return
		}
		evs = p.adoptLocked(r, o.reg, src, now, evs)
		if o.reason == reasonUnknownKID && !r.fetchedAt().Before(start) {
			// Fetched after this refresh began: it answers a kid missed
			// before, as a fetch of ours would have (negative caching).
			if o.seq > p.okSeq.Load() {
				p.okSeq.Store(o.seq)
			}
		}
		// A first load is answered by any usable snapshot: lookups get its
		// keys at once, and if it is due, the scheduler refreshes it now,
		// in the background (with the IdP down, a restart must not make
		// its first lookups wait for a fetch).
		done = o.reason == reasonUnknownKID || o.reason == reasonFirstLoad || now.Before(r.refreshPoint(o.reg))
		if done {
			finish()
			return
		}
		o.base = p.snap.Load()
		evs = p.setStateLocked(StateRefreshing, evs)
	}()
	p.emit(evs)
	return done, err
}

// adoptNoted adopts r, committed by another instance of the fleet, outside
// any refresh (a rotation it caught). It runs on a store goroutine.
func (p *provider) adoptNoted(r *restoredSnapshot, reg *Registration) {
	now := time.Now()
	var evs []Event
	func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.removed.Load() || p.registration() != reg {
			return
		}
		if cur := p.snap.Load(); cur != nil && !r.newerThan(cur) {
			return
		}
		evs = p.adoptLocked(r, reg, sourceFleet, now, evs)
		if !p.inflight {
			// A refresh in flight reschedules p when it applies.
			p.m.sched.schedule(p, p.nextDueLocked())
		}
		p.applied.Add(1) // lookups waiting on a refresh look again
	}()
	p.emit(evs)
}

// newerThan reports whether r is a later exchange than cur: fetched later,
// or at the same instant with other keys (clocks of a fleet's instances
// are only so fine).
func (r *restoredSnapshot) newerThan(cur *snapshot) bool {
	f := r.fetchedAt()
	return f.After(cur.fetchedAt) || f.Equal(cur.fetchedAt) && r.hash != cur.doc.hash
}

// refreshPoint is when a snapshot of r's lifetime is due for refresh under
// reg, before any jitter.
func (r *restoredSnapshot) refreshPoint(reg *Registration) time.Time {
	ttl := r.expiresAt().Sub(r.fetchedAt())
	return r.fetchedAt().Add(refreshDelay(ttl, reg.RefreshEarly, 0, nil))
}

// adoptLocked serves the restored snapshot r in place of the current one,
// with the lifetime it had (never a fresh TTL), the stale window of reg,
// and the events a fetched key set would produce. p.mu must be held.
func (p *provider) adoptLocked(r *restoredSnapshot, reg *Registration, src snapshotSource, now time.Time, evs []Event) []Event {
	doc := p.m.docs.intern(r.hash, r.rec.Body, r.keys)
	ns := &snapshot{
		keys: doc.keys, doc: doc, url: r.rec.URL, issuer: reg.Issuer,
		validators: validators{ETag: string(r.rec.ETag), LastModified: string(r.rec.LastModified)},
		fetchedAt:  r.fetchedAt(), expiresAt: r.expiresAt(), staleUntil: r.expiresAt().Add(reg.staleWindow()),
		ttlSource: r.rec.TTLSource, source: src,
	}
	old := p.snap.Load()
	if old == nil || old.doc.hash != doc.hash {
		evs = append(evs, p.keysChangedLocked(old, doc.keys, now))
	}
	if reg.usesDiscovery() {
		p.jwksURL = r.rec.URL
	}
	p.snap.Store(ns)
	p.endStaleLocked()
	if src == sourceStore {
		p.m.persist.restored.Add(1)
	} else {
		p.m.persist.adopted.Add(1)
	}
	recovered := int(p.errorCount)
	p.errorCount = 0
	p.lastErr = nil
	if p.staleSignalled && now.Before(ns.expiresAt) {
		p.staleSignalled = false
		evs = append(evs, p.newEvent(EventStaleEnded, now))
	}
	ttl := ns.expiresAt.Sub(ns.fetchedAt)
	p.nextRefresh = ns.fetchedAt.Add(refreshDelay(ttl, reg.RefreshEarly, reg.jitterWindow(), rand.Int64N))
	evs = p.setStateLocked(StateReady, evs)
	if recovered > 0 {
		ev := p.newEvent(EventRecovered, now)
		ev.Failures = recovered
		evs = append(evs, ev)
	}
	return evs
}

// persistOutcome hands a refresh's result to the store: under a fleet
// lease, a commit (save, publish, release) or a release; otherwise the
// snapshot is queued for saving.
func (p *provider) persistOutcome(o *outcome, applyErr error) {
	ps := p.m.persist
	ok := applyErr == nil && o.saved != nil
	switch {
	case o.lease != nil && ok:
		ps.commit(p, o.lease, o.saved)
	case o.lease != nil:
		ps.release(o.lease)
	case ok && ps.fleet != nil && o.result == resultUpdated:
		// A new key set fetched without the lease (Refresh, Revalidate, a
		// fetch after waiting in vain): commit it under the lease if it is
		// free, so that the fleet adopts the rotation now rather than at
		// its next refresh.
		if l, _, err := ps.tryLease(p, o.reg); err == nil && l != nil {
			ps.commit(p, l, o.saved)
		} else {
			ps.saveSnapshot(p, o.saved)
		}
	case ok:
		ps.saveSnapshot(p, o.saved)
	}
	o.lease = nil
}

// maxRestoreErrors bounds the refused records Restore reports one by one.
const maxRestoreErrors = 10

// Restore registers every provider whose registration is in the Store
// (Options.Store) and not registered yet: registrations made at run time,
// with Register, survive a restart this way. Each is validated against the
// Manager's Options as Register would; a record that fails its checks
// (checksum, MAC, format) or validation is skipped and reported in the
// error, which matches ErrInvalidRegistration or a *StoreError. The others
// are registered regardless, and each loads its stored snapshot before any
// fetch. Restore runs the Store's LoadRegistrations on the calling
// goroutine, under ctx. Without a Store it does nothing.
func (m *Manager) Restore(ctx context.Context) (int, error) {
	ps := m.persist
	if ps == nil {
		return 0, nil
	}
	if m.closed.Load() {
		return 0, ErrClosed
	}
	since := ps.beginRestore()
	defer ps.endRestore()
	recs, err := ps.store.LoadRegistrations(ctx)
	if err != nil {
		return 0, ps.failed(opLoadRegistrations, providerKey{}, err)
	}
	ps.ok(providerKey{})
	var (
		errs    []error
		refused int
		n       int
	)
	report := func(err error) {
		refused++
		if len(errs) < maxRestoreErrors {
			errs = append(errs, err)
		}
	}
	for _, rec := range recs {
		reg, err := decodeRegistration(rec, ps.keys)
		if err != nil {
			ps.refuse(nil, "registration", err)
			report(fmt.Errorf("%w: %w", ErrInvalidRegistration, err))
			continue
		}
		// With several StoreKeys (a rotation), write the record again with
		// the first, so that the old key can be dropped. A pair registered
		// already (checked under the registry's lock) keeps the caller's
		// registration.
		if err := m.register(ctx, reg, len(ps.keys) > 1, ifAbsent, since); err != nil {
			if errors.Is(err, errRegistered) {
				continue
			}
			if errors.Is(err, ErrClosed) || ctx.Err() != nil {
				return n, err
			}
			report(err)
			continue
		}
		n++
	}
	if refused > len(errs) {
		errs = append(errs, fmt.Errorf("jwkscache: and %d more refused registrations", refused-len(errs)))
	}
	return n, errors.Join(errs...)
}

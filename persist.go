package jwkscache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The persister runs every Store call of a Manager. Store code is user
// code: it runs on the persister's own goroutines, never on a lookup, a
// refresh worker, the scheduler or under an engine lock. The engine hands
// it work and, where it needs an answer (a restore, a fleet lease), waits
// on a channel for at most Options.StoreTimeout: a Store that hangs costs a
// refresh that long, never a warm lookup anything.
//
// Writes (registrations, deletions, snapshots) are coalesced per pair, so
// that a Store that is down or slow holds at most one pending write set
// per provider, and the latest one is written when it answers again.
type persister struct {
	m       *Manager
	store   Store
	fleet   FleetStore // store, when it coordinates a fleet; else nil
	keys    macKeys
	timeout time.Duration

	// ctx bounds the store calls. It outlives the Manager's context by the
	// close flush: at Close, commits and releases already queued still run,
	// and pending writes are flushed, within most of the close timeout.
	ctx    context.Context
	cancel context.CancelFunc

	jobs chan func()   // calls waiting for a store goroutine
	kick chan struct{} // wakes the writer
	// A circuit breaker: a failed call opens it for a backoff (1s,
	// doubling to 30s) during which reads and leases are not tried, so an
	// unreachable store costs a refresh nothing; the first call after it
	// probes, and a call that succeeds closes it. downUntil is Unix
	// nanoseconds, 0 while closed; downFor is the current backoff.
	downUntil atomic.Int64
	downFor   time.Duration // guarded by mu

	mu      sync.Mutex // guards the fields below; a leaf lock
	dirty   map[providerKey]*pendingWrite
	queue   []providerKey // dirty pairs in the order they became dirty
	waiters map[providerKey][]chan struct{}
	// held: the pairs whose writes the writer has taken and not yet done
	// or put back; true when those writes hold a deletion.
	held map[providerKey]bool
	// delSeq counts the deletions written; while a Restore runs
	// (restoring > 0), deletedAt has each pair's latest, so that Restore
	// skips a pair deleted after it read the store.
	delSeq    uint64
	restoring int
	deletedAt map[providerKey]uint64
	pairs     map[providerKey]*pairStoreState
	lastErr   string // the latest store failure, for Manager-wide reporting

	// Counters read by Status and the metrics Collector.
	opErrors  [numStoreOps]atomic.Uint64
	refused   [numRefusedReasons]atomic.Uint64
	restored  atomic.Uint64 // snapshots restored at a first load
	adopted   atomic.Uint64 // snapshots adopted from the fleet
	leases    [3]atomic.Uint64
	committed atomic.Uint64
	pending   atomic.Int64 // pairs with writes not yet done
}

// pendingWrite is what remains to be written for one pair, in this order:
// the deletion, the registration, the snapshot.
type pendingWrite struct {
	del      bool
	reg      []byte
	snap     []byte
	snapDead time.Time // the snapshot's expireAt
}

// merge lays newer writes of the same pair over w: a deletion voids
// everything before it.
func (w *pendingWrite) merge(newer *pendingWrite) {
	if newer.del {
		*w = pendingWrite{del: true}
	}
	if newer.reg != nil {
		w.reg = newer.reg
	}
	if newer.snap != nil {
		w.snap, w.snapDead = newer.snap, newer.snapDead
	}
}

// pairStoreState is what Status shows of one pair's store calls.
type pairStoreState struct {
	lastErr string
	refused uint64
}

// Store operations, as they label jwks_cache_store_errors_total.
type storeOp uint8

const (
	opLoad storeOp = iota
	opSave
	opDelete
	opLoadRegistrations
	opLease
	opCommit
	opSubscribe
	numStoreOps
)

var storeOpNames = [numStoreOps + 1]string{"load", "save", "delete", "load_registrations", "lease", "commit", "subscribe", "write"}

var refusedReasons = [...]string{refusedFormat, refusedSize, refusedSum, refusedMAC, refusedOwner, refusedSuperseded, refusedContent, refusedExpired}

const numRefusedReasons = len(refusedReasons)

// refusedExpired is a snapshot record past its stale window, or with
// times the registration does not allow.
const refusedExpired = "expired"

// Lease outcomes, as they label jwks_cache_fleet_leases_total.
const (
	leaseAcquired = iota
	leaseHeld
	leaseFailed
)

var leaseNames = [...]string{"acquired", "held", "error"}

// storeWorkers is the number of goroutines running store calls.
const storeWorkers = 4

// errStoreDown and errStoreBusy are why a store call was not tried.
var (
	errStoreDown = errors.New("jwkscache: store unavailable; retrying in the background")
	errStoreBusy = errors.New("jwkscache: store calls queue is full")
)

// StoreError is a failed Store call. It wraps the Store's error.
type StoreError struct {
	Op         string // load, save, delete, load_registrations, lease, commit, subscribe
	TenantID   string // "" for calls not about one pair
	ProviderID string
	Err        error
}

func (e *StoreError) Error() string {
	who := ""
	if e.TenantID != "" || e.ProviderID != "" {
		who = " " + showID(e.TenantID) + "/" + showID(e.ProviderID)
	}
	return "jwkscache: store " + e.Op + who + ": " + capText(e.Err.Error())
}

func (e *StoreError) Unwrap() error { return e.Err }

func newPersister(m *Manager, opts *Options) *persister {
	ps := &persister{
		m:       m,
		store:   opts.Store,
		keys:    macKeys(opts.StoreKeys),
		timeout: opts.StoreTimeout,
		jobs:    make(chan func(), 256),
		kick:    make(chan struct{}, 1),
		dirty:   make(map[providerKey]*pendingWrite),
		waiters: make(map[providerKey][]chan struct{}),
		held:    make(map[providerKey]bool),
		pairs:   make(map[providerKey]*pairStoreState),
	}
	ps.fleet, _ = opts.Store.(FleetStore)
	ps.ctx, ps.cancel = context.WithCancel(context.Background())
	return ps
}

// start launches the store goroutines; the Manager's wait group tracks them.
func (ps *persister) start(ctx context.Context) {
	m := ps.m
	n := storeWorkers + 1
	if ps.fleet != nil {
		n++
	}
	m.wg.Add(n)
	// At Close, the store calls get what remains of the close timeout.
	context.AfterFunc(ctx, func() { time.AfterFunc(closeTimeout*3/4, ps.cancel) })
	for range storeWorkers {
		go func() {
			defer m.wg.Done()
			for {
				select {
				case job := <-ps.jobs:
					job()
				case <-ctx.Done():
					// Run what is queued (commits and releases that free
					// leases for the fleet), then stop.
					for {
						select {
						case job := <-ps.jobs:
							job()
						default:
							return
						}
					}
				}
			}
		}()
	}
	go func() {
		defer m.wg.Done()
		ps.writer(ctx)
	}()
	if ps.fleet != nil {
		go func() {
			defer m.wg.Done()
			ps.subscribe(ctx)
		}()
	}
}

// call runs fn on a store goroutine with a context bounded by the store
// timeout, and waits for it as long. A call not tried (store down, queue
// full) or not answered in time returns an error at once, and the engine
// goes on without the store.
func (ps *persister) call(op storeOp, key providerKey, fn func(ctx context.Context) error) (err error) {
	if until := ps.downUntil.Load(); until != 0 && time.Now().UnixNano() < until {
		// Not tried, not counted; but the provider's status shows that
		// the store is unavailable, and the failure that said so.
		ps.mu.Lock()
		defer ps.mu.Unlock()
		se := &StoreError{Op: storeOpNames[op], TenantID: key.tenant, ProviderID: key.provider,
			Err: fmt.Errorf("%w (%s)", errStoreDown, strings.TrimPrefix(ps.lastErr, "jwkscache: "))}
		if key != (providerKey{}) && ps.m.providers.get(key.tenant, key.provider) != nil {
			if st := ps.pairLocked(key); st.lastErr == "" {
				st.lastErr = se.Error()
			}
		}
		return se
	}
	span := ps.m.fetcher.tr.startStoreSpan(ps.m.ctx, storeOpNames[op], key)
	defer func() { span.end(err) }()
	// The call's deadline runs from now, not from when a store goroutine
	// takes it up, and ends when the caller stops waiting: a job that
	// starts late finds its context done (a lease taken for a caller that
	// gave up would hold the pair for nobody).
	ctx, cancel := context.WithTimeout(ps.ctx, ps.timeout)
	defer cancel()
	done := make(chan error, 1)
	job := func() { done <- ps.safe(func() error { return fn(ctx) }) }
	select {
	case ps.jobs <- job:
	default:
		return ps.failed(op, key, errStoreBusy)
	}
	t := time.NewTimer(ps.timeout + ps.timeout/4) // the store's own ctx expires first
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, ErrStoreNotFound) {
			return ps.failed(op, key, err)
		}
		ps.ok(key)
		return err
	case <-t.C:
		return ps.failed(op, key, context.DeadlineExceeded)
	case <-ps.m.ctx.Done():
		return ErrClosed
	}
}

// safe runs store code, turning a panic into an error: a Store's bug must
// not take the process down.
func (ps *persister) safe(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			ps.m.panics.Add(1)
			err = fmt.Errorf("jwkscache: the Store panicked: %s", capText(fmt.Sprint(r)))
		}
	}()
	return fn()
}

// failed records a failed call and returns its error.
func (ps *persister) failed(op storeOp, key providerKey, err error) *StoreError {
	return ps.fail(op, key, err, true)
}

// fail records a failed call; trip says whether it opens the breaker.
func (ps *persister) fail(op storeOp, key providerKey, err error, trip bool) *StoreError {
	se := &StoreError{Op: storeOpNames[op], TenantID: key.tenant, ProviderID: key.provider, Err: err}
	if op != numStoreOps {
		ps.opErrors[op].Add(1)
	}
	msg := se.Error()
	opened := false
	ps.mu.Lock()
	ps.lastErr = msg
	if key != (providerKey{}) && ps.m.providers.get(key.tenant, key.provider) != nil {
		ps.pairLocked(key).lastErr = msg
	}
	if trip && !errors.Is(err, errStoreBusy) && !errors.Is(err, ErrClosed) && ps.m.ctx.Err() == nil {
		until := ps.downUntil.Load()
		opened = until == 0
		// A call in flight since before the breaker opened saw the same
		// outage: it does not lengthen the backoff.
		if until == 0 || time.Now().UnixNano() >= until {
			ps.downFor = min(max(2*ps.downFor, breakerMin), breakerMax)
			ps.downUntil.Store(time.Now().Add(ps.downFor).UnixNano())
		}
	}
	ps.mu.Unlock()
	if opened {
		select {
		case ps.kick <- struct{}{}: // the writer probes the store from now on
		default:
		}
		ps.m.logf(nil, slog.LevelWarn, "jwkscache: store unavailable; serving from memory and retrying in the background",
			slog.String("op", se.Op), slog.String("error", msg))
	}
	return se
}

// Circuit breaker backoff after a failed store call.
const (
	breakerMin = time.Second
	breakerMax = 30 * time.Second
)

// ok records a call that reached the store.
func (ps *persister) ok(key providerKey) {
	closed := false
	if ps.downUntil.Load() != 0 || key != (providerKey{}) {
		ps.mu.Lock()
		if ps.downUntil.Load() != 0 {
			closed = true
			ps.downUntil.Store(0)
			ps.downFor = 0
		}
		if st := ps.pairs[key]; st != nil {
			st.lastErr = ""
		}
		ps.mu.Unlock()
	}
	if closed {
		ps.m.logf(nil, slog.LevelInfo, "jwkscache: store available again")
	}
}

func (ps *persister) pairLocked(key providerKey) *pairStoreState {
	st := ps.pairs[key]
	if st == nil {
		st = new(pairStoreState)
		ps.pairs[key] = st
	}
	return st
}

// refuse counts a stored record refused on reading, and logs why.
func (ps *persister) refuse(p *provider, op string, err error) {
	reason, _ := isRecordError(err)
	for i, r := range refusedReasons {
		if r == reason {
			ps.refused[i].Add(1)
		}
	}
	if p != nil {
		ps.mu.Lock()
		ps.pairLocked(p.key).refused++
		ps.mu.Unlock()
	}
	var attrs []slog.Attr
	if p != nil {
		attrs = append(attrs, slog.String("tenant", p.key.tenant), slog.String("provider", p.key.provider))
	}
	ps.m.logf(p, slog.LevelWarn, "jwkscache: stored "+op+" record refused",
		append(attrs, slog.String("reason", reason), slog.String("error", err.Error()))...)
}

// refusedCount returns the records refused for reason.
func (ps *persister) refusedCount(reason string) uint64 {
	for i, r := range refusedReasons {
		if r == reason {
			return ps.refused[i].Load()
		}
	}
	return 0
}

// status returns what Status shows of p's store calls.
func (ps *persister) status(key providerKey) (lastErr string, refused uint64) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if st := ps.pairs[key]; st != nil {
		return st.lastErr, st.refused
	}
	return "", 0
}

// forget drops what the persister remembers of an unregistered pair, but
// its pending writes (the deletion among them).
func (ps *persister) forget(key providerKey) {
	ps.mu.Lock()
	delete(ps.pairs, key)
	ps.mu.Unlock()
}

// --- Writes ---

// write merges w into the pair's pending writes and wakes the writer.
func (ps *persister) write(key providerKey, w pendingWrite) {
	ps.writeFor(nil, key, w)
}

// writeFor is write of p's writes: dropped once p is removed (checked
// under mu, so that it orders with Unregister's deletion, queued after
// p.removed is set).
func (ps *persister) writeFor(p *provider, key providerKey, w pendingWrite) {
	ps.mu.Lock()
	if p != nil && p.removed.Load() {
		ps.mu.Unlock()
		return
	}
	cur := ps.dirty[key]
	if cur == nil {
		cur = new(pendingWrite)
		ps.dirty[key] = cur
		ps.queue = append(ps.queue, key)
		ps.pending.Add(1)
	}
	cur.merge(&w)
	ps.mu.Unlock()
	select {
	case ps.kick <- struct{}{}:
	default:
	}
}

// saveSnapshot queues the record of p's snapshot s.
func (ps *persister) saveSnapshot(p *provider, s *snapshot) {
	rec := encodeSnapshot(p.key, s, p.registration().usesDiscovery(), ps.keys)
	ps.writeFor(p, p.key, pendingWrite{snap: rec, snapDead: s.staleUntil})
}

// Writer backoff after a failed write.
const (
	writeRetryMin = time.Second
	writeRetryMax = 30 * time.Second
)

// writer performs the pending writes, oldest first, and retries failed
// ones with backoff until the store answers. At Close it makes one last
// pass within the close timeout.
func (ps *persister) writer(ctx context.Context) {
	backoff := time.Duration(0)
	var retry *time.Timer
	for {
		var wake <-chan time.Time
		if retry != nil {
			wake = retry.C
		}
		select {
		case <-ps.kick:
			if backoff > 0 {
				continue // failing: wait for the retry timer
			}
		case <-wake:
			retry = nil
		case <-ctx.Done():
			if retry != nil {
				retry.Stop()
			}
			ps.flush(closeTimeout * 3 / 4)
			return
		}
		if ps.drain(ctx) {
			backoff = 0
			// Nothing to write, and the breaker open (a read failed):
			// probe the store once the breaker's backoff has passed, so
			// that it closes (and store_up says so) without waiting for
			// the next refresh to try.
			if until := ps.downUntil.Load(); until != 0 && retry == nil {
				if d := time.Until(time.Unix(0, until)); d > 0 {
					retry = time.NewTimer(d)
				} else {
					ps.probe(ctx)
					if ps.downUntil.Load() != 0 {
						retry = time.NewTimer(breakerMin)
					}
				}
			}
			continue
		}
		backoff = min(max(2*backoff, writeRetryMin), writeRetryMax)
		retry = time.NewTimer(backoff)
	}
}

// probe asks the store for a record no pair has (empty IDs), to learn
// whether it answers.
func (ps *persister) probe(parent context.Context) {
	if err := ps.ask(parent); err != nil {
		ps.failed(opLoad, providerKey{}, err)
		return
	}
	ps.ok(providerKey{})
}

// answers reports whether the store answers a probe (and closes the
// breaker if so), recording nothing when it does not.
func (ps *persister) answers(parent context.Context) bool {
	if ps.ask(parent) != nil {
		return false
	}
	ps.ok(providerKey{})
	return true
}

func (ps *persister) ask(parent context.Context) error {
	ctx, cancel := context.WithTimeout(parent, ps.timeout)
	defer cancel()
	err := ps.safe(func() error {
		_, err := ps.store.LoadSnapshot(ctx, "", "")
		return err
	})
	if errors.Is(err, ErrStoreNotFound) {
		return nil
	}
	return err
}

// drain writes every pending pair; false when a write failed (the pair is
// pending again, merged under anything queued since).
// A pair whose writes fail goes to the back of the line and the others go
// on: one pair the store refuses (a record over its size limit, say) must
// not hold up every other tenant's writes. The breaker opens only when no
// write of the pass succeeded (the store itself is down).
func (ps *persister) drain(ctx context.Context) bool {
	var (
		failed    []providerKey
		failedW   []*pendingWrite
		failedAt  map[providerKey]int
		succeeded bool
		lastErr   error
	)
	defer func() {
		for i, key := range failed {
			ps.requeue(key, failedW[i])
		}
	}()
	for ctx.Err() == nil {
		key, w, ok := ps.next()
		if !ok {
			break
		}
		if i, ok := failedAt[key]; ok {
			// Queued again since its write failed in this pass: the
			// newer writes go over the failed ones and wait with them
			// (requeued one by one, the older would land on top).
			failedW[i].merge(w)
			continue
		}
		if err := ps.perform(ctx, key, w, ps.timeout); err != nil {
			if failedAt == nil {
				failedAt = make(map[providerKey]int)
			}
			failedAt[key] = len(failed)
			failed, failedW, lastErr = append(failed, key), append(failedW, w), err
			continue
		}
		ps.done(key)
		succeeded = true
	}
	// No write succeeded: the store is down, or every pending pair's own
	// writes are refused (a record over the store's limit). Only the
	// first opens the breaker.
	if lastErr != nil && !succeeded && !ps.answers(ctx) {
		var se *StoreError
		if errors.As(lastErr, &se) {
			lastErr = se.Err
		}
		ps.fail(numStoreOps, providerKey{}, lastErr, true) // counted already
	}
	return len(failed) == 0
}

// flush makes one pass over the pending writes at Close, within d.
func (ps *persister) flush(d time.Duration) {
	ctx, cancel := context.WithTimeout(ps.ctx, d)
	defer cancel()
	var failed map[providerKey]bool
	for ctx.Err() == nil {
		key, w, ok := ps.next()
		if !ok {
			return
		}
		// A pair's failure must not drop the others' writes; a pair met
		// again after its write failed is not written out of order.
		if !failed[key] && ps.perform(ctx, key, w, d) != nil {
			if failed == nil {
				failed = make(map[providerKey]bool)
			}
			failed[key] = true
		}
		ps.done(key)
	}
}

func (ps *persister) next() (providerKey, *pendingWrite, bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for len(ps.queue) > 0 {
		key := ps.queue[0]
		ps.queue = ps.queue[1:]
		if w := ps.dirty[key]; w != nil {
			delete(ps.dirty, key)
			ps.pending.Add(-1)
			ps.held[key] = ps.held[key] || w.del
			return key, w, true
		}
	}
	ps.queue = nil // let the backing array go
	return providerKey{}, nil, false
}

// requeue puts back the writes of a failed pass, under anything queued
// for the pair since (which is newer).
func (ps *persister) requeue(key providerKey, w *pendingWrite) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if cur := ps.dirty[key]; cur != nil {
		w.merge(cur)
	} else {
		ps.pending.Add(1)
	}
	ps.dirty[key] = w
	ps.queue = append(ps.queue, key)
	delete(ps.held, key)
}

// deleting reports whether a deletion of the pair is not written yet, or
// was written after the Restore that began at delSeq since. Restore calls
// it under the registry's lock, so that it orders with Unregister.
func (ps *persister) deleting(key providerKey, since uint64) bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	w := ps.dirty[key]
	return ps.held[key] || w != nil && w.del || ps.deletedAt[key] > since
}

// beginRestore starts recording deletions for a Restore, and returns the
// deletions written so far; endRestore ends it.
func (ps *persister) beginRestore() uint64 {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.restoring == 0 {
		ps.deletedAt = make(map[providerKey]uint64)
	}
	ps.restoring++
	return ps.delSeq
}

func (ps *persister) endRestore() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.restoring--; ps.restoring == 0 {
		ps.deletedAt = nil
	}
}

// done records that the writer no longer holds the pair's writes.
func (ps *persister) done(key providerKey) {
	ps.mu.Lock()
	delete(ps.held, key)
	ps.mu.Unlock()
}

// perform runs one pair's writes on the writer goroutine (a store
// goroutine), each bounded by d. What succeeded is cleared from w.
func (ps *persister) perform(parent context.Context, key providerKey, w *pendingWrite, d time.Duration) error {
	step := func(op storeOp, fn func(ctx context.Context) error) error {
		ctx, cancel := context.WithTimeout(parent, d)
		defer cancel()
		if err := ps.safe(func() error { return fn(ctx) }); err != nil {
			return ps.fail(op, key, err, false) // drain judges the store
		}
		ps.ok(key)
		return nil
	}
	if w.del {
		if err := step(opDelete, func(ctx context.Context) error { return ps.store.Delete(ctx, key.tenant, key.provider) }); err != nil {
			return err
		}
		w.del = false
		ps.mu.Lock()
		ps.delSeq++
		if ps.restoring > 0 {
			ps.deletedAt[key] = ps.delSeq
		}
		ps.mu.Unlock()
	}
	if w.reg != nil {
		if err := step(opSave, func(ctx context.Context) error {
			return ps.store.SaveRegistration(ctx, key.tenant, key.provider, w.reg)
		}); err != nil {
			return err
		}
		w.reg = nil
	}
	if w.snap != nil {
		if time.Now().Before(w.snapDead) {
			if err := step(opSave, func(ctx context.Context) error {
				return ps.store.SaveSnapshot(ctx, key.tenant, key.provider, w.snap, w.snapDead)
			}); err != nil {
				return err
			}
		}
		w.snap = nil
	}
	return nil
}

// --- Reads ---

// load reads and checks p's stored snapshot under reg. It returns nil when
// there is none, the store fails (recorded) or the record is refused
// (counted and logged).
func (ps *persister) load(p *provider, reg *Registration, now time.Time) *restoredSnapshot {
	var raw []byte
	err := ps.call(opLoad, p.key, func(ctx context.Context) error {
		b, err := ps.store.LoadSnapshot(ctx, p.key.tenant, p.key.provider)
		raw = b
		return err
	})
	if err != nil {
		return nil
	}
	return ps.check(p, reg, raw, now)
}

// loadHere is load for code already on a store goroutine.
func (ps *persister) loadHere(p *provider, reg *Registration, now time.Time) *restoredSnapshot {
	ctx, cancel := context.WithTimeout(ps.ctx, ps.timeout)
	defer cancel()
	var raw []byte
	err := ps.safe(func() (err error) {
		raw, err = ps.store.LoadSnapshot(ctx, p.key.tenant, p.key.provider)
		return err
	})
	if err != nil {
		if !errors.Is(err, ErrStoreNotFound) {
			ps.failed(opLoad, p.key, err)
		}
		return nil
	}
	ps.ok(p.key)
	return ps.check(p, reg, raw, now)
}

// check decodes and checks a stored snapshot record of p.
func (ps *persister) check(p *provider, reg *Registration, raw []byte, now time.Time) *restoredSnapshot {
	r, err := decodeSnapshot(p.key, reg, ps.m.fetcher.policyFor(reg), raw, ps.keys)
	if err == nil {
		err = r.checkTimes(reg, now)
	}
	if err != nil {
		ps.refuse(p, "snapshot", err)
		return nil
	}
	return r
}

// checkTimes refuses a restored snapshot that is past its stale window
// under reg, or whose lifetime reg does not allow (a record from the
// future, or with a TTL over MaxTTL). The stale window is reg's own, not
// the record's: StaleWhileError may have changed since it was saved.
func (r *restoredSnapshot) checkTimes(reg *Registration, now time.Time) error {
	const skew = time.Minute
	fetched, expires := r.fetchedAt(), r.expiresAt()
	switch {
	case fetched.After(now.Add(skew)):
		return &recordError{refusedExpired, "fetched in the future"}
	case expires.Sub(fetched) > reg.MaxTTL+time.Second:
		return &recordError{refusedExpired, fmt.Sprintf("a TTL of %v, over MaxTTL", expires.Sub(fetched))}
	case !now.Before(expires.Add(reg.staleWindow())):
		return &recordError{refusedExpired, "past its stale window"}
	}
	return nil
}

// --- Fleet ---

// leaseTTL is how long a fleet lease lasts: the longest a refresh may take
// (Retry.Deadline, discovery included) and a margin for the commit.
func leaseTTL(reg *Registration) time.Duration { return reg.Retry.Deadline + 2*time.Second }

// tryLease takes p's fleet lease. It returns nil, nil when another instance
// holds it, and an error when the store could not be asked.
// Either way it returns the stored snapshot, checked, when there is one.
func (ps *persister) tryLease(p *provider, reg *Registration) (Lease, *restoredSnapshot, error) {
	var (
		l   Lease
		raw []byte
	)
	err := ps.call(opLease, p.key, func(ctx context.Context) error {
		var err error
		l, raw, err = ps.fleet.TryLease(ctx, p.key.tenant, p.key.provider, leaseTTL(reg))
		return err
	})
	switch {
	case err != nil:
		ps.leases[leaseFailed].Add(1)
		return nil, nil, err
	case l == nil:
		ps.leases[leaseHeld].Add(1)
	default:
		ps.leases[leaseAcquired].Add(1)
	}
	var r *restoredSnapshot
	if raw != nil {
		r = ps.check(p, reg, raw, time.Now())
	}
	return l, r, nil
}

// commit saves s under the lease, publishes its hash and releases the
// lease, on a store goroutine, and waits for it (bounded as every call):
// the refresh ends once the fleet can see its result, so that this
// instance's next refresh of the pair never finds its own lease still
// held. A failed commit leaves the snapshot to the writer; the lease then
// lapses by itself.
func (ps *persister) commit(p *provider, l Lease, s *snapshot) {
	rec := encodeSnapshot(p.key, s, p.registration().usesDiscovery(), ps.keys)
	note := bytes.Clone(s.doc.hash[:])
	err := ps.call(opCommit, p.key, func(ctx context.Context) error {
		return l.Commit(ctx, rec, s.staleUntil, note)
	})
	if err != nil {
		ps.writeFor(p, p.key, pendingWrite{snap: rec, snapDead: s.staleUntil})
		return
	}
	ps.committed.Add(1)
	ps.afterCommit(p, rec, s.staleUntil)
}

// afterCommit orders a snapshot committed under the lease (on a store
// goroutine) with the writer's writes of the pair. If the pair was
// unregistered meanwhile, the commit may have landed after its deletion:
// delete again (unless registered anew). If the writer holds an older
// snapshot of the pair (queued, failed or in flight), the committed one
// is written again after it.
func (ps *persister) afterCommit(p *provider, rec []byte, dead time.Time) {
	m := ps.m
	if p.removed.Load() {
		if m.closed.Load() {
			return
		}
		m.providers.mu.Lock()
		if m.providers.get(p.key.tenant, p.key.provider) == nil {
			ps.write(p.key, pendingWrite{del: true})
		}
		m.providers.mu.Unlock()
		return
	}
	ps.mu.Lock()
	cur := ps.dirty[p.key]
	_, held := ps.held[p.key]
	again := held || cur != nil && (cur.snap != nil || cur.del)
	ps.mu.Unlock()
	if again {
		ps.writeFor(p, p.key, pendingWrite{snap: rec, snapDead: dead})
	}
}

// release gives a lease up, waiting for it (bounded as every call), so
// that this instance's next refresh of the pair never finds its own lease
// still held. A lease not released lapses by itself.
func (ps *persister) release(l Lease) {
	_ = ps.call(opLease, providerKey{}, func(ctx context.Context) error { return l.Release(ctx) })
}

// waitNote waits until another instance commits p's snapshot, at most d,
// and reports whether a commit's note woke it.
func (ps *persister) waitNote(key providerKey, d time.Duration) bool {
	ch := make(chan struct{})
	ps.mu.Lock()
	ps.waiters[key] = append(ps.waiters[key], ch)
	ps.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true // removed by the notifier
	case <-t.C:
	case <-ps.m.ctx.Done():
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ws := ps.waiters[key]
	for i, w := range ws {
		if w == ch {
			ws = append(ws[:i:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(ps.waiters, key)
	} else {
		ps.waiters[key] = ws
	}
	return false
}

// Subscribe retry backoff.
const (
	subscribeRetryMin = time.Second
	subscribeRetryMax = 30 * time.Second
)

// subscribe establishes the fleet subscription, retrying until it holds
// (the FleetStore keeps it up from then on).
func (ps *persister) subscribe(ctx context.Context) {
	backoff := subscribeRetryMin
	for {
		err := ps.safe(func() error { return ps.fleet.Subscribe(ctx, ps.onNote) })
		if err == nil {
			ps.ok(providerKey{})
			return
		}
		if ctx.Err() != nil {
			return
		}
		ps.failed(opSubscribe, providerKey{}, err)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
		backoff = min(2*backoff, subscribeRetryMax)
	}
}

// onNote is called by the FleetStore when an instance committed a pair's
// snapshot. It wakes the refreshes waiting for that commit; otherwise, if
// the keys changed, it adopts them on a store goroutine. It never blocks.
func (ps *persister) onNote(tenantID, providerID string, note []byte) {
	key := providerKey{tenantID, providerID}
	ps.mu.Lock()
	ws := ps.waiters[key]
	delete(ps.waiters, key)
	ps.mu.Unlock()
	for _, ch := range ws {
		close(ch)
	}
	if len(ws) > 0 {
		return // the waiting refresh adopts it
	}
	p := ps.m.providers.get(tenantID, providerID)
	if p == nil {
		return
	}
	if s := p.snap.Load(); s != nil && bytes.Equal(s.doc.hash[:], note) {
		return // the keys we have (a renewal: our own schedule takes it)
	}
	job := func() {
		if !ps.m.enter() {
			return
		}
		defer ps.m.leave()
		if p.removed.Load() {
			return
		}
		reg := p.registration()
		if r := ps.loadHere(p, reg, time.Now()); r != nil {
			p.adoptNoted(r, reg)
		}
	}
	select {
	case ps.jobs <- job:
	default: // the next refresh checks the store anyway
	}
}

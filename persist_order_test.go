package jwkscache

// Ordering, breaker and panic cases of the persister (persist.go) and of how the engine
// queues its writes. Each test reproduces one bug an adversarial review
// found (each failed before persist.go was fixed) deterministically, inside a synctest bubble, against the in-memory
// FleetStore of memstore_test.go wrapped in hookStore (below), whose hook
// can hold, fail or panic one operation of one pair.

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

// hookStore is a memStore whose every call first runs hook (when set):
// the hook may block (on a gate), return an error (the call fails with
// it, the backend untouched) or panic.
type hookStore struct {
	memStore
	mu   *sync.Mutex
	hook *func(ctx context.Context, op, tenant, provider string) error
}

func newHookStore(b *memBackend) hookStore {
	var f func(ctx context.Context, op, tenant, provider string) error
	return hookStore{memStore: memStore{b}, mu: new(sync.Mutex), hook: &f}
}

func (s hookStore) setHook(f func(ctx context.Context, op, tenant, provider string) error) {
	s.mu.Lock()
	*s.hook = f
	s.mu.Unlock()
}

func (s hookStore) run(ctx context.Context, op, tenant, provider string) error {
	s.mu.Lock()
	f := *s.hook
	s.mu.Unlock()
	if f == nil {
		return nil
	}
	return f(ctx, op, tenant, provider)
}

func (s hookStore) LoadSnapshot(ctx context.Context, tenant, provider string) ([]byte, error) {
	if err := s.run(ctx, "load", tenant, provider); err != nil {
		return nil, err
	}
	return s.memStore.LoadSnapshot(ctx, tenant, provider)
}

func (s hookStore) SaveSnapshot(ctx context.Context, tenant, provider string, rec []byte, dead time.Time) error {
	if err := s.run(ctx, "save", tenant, provider); err != nil {
		return err
	}
	return s.memStore.SaveSnapshot(ctx, tenant, provider, rec, dead)
}

func (s hookStore) SaveRegistration(ctx context.Context, tenant, provider string, rec []byte) error {
	if err := s.run(ctx, "saveRegistration", tenant, provider); err != nil {
		return err
	}
	return s.memStore.SaveRegistration(ctx, tenant, provider, rec)
}

func (s hookStore) Delete(ctx context.Context, tenant, provider string) error {
	if err := s.run(ctx, "delete", tenant, provider); err != nil {
		return err
	}
	return s.memStore.Delete(ctx, tenant, provider)
}

func (s hookStore) TryLease(ctx context.Context, tenant, provider string, ttl time.Duration) (Lease, []byte, error) {
	if err := s.run(ctx, "lease", tenant, provider); err != nil {
		return nil, nil, err
	}
	l, rec, err := s.memStore.TryLease(ctx, tenant, provider, ttl)
	if l != nil {
		l = hookLease{Lease: l, s: s, key: providerKey{tenant, provider}}
	}
	return l, rec, err
}

type hookLease struct {
	Lease
	s   hookStore
	key providerKey
}

func (l hookLease) Commit(ctx context.Context, rec []byte, dead time.Time, note []byte) error {
	if err := l.s.run(ctx, "commit", l.key.tenant, l.key.provider); err != nil {
		return err
	}
	return l.Lease.Commit(ctx, rec, dead, note)
}

// storedKIDs decodes the pair's stored snapshot record and reports which
// of kids it holds; nil when there is no record.
func storedKIDs(t *testing.T, b *memBackend, reg Registration, kids ...string) map[string]bool {
	t.Helper()
	rec := b.snapshot(reg.TenantID, reg.ProviderID)
	if rec == nil {
		return nil
	}
	r := reg.WithDefaults()
	s, err := decodeSnapshot(r.key(), &r, urlPolicy{}, rec, nil)
	if err != nil {
		t.Fatalf("stored snapshot does not decode: %v", err)
	}
	out := make(map[string]bool)
	for _, k := range kids {
		out[k] = s.keys.has(k)
	}
	return out
}

// poLoaded returns a Manager on a fleet hookStore whose provider
// (mtTenant, mtProvider) has loaded k1, with its snapshot committed.
func poLoaded(t *testing.T) (*testidp.IdP, *memBackend, hookStore, *Manager) {
	t.Helper()
	idp := testidp.New()
	i6Serve(idp, mtPath, 3600, testidp.NewKey("ES256", "k1"))
	b := newMemBackend()
	s := newHookStore(b)
	m := stManager(t, idp, s, Options{})
	mtLoad(t, m, mtTenant, mtProvider, mtURL)
	synctest.Wait()
	return idp, b, s, m
}

// poUnregisterDuringCommit has the IdP rotate to k2, starts a Refresh
// whose commit under the lease is held at a gate, and unregisters the
// provider meanwhile (its records are deleted). release lets the commit
// go on, failing with commitErr; done yields the Refresh's result.
func poUnregisterDuringCommit(t *testing.T, idp *testidp.IdP, b *memBackend, s hookStore, m *Manager, k2 *testidp.Key, commitErr error) (release func(), done <-chan error) {
	t.Helper()
	gate, release := i6Release(t)
	s.setHook(func(ctx context.Context, op, tenant, provider string) error {
		if op == "commit" {
			<-gate
			return commitErr
		}
		return nil
	})
	i6Serve(idp, mtPath, 3600, k2)
	ch := make(chan error, 1)
	go func() { ch <- m.Refresh(context.Background(), mtTenant, mtProvider) }()
	synctest.Wait() // applied k2, took the lease, in Commit at the gate
	if err := m.Unregister(t.Context(), mtTenant, mtProvider); err != nil {
		t.Fatal(err)
	}
	synctest.Wait()
	if b.snapshot(mtTenant, mtProvider) != nil {
		t.Fatal("setup: Unregister did not delete the snapshot")
	}
	return release, ch
}

// Regression (snapshot after Unregister). Before the fix: A refresh that applied its
// result just before Unregister queues its snapshot just after Unregister
// queued the deletion: persistOutcome -> saveSnapshot does not look at
// p.removed, and the snapshot lands in the store after the deletion. The
// test holds the refresh in the TryLease of persistOutcome's fleet path
// (a rotation found by a manual Refresh) while Unregister runs; the plain
// (non-fleet) path has the same window between apply and saveSnapshot,
// only not one a test can hold open.
func TestStore_SnapshotQueuedAfterUnregisterIsWritten(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, b, s, m := poLoaded(t)
		k2 := testidp.NewKey("ES256", "k2")
		if b.snapshot(mtTenant, mtProvider) == nil {
			t.Fatal("setup: no snapshot committed by the first load")
		}
		gate, release := i6Release(t)
		s.setHook(func(ctx context.Context, op, tenant, provider string) error {
			if op == "lease" {
				<-gate // ignores ctx: the engine gives up on the call after StoreTimeout anyway
			}
			return nil
		})
		// Another instance holds the lease: persistOutcome falls back to
		// saveSnapshot once TryLease answers.
		if l, _, err := (memStore{b}).TryLease(t.Context(), mtTenant, mtProvider, time.Hour); err != nil || l == nil {
			t.Fatal("setup: could not take the lease")
		}
		i6Serve(idp, mtPath, 3600, k2)
		done := make(chan error, 1)
		go func() { done <- m.Refresh(context.Background(), mtTenant, mtProvider) }()
		synctest.Wait() // applied k2; persistOutcome is in TryLease, at the gate
		if err := m.Unregister(t.Context(), mtTenant, mtProvider); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the writer deleted the pair's records
		if b.snapshot(mtTenant, mtProvider) != nil {
			t.Fatal("setup: Unregister did not delete the snapshot")
		}
		release()
		<-done
		synctest.Wait()
		if b.snapshot(mtTenant, mtProvider) != nil {
			t.Fatal("the store holds a snapshot of a pair unregistered before it was written (queued after the deletion)")
		}
	})
}

// Same bug, second path: a fleet commit that fails after Unregister
// hands its snapshot to the writer (commit -> ps.write), after the
// deletion.
func TestStore_FailedCommitAfterUnregisterWritesSnapshot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, b, s, m := poLoaded(t)
		k2 := testidp.NewKey("ES256", "k2")
		release, done := poUnregisterDuringCommit(t, idp, b, s, m, k2, errMemDown)
		release() // the commit fails: its snapshot goes to the writer
		<-done
		mtWaitFor(t, time.Minute, time.Second, "the writer to settle", func() bool { return m.persist.pending.Load() == 0 })
		if b.snapshot(mtTenant, mtProvider) != nil {
			t.Fatal("the store holds a snapshot of an unregistered pair: a failed commit's snapshot was written after the deletion")
		}
	})
}

// Same bug, third path (a store-level race the persister cannot order by
// queueing alone): a fleet commit in flight when Unregister's deletion is
// written lands after it.
func TestStore_CommitInFlightOutlivesUnregister(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, b, s, m := poLoaded(t)
		k2 := testidp.NewKey("ES256", "k2")
		release, done := poUnregisterDuringCommit(t, idp, b, s, m, k2, nil)
		release() // the commit succeeds, after the deletion
		<-done
		mtWaitFor(t, time.Minute, time.Second, "the writer to settle", func() bool { return m.persist.pending.Load() == 0 })
		if b.snapshot(mtTenant, mtProvider) != nil {
			t.Fatal("the store holds a snapshot of an unregistered pair: a commit in flight landed after the deletion and nothing deleted it again")
		}
	})
}

// Regression (older snapshot over newer, queued). Before the fix: A snapshot queued for the
// writer (a renewal) waits behind another pair's slow write; meanwhile a
// rotation is committed under the fleet lease, on a store goroutine. The
// writer then writes the older snapshot over the committed one: the store
// ends with the keys before the rotation.
func TestStore_QueuedSnapshotOverwritesNewerCommit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, b, s, m := poLoaded(t)
		k2 := testidp.NewKey("ES256", "k2")
		gate, release := i6Release(t)
		s.setHook(func(ctx context.Context, op, tenant, provider string) error {
			if op == "saveRegistration" && provider == "slow" {
				<-gate // the writer is busy with another pair
			}
			return nil
		})
		mtRegister(t, m, mtTenant, "slow", mtHost+"/slow")
		synctest.Wait() // the writer holds at the gate
		// A renewal (same keys): its snapshot is queued behind "slow".
		if err := m.Refresh(t.Context(), mtTenant, mtProvider); err != nil {
			t.Fatal(err)
		}
		// A rotation: committed under the lease at once.
		i6Serve(idp, mtPath, 3600, k2)
		if err := m.Refresh(t.Context(), mtTenant, mtProvider); err != nil {
			t.Fatal(err)
		}
		reg := Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: mtURL}
		if got := storedKIDs(t, b, reg, "k2"); !got["k2"] {
			t.Fatalf("setup: the rotation was not committed (stored %v)", got)
		}
		release()
		synctest.Wait()
		if got := storedKIDs(t, b, reg, "k1", "k2"); got == nil || !got["k2"] {
			t.Fatalf("stored snapshot after the writer caught up holds %v; want the committed rotation (k2), not the older renewal", got)
		}
	})
}

// Same bug, in-flight variant: the writer is inside SaveSnapshot of the
// older snapshot when the rotation is committed; its write lands last.
func TestStore_InFlightSnapshotOverwritesNewerCommit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, b, s, m := poLoaded(t)
		k2 := testidp.NewKey("ES256", "k2")
		gate, release := i6Release(t)
		s.setHook(func(ctx context.Context, op, tenant, provider string) error {
			if op == "save" {
				<-gate
			}
			return nil
		})
		if err := m.Refresh(t.Context(), mtTenant, mtProvider); err != nil { // renewal, queued
			t.Fatal(err)
		}
		synctest.Wait() // the writer is in SaveSnapshot, at the gate
		i6Serve(idp, mtPath, 3600, k2)
		if err := m.Refresh(t.Context(), mtTenant, mtProvider); err != nil { // rotation, committed
			t.Fatal(err)
		}
		release()
		synctest.Wait()
		reg := Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: mtURL}
		if got := storedKIDs(t, b, reg, "k1", "k2"); got == nil || !got["k2"] {
			t.Fatalf("stored snapshot holds %v; want the committed rotation (k2)", got)
		}
	})
}

// Regression (breaker held open by one pair). Before the fix: A pair whose write the store
// refuses for good (a record over the store's size limit, the case drain's
// comment names) is the only pending write after the first pass: every
// pass then has no success, and drain trips the breaker again, so the
// breaker stays open while the store answers everything else. Reads and
// leases for every tenant are refused (restores, fleet coordination) and
// store_up stays 0, for as long as the pair stays pending.
func TestStore_OnePoisonPairHoldsBreakerOpen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 3600, testidp.NewKey("ES256", "k1"))
		b := newMemBackend()
		s := newHookStore(b)
		errTooBig := errors.New("record exceeds MaxRecordSize")
		s.setHook(func(ctx context.Context, op, tenant, provider string) error {
			if op == "saveRegistration" && provider == "poison" {
				return errTooBig
			}
			return nil
		})
		m := stManager(t, idp, s.plainHook(), Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		synctest.Wait()
		mtRegister(t, m, mtTenant, "poison", mtURL)
		i6Step(5 * time.Minute)
		open := 0
		for range 120 {
			if until := m.persist.downUntil.Load(); until != 0 && time.Now().UnixNano() < until {
				open++
			}
			i6Step(time.Second)
		}
		if open > 10 {
			t.Fatalf("the breaker was open %d of 120 seconds while the store answered every call but one pair's write", open)
		}
	})
}

// plainHook hides the fleet methods of s.
func (s hookStore) plainHook() Store { return plainStore{s} }

// Regression (Store panic on the writer). Before the fix: probe calls the Store without
// ps.safe: a Store whose LoadSnapshot panics takes the process down from
// the writer goroutine, where every other Store call is recovered and
// counted. (loadHere, on a store goroutine for a fleet note, and the
// Subscribe call have the same gap.) Before the fix this test did not
// fail: it crashed the test binary.
func TestStore_ProbePanicIsRecovered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 3600, testidp.NewKey("ES256", "k1"))
		b := newMemBackend()
		s := newHookStore(b)
		m := stManager(t, idp, s.plainHook(), Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		synctest.Wait()
		b.setFail(errMemDown)
		if _, err := m.Restore(t.Context()); err == nil {
			t.Fatal("setup: Restore with the store down succeeded")
		}
		b.setFail(nil)
		s.setHook(func(ctx context.Context, op, tenant, provider string) error {
			if op == "load" && tenant == "" {
				panic("store bug")
			}
			return nil
		})
		i6Step(time.Minute) // the writer probes
		if m.panics.Load() == 0 {
			t.Fatal("the Store's panic in the probe was not recovered and counted")
		}
	})
}

// Same bug, fleet note path: loadHere runs on a store goroutine for a
// note from another instance, without ps.safe.
func TestStore_NoteLoadPanicIsRecovered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := fleetIdP(1, 3600)
		b := newMemBackend()
		s := newHookStore(b)
		m1 := stManager(t, idp, memStore{b}, Options{})
		m2 := stManager(t, idp, s, Options{})
		mtLoad(t, m1, "t", "p0", mtHost+"/p0")
		mtLoad(t, m2, "t", "p0", mtHost+"/p0")
		synctest.Wait()
		s.setHook(func(ctx context.Context, op, tenant, provider string) error {
			if op == "load" {
				panic("store bug")
			}
			return nil
		})
		i6Serve(idp, "/p0", 3600, testidp.NewKey("ES256", "k-new"))
		if err := m1.Refresh(t.Context(), "t", "p0"); err != nil { // commits; m2 gets the note
			t.Fatal(err)
		}
		synctest.Wait()
		if m2.panics.Load() == 0 {
			t.Fatal("the Store's panic while adopting a note was not recovered and counted")
		}
	})
}

// Regression (Close flush gives up at the first failing pair). Before the fix: flush stops
// at the first write that fails, where drain goes on with the other pairs:
// one pair the store refuses for good, first in the queue at Close, drops
// every other pending write, an Unregister's deletion among them, so the
// unregistered provider comes back at the next Restore.
func TestStore_CloseFlushSkipsPoisonPair(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 3600, testidp.NewKey("ES256", "k1"))
		b := newMemBackend()
		s := newHookStore(b)
		s.setHook(func(ctx context.Context, op, tenant, provider string) error {
			if op == "saveRegistration" && provider == "poison" {
				return errors.New("record exceeds MaxRecordSize")
			}
			return nil
		})
		m, err := New(Options{HTTPClient: idp.Client(), Store: s.plainHook()})
		if err != nil {
			t.Fatal(err)
		}
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		synctest.Wait()
		mtRegister(t, m, mtTenant, "poison", mtURL)
		synctest.Wait() // the poison pair failed once: the writer backs off 1s
		if err := m.Unregister(t.Context(), mtTenant, mtProvider); err != nil {
			t.Fatal(err)
		}
		i6Close(t, m) // before the retry: the deletion is left to the flush
		m2 := stManager(t, idp, memStore{b}.plain(), Options{})
		if _, err := m2.Restore(t.Context()); err != nil {
			t.Fatal(err)
		}
		if _, err := m2.Status(mtTenant, mtProvider); err == nil {
			t.Fatal("a provider unregistered before Close came back with Restore: the close flush dropped its deletion after another pair's write failed")
		}
	})
}

// Regression (low: the breaker's backoff counts concurrent failures). Before the fix: Each
// failed call doubles downFor, so calls in flight together when the store
// goes away (one outage, seen once per call) open the breaker for 2^n
// seconds at once instead of breakerMin.
func TestStore_ConcurrentFailuresDoubleBackoffOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 3600, testidp.NewKey("ES256", "k1"))
		b := newMemBackend()
		hang, release := i6Release(t)
		b.setHang(hang)
		m := stManager(t, idp, memStore{b}.plain(), Options{})
		for i := range 5 {
			mtRegister(t, m, mtTenant, "p"+itoa(i), mtURL)
		}
		synctest.Wait()                 // first loads in LoadSnapshot at once
		i6Step(1500 * time.Millisecond) // each gave up on its call (StoreTimeout and a quarter)
		m.persist.mu.Lock()
		d := m.persist.downFor
		m.persist.mu.Unlock()
		release()
		if d > 2*breakerMin {
			t.Fatalf("one outage seen by 5 concurrent calls opened the breaker for %v", d)
		}
	})
}

// Regression (Restore resurrects a pair whose deletion is pending). Before the fix: Restore
// registers a stored registration whose pair is not registered; it does
// not look at the writes pending for it. A pair unregistered while its
// deletion cannot be written yet (the writer backing off after a failed
// Delete) comes back from its old record; then the deletion lands, and the
// Manager serves a provider that is neither wanted nor stored. The daemon
// (cmd/jwks-cache) runs Restore in a retry loop while its control plane
// takes Register and Unregister, so this is reachable there.
func TestStore_RestoreResurrectsPendingDelete(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 3600, testidp.NewKey("ES256", "k1"))
		b := newMemBackend()
		s := newHookStore(b)
		m := stManager(t, idp, s.plainHook(), Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		synctest.Wait()
		var failDelete sync.Mutex
		deleting := true
		s.setHook(func(ctx context.Context, op, tenant, provider string) error {
			failDelete.Lock()
			defer failDelete.Unlock()
			if op == "delete" && deleting {
				return errMemDown
			}
			return nil
		})
		if err := m.Unregister(t.Context(), mtTenant, mtProvider); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the Delete failed: the writer backs off
		failDelete.Lock()
		deleting = false
		failDelete.Unlock()
		if _, err := m.Restore(t.Context()); err != nil {
			t.Fatal(err)
		}
		mtWaitFor(t, time.Minute, time.Second, "the deletion to be written", func() bool { return m.persist.pending.Load() == 0 })
		_, err := m.Status(mtTenant, mtProvider)
		if err == nil {
			b.mu.Lock()
			stored := b.regs[providerKey{mtTenant, mtProvider}] != nil
			b.mu.Unlock()
			t.Fatalf("Restore brought back a provider unregistered before it (its deletion pending); registration in the store now: %v", stored)
		}
	})
}

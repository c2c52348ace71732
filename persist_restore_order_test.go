package jwkscache

// Restore and re-registration against deletions the writer has pending or
// has just written (a second review of the persister; both failed before
// the fix).

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

// r2RegGate is a plain hookStore whose LoadRegistrations reads the records
// and then waits at gate before returning them (a Restore that read the
// store just before the writer deleted a pair).
type r2RegGate struct {
	hookStore
	read chan struct{}
	gate chan struct{}
}

func (s r2RegGate) LoadRegistrations(ctx context.Context) ([][]byte, error) {
	recs, err := s.hookStore.LoadRegistrations(ctx)
	close(s.read)
	<-s.gate
	return recs, err
}

// `deleting` only covers a deletion still pending when
// register runs, not one written between Restore's LoadRegistrations and
// its register: Restore brings back a pair unregistered before it, from a
// record the store no longer holds.
func TestStore_RestoreResurrectsDeletionWrittenDuringRestore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 3600, testidp.NewKey("ES256", "k1"))
		b := newMemBackend()
		hs := newHookStore(b)
		delGate, releaseDel := i6Release(t)
		hs.setHook(func(ctx context.Context, op, tenant, provider string) error {
			if op == "delete" {
				<-delGate
			}
			return nil
		})
		regGate, releaseReg := i6Release(t)
		s := r2RegGate{hookStore: hs, read: make(chan struct{}), gate: regGate}
		m := stManager(t, idp, plainStore{s}, Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		synctest.Wait()
		if err := m.Unregister(t.Context(), mtTenant, mtProvider); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the writer is in Delete, at its gate
		type res struct {
			n   int
			err error
		}
		done := make(chan res, 1)
		go func() {
			n, err := m.Restore(context.Background())
			done <- res{n, err}
		}()
		<-s.read // Restore read the (not yet deleted) registration
		releaseDel()
		synctest.Wait() // the deletion is written; the writer is done with the pair
		releaseReg()
		r := <-done
		synctest.Wait()
		if _, err := m.Status(mtTenant, mtProvider); err == nil {
			t.Fatalf("Restore (n=%d, err=%v) brought back a provider unregistered before it: its deletion was written between LoadRegistrations and register", r.n, r.err)
		}
	})
}

// afterCommit re-queues the committed snapshot only when the
// writer holds a snapshot of the pair, not when it holds an older
// deletion: a pair unregistered and registered again while the deletion
// cannot be written commits its first snapshot under the lease, and the
// deletion, written later, deletes it.
func TestStore_PendingDeletionDeletesLaterCommit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, b, s, m := poLoaded(t)
		failDel := true
		var mu = make(chan struct{}, 1)
		mu <- struct{}{}
		s.setHook(func(ctx context.Context, op, tenant, provider string) error {
			<-mu
			defer func() { mu <- struct{}{} }()
			if op == "delete" && failDel {
				return errMemDown
			}
			return nil
		})
		if err := m.Unregister(t.Context(), mtTenant, mtProvider); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the Delete failed: the writer backs off (1s)
		<-mu
		failDel = false
		mu <- struct{}{}
		// Registered again at once, from another URL (the old record is
		// not adopted): its first load takes the lease, fetches and
		// commits (the store answers leases and commits).
		i6Serve(idp, "/other", 3600, testidp.NewKey("ES256", "k2"))
		mtLoad(t, m, mtTenant, mtProvider, mtHost+"/other")
		synctest.Wait()
		reg := Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: mtHost + "/other"}
		if got := storedKIDs(t, b, reg, "k2"); !got["k2"] {
			t.Fatalf("setup: the new registration's first load committed no snapshot (%v)", got)
		}
		mtWaitFor(t, time.Minute, time.Second, "the writer to settle", func() bool { return m.persist.pending.Load() == 0 })
		if b.snapshot(mtTenant, mtProvider) == nil {
			t.Fatal("the snapshot the new registration committed was deleted by the older registration's pending deletion")
		}
	})
}

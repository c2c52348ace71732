// Package storetest checks that a jwkscache.Store (and a
// jwkscache.FleetStore) keeps the contract documented on those interfaces.
// Store implementations call Run (and RunFleet) from their tests.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jwkscache/jwkscache"
)

// Run checks the Store contract against stores made by open, one per
// subtest. open must return an empty store and arrange its cleanup.
func Run(t *testing.T, open func(t *testing.T) jwkscache.Store) {
	ctx := context.Background()
	future := func() time.Time { return time.Now().Add(time.Hour) }

	t.Run("NotFound", func(t *testing.T) {
		s := open(t)
		if _, err := s.LoadSnapshot(ctx, "t", "p"); !errors.Is(err, jwkscache.ErrStoreNotFound) {
			t.Fatalf("LoadSnapshot of a missing pair: err = %v, want ErrStoreNotFound", err)
		}
		if err := s.Delete(ctx, "t", "p"); err != nil {
			t.Fatalf("Delete of a missing pair: %v", err)
		}
		regs, err := s.LoadRegistrations(ctx)
		if err != nil || len(regs) != 0 {
			t.Fatalf("LoadRegistrations of an empty store = %d records, %v", len(regs), err)
		}
	})

	t.Run("RoundTripAndReplace", func(t *testing.T) {
		s := open(t)
		rec := []byte("\x00binary\xffrecord{}")
		if err := s.SaveSnapshot(ctx, "t", "p", rec, future()); err != nil {
			t.Fatal(err)
		}
		rec[0] = 'X' // the store must have copied it
		got, err := s.LoadSnapshot(ctx, "t", "p")
		if err != nil || !bytes.Equal(got, []byte("\x00binary\xffrecord{}")) {
			t.Fatalf("LoadSnapshot = %q, %v", got, err)
		}
		if err := s.SaveSnapshot(ctx, "t", "p", []byte("second"), future()); err != nil {
			t.Fatal(err)
		}
		if got, err := s.LoadSnapshot(ctx, "t", "p"); err != nil || string(got) != "second" {
			t.Fatalf("after replacing: LoadSnapshot = %q, %v", got, err)
		}
		if err := s.SaveRegistration(ctx, "t", "p", []byte("reg1")); err != nil {
			t.Fatal(err)
		}
		if err := s.SaveRegistration(ctx, "t", "p", []byte("reg2")); err != nil {
			t.Fatal(err)
		}
		regs, err := s.LoadRegistrations(ctx)
		if err != nil || len(regs) != 1 || string(regs[0]) != "reg2" {
			t.Fatalf("LoadRegistrations = %q, %v; want [reg2]", regs, err)
		}
	})

	t.Run("Delete", func(t *testing.T) {
		s := open(t)
		mustSave(t, s, "t", "p", "snap", "reg")
		mustSave(t, s, "t", "q", "snap-q", "reg-q")
		if err := s.Delete(ctx, "t", "p"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.LoadSnapshot(ctx, "t", "p"); !errors.Is(err, jwkscache.ErrStoreNotFound) {
			t.Fatalf("snapshot after Delete: err = %v", err)
		}
		regs, err := s.LoadRegistrations(ctx)
		if err != nil || len(regs) != 1 || string(regs[0]) != "reg-q" {
			t.Fatalf("registrations after Delete = %q, %v; want only the other pair's", regs, err)
		}
		if got, err := s.LoadSnapshot(ctx, "t", "q"); err != nil || string(got) != "snap-q" {
			t.Fatalf("the other pair's snapshot after Delete = %q, %v", got, err)
		}
	})

	t.Run("Expired", func(t *testing.T) {
		s := open(t)
		if err := s.SaveSnapshot(ctx, "t", "p", []byte("old"), time.Now().Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
		if got, err := s.LoadSnapshot(ctx, "t", "p"); !errors.Is(err, jwkscache.ErrStoreNotFound) {
			t.Fatalf("a record past its expireAt was returned: %q, %v", got, err)
		}
	})

	t.Run("Isolation", func(t *testing.T) {
		s := open(t)
		long := strings.Repeat("x", 4096)
		pairs := [][2]string{
			{"a", "b:c"}, {"a:b", "c"}, {"a/b", "c"}, {"a", "b/c"}, {"a", "b\x00c"}, {"a\x00b", "c"},
			{"{a}", "b"}, {"a", "{b}"}, {"{a", "}b"}, {"a}", "{b"}, {"a{b}", "c"},
			{"a", "b|c"}, {"a|b", "c"}, {"a", "b\nc"}, {"", "ab"}, {"ab", ""}, {"a\"", "b"},
			{long, "p"}, {"t", long}, {long + "y", "p"}, {"a", "b*"}, {"a*", "b"}, {"é", "ü"},
		}
		for i, pr := range pairs {
			mustSave(t, s, pr[0], pr[1], fmt.Sprintf("snap-%d", i), fmt.Sprintf("reg-%d", i))
		}
		for i, pr := range pairs {
			got, err := s.LoadSnapshot(ctx, pr[0], pr[1])
			if err != nil || string(got) != fmt.Sprintf("snap-%d", i) {
				t.Fatalf("pair %q: LoadSnapshot = %q, %v; want snap-%d", pr, got, err, i)
			}
		}
		regs, err := s.LoadRegistrations(ctx)
		if err != nil || len(regs) != len(pairs) {
			t.Fatalf("LoadRegistrations = %d records, %v; want %d", len(regs), err, len(pairs))
		}
		for i, pr := range pairs {
			if err := s.Delete(ctx, pr[0], pr[1]); err != nil {
				t.Fatal(err)
			}
			for j, other := range pairs[i+1:] {
				if got, err := s.LoadSnapshot(ctx, other[0], other[1]); err != nil || string(got) != fmt.Sprintf("snap-%d", i+1+j) {
					t.Fatalf("deleting %q touched %q: %q, %v", pr, other, got, err)
				}
			}
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		s := open(t)
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for g := range 8 {
			wg.Go(func() {
				for i := range 20 {
					p := fmt.Sprintf("p%d", i%4)
					if err := s.SaveSnapshot(ctx, "t", p, []byte(fmt.Sprintf("%d-%d", g, i)), future()); err != nil {
						errs <- err
						return
					}
					if _, err := s.LoadSnapshot(ctx, "t", p); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	})

	t.Run("CancelledContext", func(t *testing.T) {
		s := open(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := s.SaveSnapshot(cctx, "t", "p", []byte("x"), future()); err == nil {
			t.Fatal("SaveSnapshot with a cancelled context succeeded")
		}
		if _, err := s.LoadSnapshot(cctx, "t", "p"); err == nil || errors.Is(err, jwkscache.ErrStoreNotFound) {
			t.Fatalf("LoadSnapshot with a cancelled context: err = %v, want the context's error", err)
		}
	})
}

func mustSave(t *testing.T, s jwkscache.Store, tenant, provider, snap, reg string) {
	t.Helper()
	ctx := context.Background()
	if err := s.SaveSnapshot(ctx, tenant, provider, []byte(snap), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveRegistration(ctx, tenant, provider, []byte(reg)); err != nil {
		t.Fatal(err)
	}
}

// RunFleet checks the FleetStore contract against stores made by open.
// Each call to open within one subtest must return a store of the same
// fleet (sharing one backend), as separate instances would.
func RunFleet(t *testing.T, open func(t *testing.T) jwkscache.FleetStore) {
	ctx := context.Background()

	t.Run("LeaseIsExclusive", func(t *testing.T) {
		a, b := open(t), open(t)
		if err := a.SaveSnapshot(ctx, "t", "p", []byte("snap"), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		la, rec, err := a.TryLease(ctx, "t", "p", 10*time.Second)
		if err != nil || la == nil || string(rec) != "snap" {
			t.Fatalf("first TryLease = %v, %q, %v; want a lease and the snapshot record", la, rec, err)
		}
		if lb, rec, err := b.TryLease(ctx, "t", "p", 10*time.Second); err != nil || lb != nil || string(rec) != "snap" {
			t.Fatalf("second TryLease while held = %v, %q, %v; want no lease and the snapshot record", lb, rec, err)
		}
		if lo, rec, err := b.TryLease(ctx, "t", "other", 10*time.Second); err != nil || lo == nil || rec != nil {
			t.Fatalf("TryLease of another pair = %v, %v", lo, err)
		} else {
			_ = lo.Release(ctx)
		}
		if err := la.Release(ctx); err != nil {
			t.Fatal(err)
		}
		lb, _, err := b.TryLease(ctx, "t", "p", 10*time.Second)
		if err != nil || lb == nil {
			t.Fatalf("TryLease after Release = %v, %v", lb, err)
		}
		// A stale holder's Release must not free the new holder's lease.
		if err := la.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if lc, _, err := a.TryLease(ctx, "t", "p", 10*time.Second); err != nil || lc != nil {
			t.Fatalf("a released lease freed its successor's: TryLease = %v, %v", lc, err)
		}
		_ = lb.Release(ctx)
	})

	t.Run("LeaseLapses", func(t *testing.T) {
		a, b := open(t), open(t)
		la, _, err := a.TryLease(ctx, "t", "p", 50*time.Millisecond)
		if err != nil || la == nil {
			t.Fatalf("TryLease = %v, %v", la, err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			lb, _, err := b.TryLease(ctx, "t", "p", 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if lb != nil {
				// The lapsed holder's Commit saves nothing over the new holder's lease.
				_ = la.Commit(ctx, []byte("late"), time.Now().Add(time.Hour), []byte("n"))
				if lc, _, _ := a.TryLease(ctx, "t", "p", 10*time.Second); lc != nil {
					t.Fatal("a lapsed holder's Commit released its successor's lease")
				}
				_ = lb.Release(ctx)
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("a lease of 50ms still held after 5s")
			}
			time.Sleep(10 * time.Millisecond) // polling a real backend's clock
		}
	})

	t.Run("CommitSavesPublishesReleases", func(t *testing.T) {
		a, b := open(t), open(t)
		type note struct{ tenant, provider, note string }
		got := make(chan note, 16)
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		if err := b.Subscribe(sctx, func(tenant, provider string, n []byte) {
			got <- note{tenant, provider, string(n)}
		}); err != nil {
			t.Fatal(err)
		}
		l, _, err := a.TryLease(ctx, "t{1}", "p:2", 10*time.Second)
		if err != nil || l == nil {
			t.Fatalf("TryLease = %v, %v", l, err)
		}
		if err := l.Commit(ctx, []byte("rec"), time.Now().Add(time.Hour), []byte("hash-1")); err != nil {
			t.Fatal(err)
		}
		if rec, err := b.LoadSnapshot(ctx, "t{1}", "p:2"); err != nil || string(rec) != "rec" {
			t.Fatalf("LoadSnapshot after Commit = %q, %v", rec, err)
		}
		select {
		case n := <-got:
			if n != (note{"t{1}", "p:2", "hash-1"}) {
				t.Fatalf("subscriber got %+v", n)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no note within 5s of Commit")
		}
		if l2, rec, err := b.TryLease(ctx, "t{1}", "p:2", 10*time.Second); err != nil || l2 == nil || string(rec) != "rec" {
			t.Fatalf("after Commit: TryLease = %v, %q, %v; want the lease released and the committed record", l2, rec, err)
		} else {
			_ = l2.Release(ctx)
		}
	})

	t.Run("LeasesAreScopedByPair", func(t *testing.T) {
		a := open(t)
		var held []jwkscache.Lease
		for _, pr := range [][2]string{{"a", "b:c"}, {"a:b", "c"}, {"{a}", "b"}, {"a", "{b}"}, {"a{", "}b"}} {
			l, _, err := a.TryLease(ctx, pr[0], pr[1], 10*time.Second)
			if err != nil || l == nil {
				t.Fatalf("TryLease %q = %v, %v: leases of distinct pairs collide", pr, l, err)
			}
			held = append(held, l)
		}
		for _, l := range held {
			_ = l.Release(ctx)
		}
	})
}

package boltstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/store/boltstore"
	"github.com/jwkscache/jwkscache/store/storetest"
	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) jwkscache.Store {
		return open(t, filepath.Join(t.TempDir(), "x.db"))
	})
}

// open opens the store at path and closes it at the end of the test.
func open(t *testing.T, path string, opts ...boltstore.Option) *boltstore.Store {
	t.Helper()
	s, err := boltstore.Open(path, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

var ctx = context.Background()

func TestReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	s, err := boltstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	snap := []byte("\x00snapshot\xff")
	if err := s.SaveSnapshot(ctx, "t", "p", snap, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveRegistration(ctx, "t", "p", []byte("reg")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, path)
	if got, err := s.LoadSnapshot(ctx, "t", "p"); err != nil || !bytes.Equal(got, snap) {
		t.Fatalf("LoadSnapshot after reopening = %q, %v; want %q", got, err, snap)
	}
	if regs, err := s.LoadRegistrations(ctx); err != nil || len(regs) != 1 || string(regs[0]) != "reg" {
		t.Fatalf("LoadRegistrations after reopening = %q, %v", regs, err)
	}
}

func TestFileMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	open(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("file created with mode %v, want 0600", perm)
	}
}

func TestLockedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	open(t, path)
	// The lock is flock's, which a second open file of the same process
	// conflicts with as another process's would.
	s, err := boltstore.Open(path, boltstore.WithTimeout(time.Millisecond))
	if err == nil {
		s.Close()
		t.Fatal("a second Open of a locked file succeeded")
	}
	if !errors.Is(err, bolterrors.ErrTimeout) || !strings.Contains(err.Error(), path) {
		t.Fatalf("second Open: err = %v; want bbolt's ErrTimeout, naming the path", err)
	}
}

func TestNotADatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	if err := os.WriteFile(path, bytes.Repeat([]byte("not bbolt "), 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := boltstore.Open(path); err == nil {
		s.Close()
		t.Fatal("Open of a file that is not a database succeeded")
	} else if !strings.Contains(err.Error(), path) {
		t.Fatalf("Open: err = %v; want it to name the path", err)
	}
}

func TestClosed(t *testing.T) {
	s, err := boltstore.Open(filepath.Join(t.TempDir(), "x.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	future := time.Now().Add(time.Hour)
	for name, err := range map[string]error{
		"SaveSnapshot":      s.SaveSnapshot(ctx, "t", "p", []byte("x"), future),
		"SaveRegistration":  s.SaveRegistration(ctx, "t", "p", []byte("x")),
		"Delete":            s.Delete(ctx, "t", "p"),
		"LoadSnapshot":      second(s.LoadSnapshot(ctx, "t", "p")),
		"LoadRegistrations": second(s.LoadRegistrations(ctx)),
	} {
		if !errors.Is(err, boltstore.ErrClosed) {
			t.Errorf("%s after Close: err = %v, want ErrClosed", name, err)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func TestCancelledContext(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "x.db"))
	if err := s.SaveRegistration(ctx, "t", "p", []byte("reg")); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	for name, err := range map[string]error{
		"SaveSnapshot":      s.SaveSnapshot(cctx, "t", "p", []byte("x"), time.Now().Add(time.Hour)),
		"SaveRegistration":  s.SaveRegistration(cctx, "t", "p", []byte("x")),
		"Delete":            s.Delete(cctx, "t", "p"),
		"LoadSnapshot":      second(s.LoadSnapshot(cctx, "t", "p")),
		"LoadRegistrations": second(s.LoadRegistrations(cctx)),
	} {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: err = %v, want context.Canceled", name, err)
		}
	}
	// Nothing happened.
	if regs, err := s.LoadRegistrations(ctx); err != nil || len(regs) != 1 || string(regs[0]) != "reg" {
		t.Fatalf("LoadRegistrations = %q, %v; want the record saved before", regs, err)
	}
}

func TestRecordTooLarge(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "x.db"))
	big := make([]byte, boltstore.MaxRecordSize+1)
	if err := s.SaveSnapshot(ctx, "t", "p", big, time.Now().Add(time.Hour)); err == nil || !strings.Contains(err.Error(), "MaxRecordSize") {
		t.Fatalf("SaveSnapshot of %d bytes: err = %v", len(big), err)
	}
	if err := s.SaveRegistration(ctx, "t", "p", big); err == nil || !strings.Contains(err.Error(), "MaxRecordSize") {
		t.Fatalf("SaveRegistration of %d bytes: err = %v", len(big), err)
	}
	if _, err := s.LoadSnapshot(ctx, "t", "p"); !errors.Is(err, jwkscache.ErrStoreNotFound) {
		t.Fatalf("LoadSnapshot after a refused save: err = %v", err)
	}
}

func TestIDsTooLong(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "x.db"))
	long := strings.Repeat("x", bbolt.MaxKeySize)
	if err := s.SaveSnapshot(ctx, long, "p", []byte("x"), time.Now().Add(time.Hour)); err == nil {
		t.Fatal("SaveSnapshot with IDs over bbolt's key limit succeeded")
	} else if len(err.Error()) > 1024 {
		t.Fatalf("error text of %d bytes quotes the whole ID", len(err.Error()))
	}
	if _, err := s.LoadSnapshot(ctx, long, "p"); !errors.Is(err, jwkscache.ErrStoreNotFound) {
		t.Fatalf("LoadSnapshot with IDs over the limit: err = %v, want ErrStoreNotFound", err)
	}
	if err := s.Delete(ctx, long, "p"); err != nil {
		t.Fatalf("Delete with IDs over the limit: %v", err)
	}
}

// TestSweep checks that saves delete expired snapshots of other pairs, a
// few at a time, and keep the live ones.
func TestSweep(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	s, err := boltstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	for i := range n {
		expireAt := time.Now().Add(time.Hour)
		if i%2 == 0 {
			expireAt = time.Now().Add(-time.Hour)
		}
		if err := s.SaveSnapshot(ctx, "t", fmt.Sprintf("p%02d", i), []byte("rec"), expireAt); err != nil {
			t.Fatal(err)
		}
	}
	// Enough saves for the sweep to go round the bucket once more.
	for range n {
		if err := s.SaveSnapshot(ctx, "t", "p01", []byte("rec"), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bbolt.Tx) error {
		if got := tx.Bucket([]byte("snapshots")).Stats().KeyN; got != n/2 {
			return fmt.Errorf("%d snapshot records left, want the %d live ones", got, n/2)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCloseWhileBusy closes the store under concurrent calls: each either
// completes or fails with ErrClosed, and none panics or races.
func TestCloseWhileBusy(t *testing.T) {
	s, err := boltstore.Open(filepath.Join(t.TempDir(), "x.db"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 4 {
		wg.Go(func() {
			p := fmt.Sprintf("p%d", g)
			for {
				err := s.SaveSnapshot(ctx, "t", p, []byte("x"), time.Now().Add(time.Hour))
				if err == nil {
					_, err = s.LoadSnapshot(ctx, "t", p)
				}
				if err == nil {
					_, err = s.LoadRegistrations(ctx)
				}
				if err != nil {
					if !errors.Is(err, boltstore.ErrClosed) {
						errs <- err
					}
					return
				}
			}
		})
	}
	// Close once every goroutine has written, so that it closes under load.
	for g := range 4 {
		for {
			if _, err := s.LoadSnapshot(ctx, "t", fmt.Sprintf("p%d", g)); err == nil {
				break
			}
			runtime.Gosched()
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a call concurrent with Close: err = %v, want nil or ErrClosed", err)
	}
}

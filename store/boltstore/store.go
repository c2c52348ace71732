package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jwkscache/jwkscache"
	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/jwkscache/jwkscache/internal/textcap"
)

// MaxRecordSize caps a record: a save of a larger one fails without
// writing anything. The Manager's records are a few KiB (a key set is
// capped by Options.MaxResponseBytes), so only a bug or an attack comes
// near it.
const MaxRecordSize = 16 << 20

// ErrClosed is what every method returns, wrapped, once Close has been
// called.
var ErrClosed = errors.New("boltstore: store is closed")

const (
	defaultTimeout  = time.Second
	defaultFileMode = 0o600

	// sweepBatch is how many snapshot records each SaveSnapshot examines
	// for expiry, beyond the one it writes: enough to keep up with a
	// store's churn, cheap next to the fsync that every save pays.
	sweepBatch = 8

	// ctxCheckEvery is how often LoadRegistrations checks its context
	// while it copies records.
	ctxCheckEvery = 256
)

var (
	snapshotsBucket     = []byte("snapshots")
	registrationsBucket = []byte("registrations")
)

// Store is a jwkscache.Store in one bbolt file. Create one with Open and
// release it with Close. All methods are safe for concurrent use.
type Store struct {
	db     *bbolt.DB
	path   string
	closed atomic.Bool

	// sweepFrom is the snapshot key where the next sweep starts (nil: the
	// first). Only write transactions touch it, and bbolt runs one at a
	// time.
	sweepFrom []byte
}

var _ jwkscache.Store = (*Store)(nil)

// Option configures Open.
type Option func(*options)

type options struct {
	timeout time.Duration
	mode    os.FileMode
}

// WithTimeout sets how long Open waits for the file lock that another
// process (or another Open) holds; one second by default. Zero waits
// indefinitely.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithFileMode sets the permissions of a file that Open creates; 0600 by
// default. An existing file keeps its own.
func WithFileMode(mode os.FileMode) Option { return func(o *options) { o.mode = mode } }

// Open opens the store in the file at path, creating the file if it does
// not exist (but not its directory), and locks it until Close. It fails if
// another process holds the lock for longer than WithTimeout, or if the
// file is not a bbolt database.
func Open(path string, opts ...Option) (*Store, error) {
	o := options{timeout: defaultTimeout, mode: defaultFileMode}
	for _, opt := range opts {
		opt(&o)
	}
	// bbolt's defaults sync every commit (NoSync false), which is what
	// makes a returned Save durable.
	db, err := bbolt.Open(path, o.mode, &bbolt.Options{Timeout: o.timeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("boltstore: open %s: locked by another process or Open (waited %v): %w", path, o.timeout, err)
	}
	if err != nil {
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{snapshotsBucket, registrationsBucket} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("boltstore: open %s: create buckets: %w", path, err)
	}
	return &Store{db: db, path: path}, nil
}

// Close releases the file and its lock, after any transaction in progress.
// A second Close returns nil; every other method fails with ErrClosed from
// the first on.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("boltstore: close %s: %w", s.path, err)
	}
	return nil
}

// LoadSnapshot returns a copy of the pair's snapshot record, or an error
// matching jwkscache.ErrStoreNotFound if there is none or its expireAt has
// passed.
func (s *Store) LoadSnapshot(ctx context.Context, tenantID, providerID string) ([]byte, error) {
	var rec []byte
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		v := tx.Bucket(snapshotsBucket).Get(pairKey(tenantID, providerID))
		if len(v) < 8 || expired(v, time.Now()) {
			return jwkscache.ErrStoreNotFound // an expired record is left to the sweep
		}
		rec = bytes.Clone(v[8:]) // v lives only as long as the transaction
		return nil
	})
	if err != nil {
		return nil, s.wrap("load snapshot", tenantID, providerID, err)
	}
	return rec, nil
}

// SaveSnapshot replaces the pair's snapshot record, stored behind
// expireAt, and deletes a few expired snapshots of other pairs.
func (s *Store) SaveSnapshot(ctx context.Context, tenantID, providerID string, record []byte, expireAt time.Time) error {
	key, err := checkSave(tenantID, providerID, record)
	if err == nil {
		v := make([]byte, 8+len(record))
		binary.BigEndian.PutUint64(v, uint64(unixNano(expireAt)))
		copy(v[8:], record)
		err = s.update(ctx, func(tx *bbolt.Tx) error {
			b := tx.Bucket(snapshotsBucket)
			if err := b.Put(key, v); err != nil {
				return err
			}
			return s.sweep(b, time.Now())
		})
	}
	if err != nil {
		return s.wrap("save snapshot", tenantID, providerID, err)
	}
	return nil
}

// SaveRegistration replaces the pair's registration record.
func (s *Store) SaveRegistration(ctx context.Context, tenantID, providerID string, record []byte) error {
	key, err := checkSave(tenantID, providerID, record)
	if err == nil {
		err = s.update(ctx, func(tx *bbolt.Tx) error {
			return tx.Bucket(registrationsBucket).Put(key, record)
		})
	}
	if err != nil {
		return s.wrap("save registration", tenantID, providerID, err)
	}
	return nil
}

// LoadRegistrations returns a copy of every registration record, in the
// order of their keys.
func (s *Store) LoadRegistrations(ctx context.Context) ([][]byte, error) {
	var recs [][]byte
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		return tx.Bucket(registrationsBucket).ForEach(func(_, v []byte) error {
			if len(recs)%ctxCheckEvery == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			recs = append(recs, bytes.Clone(v))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: load registrations from %s: %w", s.path, err)
	}
	return recs, nil
}

// Delete removes the pair's registration and snapshot records, in one
// transaction. A missing record is not an error.
func (s *Store) Delete(ctx context.Context, tenantID, providerID string) error {
	key := pairKey(tenantID, providerID)
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		if err := tx.Bucket(registrationsBucket).Delete(key); err != nil {
			return err
		}
		return tx.Bucket(snapshotsBucket).Delete(key)
	})
	if err != nil {
		return s.wrap("delete", tenantID, providerID, err)
	}
	return nil
}

// view and update run fn in a read-only or a write transaction, unless
// ctx is done or the store closed. bbolt takes no context, so ctx is
// checked only before the transaction starts: a write, once begun, commits.
func (s *Store) view(ctx context.Context, fn func(*bbolt.Tx) error) error {
	if err := s.ready(ctx); err != nil {
		return err
	}
	return s.closedErr(s.db.View(fn))
}

func (s *Store) update(ctx context.Context, fn func(*bbolt.Tx) error) error {
	if err := s.ready(ctx); err != nil {
		return err
	}
	return s.closedErr(s.db.Update(fn))
}

func (s *Store) ready(ctx context.Context) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return ctx.Err()
}

// closedErr turns bbolt's error for a transaction begun while Close ran
// into ErrClosed, still matching bbolt's.
func (s *Store) closedErr(err error) error {
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return err
}

func (s *Store) wrap(op, tenantID, providerID string, err error) error {
	return fmt.Errorf("boltstore: %s (tenant %s, provider %s) in %s: %w",
		op, showID(tenantID), showID(providerID), s.path, err)
}

// sweep deletes the expired records among the sweepBatch snapshot records
// from s.sweepFrom on, and moves s.sweepFrom past them, back to the first
// at the end of the bucket: every save examines a few records, so that
// every record is examined in turn however many there are.
func (s *Store) sweep(b *bbolt.Bucket, now time.Time) error {
	var dead [][]byte
	c := b.Cursor()
	k, v := c.Seek(s.sweepFrom)
	for range sweepBatch {
		if k == nil {
			break
		}
		if len(v) < 8 || expired(v, now) {
			dead = append(dead, bytes.Clone(k))
		}
		k, v = c.Next()
	}
	s.sweepFrom = bytes.Clone(k) // nil at the end
	// Delete after the walk: deleting under a bbolt cursor can make Next
	// skip a record.
	for _, k := range dead {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// checkSave refuses a record over MaxRecordSize, and a pair whose key is
// beyond bbolt's limit, and returns the pair's key.
func checkSave(tenantID, providerID string, record []byte) ([]byte, error) {
	if len(record) > MaxRecordSize {
		return nil, fmt.Errorf("record of %d bytes exceeds MaxRecordSize (%d)", len(record), MaxRecordSize)
	}
	key := pairKey(tenantID, providerID)
	if len(key) > bbolt.MaxKeySize {
		return nil, fmt.Errorf("IDs of %d bytes together exceed the store's limit of about %d", len(tenantID)+len(providerID), bbolt.MaxKeySize)
	}
	return key, nil
}

// pairKey encodes the pair unambiguously, whatever bytes the IDs hold: the
// tenant's length (uvarint), the tenant, then the provider. The length
// says where the tenant ends, so no two pairs share a key, as a separator
// that may occur inside an ID could not guarantee.
func pairKey(tenantID, providerID string) []byte {
	key := make([]byte, 0, binary.MaxVarintLen64+len(tenantID)+len(providerID))
	key = binary.AppendUvarint(key, uint64(len(tenantID)))
	key = append(key, tenantID...)
	return append(key, providerID...)
}

// expired reports whether the snapshot value v (expireAt in unix
// nanoseconds, big-endian, then the record) has passed its expireAt.
func expired(v []byte, now time.Time) bool {
	return unixNano(now) >= int64(binary.BigEndian.Uint64(v))
}

var minTime, maxTime = time.Unix(0, math.MinInt64), time.Unix(0, math.MaxInt64)

// unixNano is t.UnixNano, clamped to the years 1678 to 2262 it can
// represent (so the zero Time, for one, is long expired).
func unixNano(t time.Time) int64 {
	switch {
	case t.Before(minTime):
		return math.MinInt64
	case t.After(maxTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// maxShownID caps an ID quoted in an error text: IDs are arbitrary
// strings to a Store, and may be long.
const maxShownID = 64

// showID returns id quoted, cut at a rune boundary after maxShownID bytes.
func showID(id string) string { return strconv.Quote(textcap.Cap(id, maxShownID)) }

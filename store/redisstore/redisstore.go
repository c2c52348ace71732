package redisstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/jwkscache/jwkscache"
)

var _ jwkscache.FleetStore = (*Store)(nil)

// DefaultPrefix is the key prefix of a Store made without WithPrefix.
const DefaultPrefix = "jwkscache:"

// maxPrefixLen bounds WithPrefix.
const maxPrefixLen = 256

// ErrClosed is returned by Subscribe after Close.
var ErrClosed = errors.New("redisstore: store closed")

// Store is a jwkscache.FleetStore on Redis: a standalone server, a
// Sentinel-managed primary or a Redis Cluster, through a go-redis client.
// See the package documentation for the layout and semantics. Its methods
// are safe for concurrent use.
type Store struct {
	client   redis.UniversalClient
	prefix   string
	channel  string
	regMatch string // SCAN pattern of the registration keys

	ctx    context.Context // cancelled by Close; ends the subscriptions
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	subs   sync.WaitGroup // running subscriptions

	stats stats

	// subscribedHook, when set (by tests, before Subscribe), is called on
	// the subscription's goroutine each time a broken subscription has
	// been re-established.
	subscribedHook func()
}

// Option configures a Store.
type Option func(*config)

type config struct {
	prefix string
}

// WithPrefix sets the prefix of every key and of the pub/sub channel
// (default "jwkscache:"). Stores with different prefixes on one Redis
// share nothing: not records, not leases, not notes. A prefix is 1 to 256
// printable ASCII characters, without '{' or '}' (which would change the
// keys' Redis Cluster hash tag) and without spaces.
func WithPrefix(prefix string) Option {
	return func(c *config) { c.prefix = prefix }
}

// New returns a Store that keeps its records in the Redis that client
// talks to. client is typically a *redis.Client, a failover
// (Sentinel) *redis.Client or a *redis.ClusterClient, as
// redis.NewUniversalClient returns them; a *redis.Ring is refused, because
// its shards do not share pub/sub and keyspace. New does no I/O.
//
// The Store does not own client: Close does not close it, and the client
// must stay open while the Store is used. Give the client
// ContextTimeoutEnabled: true, so that the Store's calls end when their
// context does (without it, go-redis bounds them by its own read and write
// timeouts, 3 s by default, not by the Manager's Options.StoreTimeout).
func New(client redis.UniversalClient, opts ...Option) (*Store, error) {
	switch c := client.(type) {
	case nil:
		return nil, errors.New("redisstore: New: nil client")
	case *redis.Client:
		if c == nil {
			return nil, errors.New("redisstore: New: nil client")
		}
	case *redis.ClusterClient:
		if c == nil {
			return nil, errors.New("redisstore: New: nil client")
		}
	case *redis.Ring:
		return nil, errors.New("redisstore: New: a *redis.Ring is not supported: its shards share neither keyspace nor pub/sub; use a Redis Cluster")
	}
	cfg := config{prefix: DefaultPrefix}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if err := validPrefix(cfg.prefix); err != nil {
		return nil, fmt.Errorf("redisstore: New: prefix %q: %w", cfg.prefix, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Store{
		client:  client,
		prefix:  cfg.prefix,
		channel: cfg.prefix + "events",
		// A registration key is the prefix, "r:", then "{", 32 hex
		// digits and "}". Matching that exact shape (not "r:*") keeps a
		// prefix that extends this one (p+"r:…") out of the scan.
		regMatch: escapeGlob(cfg.prefix+kindRegistration+"{") + repeatQ(tagLen) + "}",
		ctx:      ctx,
		cancel:   cancel,
	}, nil
}

func repeatQ(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = '?'
	}
	return string(b)
}

func validPrefix(p string) error {
	if p == "" || len(p) > maxPrefixLen {
		return fmt.Errorf("length %d, want 1 to %d", len(p), maxPrefixLen)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c <= ' ' || c > '~' {
			return fmt.Errorf("byte %d is %#x, not printable ASCII", i, c)
		}
		if c == '{' || c == '}' {
			return errors.New("braces would change the Redis Cluster hash tag of the keys")
		}
	}
	return nil
}

// Prefix returns the Store's key prefix.
func (s *Store) Prefix() string { return s.prefix }

// Close ends the Store's subscriptions and waits for their goroutines to
// exit (a delivery in progress runs to its end; so fn must not call
// Close). It does not close the client. After Close, Subscribe fails with
// ErrClosed; the other methods keep working while the client does. Close
// is idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.subs.Wait()
	return nil
}

func opError(op string, err error) error {
	return fmt.Errorf("redisstore: %s: %w", op, err)
}

func notFound(op string) error {
	return fmt.Errorf("redisstore: %s: %w", op, jwkscache.ErrStoreNotFound)
}

// check refuses a call whose context is done or whose IDs are too long.
func check(ctx context.Context, op, tenant, provider string) error {
	if err := ctx.Err(); err != nil {
		return opError(op, err)
	}
	if len(tenant) > MaxIDLen || len(provider) > MaxIDLen {
		return fmt.Errorf("redisstore: %s: tenant or provider ID longer than %d bytes", op, MaxIDLen)
	}
	return nil
}

func checkRecord(op string, record []byte) error {
	if len(record) > MaxRecordSize {
		return fmt.Errorf("redisstore: %s: record of %d bytes, more than %d", op, len(record), MaxRecordSize)
	}
	return nil
}

// remainingMillis is the life left until expireAt in whole milliseconds,
// rounded up; 0 when expireAt is not in the future.
func remainingMillis(expireAt time.Time) int64 {
	d := time.Until(expireAt)
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// LoadSnapshot returns the pair's snapshot record: one GET.
func (s *Store) LoadSnapshot(ctx context.Context, tenantID, providerID string) ([]byte, error) {
	const op = "LoadSnapshot"
	if err := check(ctx, op, tenantID, providerID); err != nil {
		return nil, err
	}
	v, err := s.client.Get(ctx, s.keys(tenantID, providerID).snapshot).Result()
	if errors.Is(err, redis.Nil) {
		return nil, notFound(op)
	}
	if err != nil {
		return nil, opError(op, err)
	}
	return s.snapshotRecord(op, tenantID, providerID, v)
}

// snapshotRecord returns the record in v, the value of the pair's snapshot
// key.
func (s *Store) snapshotRecord(op, tenantID, providerID, v string) ([]byte, error) {
	t, p, rec, ok := parseFrame(v)
	if !ok {
		s.stats.recordsMalformed.Add(1)
		return nil, fmt.Errorf("redisstore: %s: the value under the pair's key is not a record of this package (%d bytes)", op, len(v))
	}
	if t != tenantID || p != providerID {
		// Another pair's record under this pair's key: only a 128-bit
		// hash collision, or someone writing to the Redis, does that.
		return nil, notFound(op)
	}
	return []byte(rec), nil
}

// SaveSnapshot replaces the pair's snapshot record, to expire at expireAt
// (SET with PX, the remaining life in milliseconds, rounded up); when
// expireAt is not in the future, it deletes the record instead. One
// round trip.
func (s *Store) SaveSnapshot(ctx context.Context, tenantID, providerID string, record []byte, expireAt time.Time) error {
	const op = "SaveSnapshot"
	if err := check(ctx, op, tenantID, providerID); err != nil {
		return err
	}
	if err := checkRecord(op, record); err != nil {
		return err
	}
	key := s.keys(tenantID, providerID).snapshot
	ms := remainingMillis(expireAt)
	var err error
	if ms == 0 {
		err = s.client.Del(ctx, key).Err()
	} else {
		err = s.client.Set(ctx, key, frame(tenantID, providerID, record), time.Duration(ms)*time.Millisecond).Err()
	}
	if err != nil {
		return opError(op, err)
	}
	return nil
}

// SaveRegistration replaces the pair's registration record (no expiry).
// One round trip.
func (s *Store) SaveRegistration(ctx context.Context, tenantID, providerID string, record []byte) error {
	const op = "SaveRegistration"
	if err := check(ctx, op, tenantID, providerID); err != nil {
		return err
	}
	if err := checkRecord(op, record); err != nil {
		return err
	}
	key := s.keys(tenantID, providerID).registration
	if err := s.client.Set(ctx, key, frame(tenantID, providerID, record), 0).Err(); err != nil {
		return opError(op, err)
	}
	return nil
}

// Delete removes the pair's registration and snapshot records: one DEL of
// both keys (one slot). It leaves a lease alone: it lapses by itself.
func (s *Store) Delete(ctx context.Context, tenantID, providerID string) error {
	const op = "Delete"
	if err := check(ctx, op, tenantID, providerID); err != nil {
		return err
	}
	k := s.keys(tenantID, providerID)
	if err := s.client.Del(ctx, k.snapshot, k.registration).Err(); err != nil {
		return opError(op, err)
	}
	return nil
}

// scanCount is the COUNT hint of LoadRegistrations' SCANs, and the number
// of GETs in one of its pipelines.
const scanCount = 1000

// LoadRegistrations returns every registration record under the prefix.
// It SCANs the keyspace for the registration keys (on every master of a
// cluster, in parallel), then GETs each page of keys in one pipeline: on
// a database of K keys holding R registrations, about K/1000 SCAN round
// trips and R/1000 pipelines per master. It fails past MaxRegistrations
// keys or 1 GiB of records. Values that are not this package's records
// for the pair of their key are skipped (and counted in
// Stats.RecordsMalformed).
func (s *Store) LoadRegistrations(ctx context.Context) ([][]byte, error) {
	const op = "LoadRegistrations"
	if err := ctx.Err(); err != nil {
		return nil, opError(op, err)
	}
	var (
		mu    sync.Mutex
		seen  = map[string]struct{}{} // SCAN may return a key twice
		out   [][]byte
		total int
	)
	scanNode := func(ctx context.Context, node redis.UniversalClient) error {
		var cursor uint64
		for {
			keys, next, err := node.Scan(ctx, cursor, s.regMatch, scanCount).Result()
			if err != nil {
				return err
			}
			fresh := make([]string, 0, len(keys))
			mu.Lock()
			for _, k := range keys {
				if _, dup := seen[k]; !dup {
					seen[k] = struct{}{}
					fresh = append(fresh, k)
				}
			}
			n := len(seen)
			mu.Unlock()
			if n > MaxRegistrations {
				return fmt.Errorf("more than %d registration keys", MaxRegistrations)
			}
			recs, size, err := s.getRegistrations(ctx, fresh)
			if err != nil {
				return err
			}
			mu.Lock()
			out = append(out, recs...)
			total += size
			size = total
			mu.Unlock()
			if size > maxRegistrationBytes {
				return fmt.Errorf("more than %d bytes of registration records", maxRegistrationBytes)
			}
			if next == 0 {
				return nil
			}
			cursor = next
		}
	}
	var err error
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			return scanNode(ctx, node)
		})
	} else {
		err = scanNode(ctx, s.client)
	}
	if err != nil {
		return nil, opError(op, err)
	}
	if out == nil {
		out = [][]byte{}
	}
	return out, nil
}

// getRegistrations GETs keys in one pipeline (through the Store's client,
// which routes each GET to its slot's master), and returns the records of
// those still there and their total size.
func (s *Store) getRegistrations(ctx context.Context, keys []string) ([][]byte, int, error) {
	if len(keys) == 0 {
		return nil, 0, nil
	}
	pipe := s.client.Pipeline()
	cmds := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.Get(ctx, k)
	}
	_, execErr := pipe.Exec(ctx)
	recs := make([][]byte, 0, len(keys))
	size := 0
	for i, cmd := range cmds {
		v, err := cmd.Result()
		if errors.Is(err, redis.Nil) {
			continue // deleted since the SCAN
		}
		if err != nil {
			return nil, 0, err
		}
		t, p, rec, ok := parseFrame(v)
		if !ok || s.keys(t, p).registration != keys[i] {
			s.stats.recordsMalformed.Add(1)
			continue
		}
		recs = append(recs, []byte(rec))
		size += len(rec)
	}
	if execErr != nil && !errors.Is(execErr, redis.Nil) {
		return nil, 0, execErr
	}
	return recs, size, nil
}

// Stats are counters of a Store since New.
type Stats struct {
	// MessagesDelivered counts the notes passed to Subscribe's fns.
	MessagesDelivered uint64
	// MessagesIgnored counts the messages on the channel that were not
	// notes of this package (malformed, or over MaxMessageSize).
	MessagesIgnored uint64
	// Resubscriptions counts the subscriptions re-established after a
	// broken connection. Notes published while one was broken are lost.
	Resubscriptions uint64
	// RecordsMalformed counts the values under the prefix that were not
	// this package's records for the pair of their key: refused by
	// LoadSnapshot, skipped by LoadRegistrations.
	RecordsMalformed uint64
	// LeasesLapsed counts the Commits that found their lease gone or
	// taken by another instance (they still saved and published).
	LeasesLapsed uint64
}

type stats struct {
	messagesDelivered, messagesIgnored, resubscriptions atomic.Uint64
	recordsMalformed, leasesLapsed                      atomic.Uint64
}

// Stats returns the Store's counters.
func (s *Store) Stats() Stats {
	return Stats{
		MessagesDelivered: s.stats.messagesDelivered.Load(),
		MessagesIgnored:   s.stats.messagesIgnored.Load(),
		Resubscriptions:   s.stats.resubscriptions.Load(),
		RecordsMalformed:  s.stats.recordsMalformed.Load(),
		LeasesLapsed:      s.stats.leasesLapsed.Load(),
	}
}

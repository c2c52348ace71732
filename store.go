package jwkscache

import (
	"context"
	"errors"
	"time"
)

// ErrStoreNotFound is what a Store returns, wrapped or not, when it holds
// no record for the pair asked about.
var ErrStoreNotFound = errors.New("jwkscache: store: no such record")

// Store persists registrations and key-set snapshots, so that a restarted
// Manager serves keys before it reaches any identity provider (see
// Options.Store). Implementations in this module: store/boltstore (an
// embedded file) and store/redisstore (Redis, shared by a fleet).
//
// The contract:
//
//   - Records are opaque bytes. The Manager encodes them with a version, a
//     checksum and, when Options.StoreKeys is set, an HMAC-SHA256, and
//     checks all of it (and the tenant, provider and URL inside) when it
//     reads them back: a Store need not, and must not, interpret them. It
//     must return the bytes it was given, unchanged, or an error.
//   - Records are addressed by the pair (tenantID, providerID). The IDs are
//     arbitrary strings to a Store (the Manager validates them, but a Store
//     must not rely on that): distinct pairs never share a record, whatever
//     separators or other special characters their IDs contain.
//   - A missing record is an error matching ErrStoreNotFound, nothing
//     else. Delete of a missing record is not an error.
//   - Every method is safe for concurrent use, honours ctx (returning
//     promptly, with an error, once it is done), and may be called from
//     many goroutines of many Managers at once.
//   - An error means the operation did not happen, or may not have: the
//     Manager keeps serving from memory, shows the error in
//     ProviderStatus.StoreError, and writes the latest snapshot again once
//     the Store answers. An error never fails a key lookup.
//
// The Manager never calls a Store under an engine lock or on its scheduler
// goroutine, and bounds every call by Options.StoreTimeout.
type Store interface {
	// LoadSnapshot returns the snapshot record saved for the pair.
	LoadSnapshot(ctx context.Context, tenantID, providerID string) ([]byte, error)
	// SaveSnapshot replaces the pair's snapshot record. The record is of
	// no use after expireAt (the end of its stale window): a Store may
	// drop it from then on, and must not return it much past that.
	SaveSnapshot(ctx context.Context, tenantID, providerID string, record []byte, expireAt time.Time) error
	// SaveRegistration replaces the pair's registration record.
	SaveRegistration(ctx context.Context, tenantID, providerID string, record []byte) error
	// LoadRegistrations returns every registration record, in any order.
	LoadRegistrations(ctx context.Context) ([][]byte, error)
	// Delete removes the pair's registration and snapshot records.
	Delete(ctx context.Context, tenantID, providerID string) error
}

// FleetStore is a Store shared by several Managers (a fleet of daemons or
// service instances) that also coordinates their refreshes, so that the
// fleet costs each identity provider about one fetch per TTL however many
// instances run. store/redisstore implements it.
//
// Coordination is an optimisation, never a correctness requirement: when a
// FleetStore call fails, the Manager fetches for itself.
type FleetStore interface {
	Store
	// TryLease tries to take the pair's refresh lease for ttl. It returns
	// a nil Lease and a nil error when another instance holds it. Either
	// way it also returns the pair's snapshot record (nil when there is
	// none), read after the lease was taken or found taken, in the same
	// round trip where the Store can: an instance that takes the lease
	// just after another committed then sees that commit, and adopts it
	// instead of fetching again.
	TryLease(ctx context.Context, tenantID, providerID string, ttl time.Duration) (Lease, []byte, error)
	// Subscribe delivers the note of every Lease.Commit, by any instance of
	// the fleet (this one included), to fn, until ctx is done. It returns
	// once the subscription is established, or with the error that
	// prevented it; after that it re-establishes a broken subscription by
	// itself. fn runs on a goroutine of the Store, one call at a time, and
	// must not block for long.
	Subscribe(ctx context.Context, fn func(tenantID, providerID string, note []byte)) error
}

// Lease is a FleetStore's refresh lease on one pair. Exactly one of Commit
// and Release should be called; after the lease's ttl it lapses by itself,
// so that an instance that dies while holding it delays the others by no
// more than that.
type Lease interface {
	// Commit saves the snapshot record (as SaveSnapshot), publishes note to
	// the fleet's subscribers and releases the lease, in one round trip
	// where the Store can. It releases the lease only if this instance
	// still holds it.
	Commit(ctx context.Context, record []byte, expireAt time.Time, note []byte) error
	// Release gives the lease up, if this instance still holds it.
	Release(ctx context.Context) error
}

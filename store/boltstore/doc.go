// Package boltstore is a jwkscache.Store kept in one local file, an
// embedded bbolt database (go.etcd.io/bbolt): the daemon's default store,
// and the one to use for a single instance that should serve keys after a
// restart before it reaches any identity provider.
//
//	s, err := boltstore.Open("/var/lib/jwkscache/store.db")
//	defer s.Close()
//	m, err := jwkscache.New(jwkscache.Options{Store: s, StoreKeys: keys})
//
// # What it stores
//
// Two buckets: the registration record and the snapshot record of each
// (tenantID, providerID) pair, keyed by an unambiguous encoding of the pair
// (the tenant's length, the tenant, the provider), so that distinct pairs
// never share a record whatever bytes their IDs contain. A snapshot is
// stored behind its expireAt; LoadSnapshot answers ErrStoreNotFound once
// that has passed, and each SaveSnapshot deletes the expired snapshots
// among a few more records, so that the file does not keep the key sets of
// providers long gone.
//
// Records are opaque: the Manager encodes them with a version and a
// checksum and, with Options.StoreKeys, authenticates them with an HMAC,
// and checks all of that when it reads them back. This package neither
// reads nor checks them; it refuses records over MaxRecordSize.
//
// # Crash safety
//
// Every write is one bbolt transaction, synced to disk (fsync) before the
// method returns: a record whose Save returned nil survives the process
// being killed (kill -9) and, as far as the disk honours fsync, a power
// cut. bbolt never modifies pages in place, so a crash mid-write leaves the
// previous state, never a torn one. The price is one fsync per write, a few
// milliseconds on most disks; the Manager writes once per refresh of each
// provider, not per lookup. Reads take no lock on the file and do no I/O
// beyond the memory map.
//
// # One process per file
//
// Open takes an exclusive lock on the file (flock), held until Close: a
// second process (or a second Open in the same one) waits WithTimeout, one
// second by default, then fails with an error matching bbolt's ErrTimeout
// that names the path. Instances that share a store across processes or
// hosts use store/redisstore instead.
//
// # Permissions
//
// Open creates the file with mode 0600 (see WithFileMode), since its
// records reveal which tenants and providers the process serves, and
// creates no directory: the caller provides one it trusts. With
// Options.StoreKeys, the records' HMAC stops whoever can write the file
// from planting keys; nothing stops one from deleting records, which costs
// the Manager a fetch at its next start.
package boltstore

// Package redisstore is a jwkscache.FleetStore on Redis: the registrations
// and key-set snapshots of a fleet of Managers in one Redis (standalone,
// Sentinel or Cluster), with refresh leases and change notes so that the
// fleet fetches each JWKS about once per TTL however many instances run.
//
//	client := redis.NewUniversalClient(&redis.UniversalOptions{
//		Addrs:                 []string{"redis:6379"},
//		ContextTimeoutEnabled: true, // so that Options.StoreTimeout bounds each call
//	})
//	store, err := redisstore.New(client, redisstore.WithPrefix("jwkscache:"))
//	if err != nil { ... }
//	defer store.Close() // ends the subscriptions; the client stays yours
//	m, err := jwkscache.New(jwkscache.Options{Store: store, StoreKeys: keys})
//
// # Security
//
// Snapshot records hold the signing keys that every token of a tenant is
// verified with. The Manager authenticates the records it reads (with an
// HMAC-SHA256) only when Options.StoreKeys is set. Without StoreKeys,
// whoever can write to this Redis can plant signing keys for every tenant,
// and so mint tokens that your services accept. Set StoreKeys, and treat
// write access to the Redis (and to its replicas and backups) like access
// to those keys. Redis ACLs can confine the Store's user to its keys
// (~<prefix>*) and channel (&<prefix>events).
//
// # Keys
//
// Every key starts with the prefix (WithPrefix; default "jwkscache:").
// The keys of a pair (tenant, provider) are
//
//	<prefix>s:{<tag>}   its snapshot record (expires with it)
//	<prefix>r:{<tag>}   its registration record (no expiry)
//	<prefix>l:{<tag>}   its refresh lease (expires with the lease)
//
// where <tag> is 32 hex digits: the first 128 bits of the SHA-256 of
// uvarint(len(tenant)) || tenant || provider. Tenant and provider IDs may
// hold any bytes (braces, colons, NUL, newlines, kilobytes): the encoding
// is unambiguous, and the keys stay short and free of braces. Every value
// is framed as a version byte, the length-prefixed tenant and provider,
// then the record; reads check that the pair in the frame is the pair
// asked for, so that even a hash collision could not hand one pair
// another's record.
//
// # Redis Cluster
//
// The braces make <tag> the Redis Cluster hash tag of all three keys of a
// pair, so they share one slot: Delete is one DEL of two keys, and
// Lease.Commit one Lua script over the snapshot and lease keys, on any
// deployment. Pairs spread over the slots. LoadRegistrations SCANs every
// master (ForEachMaster) and GETs what it finds in pipelines, which
// go-redis routes by slot. Pub/sub uses one channel, <prefix>events;
// PUBLISH in a Cluster reaches the subscribers of every node.
//
// The scan reads the whole keyspace of each master, other applications'
// keys included: LoadRegistrations (which a Manager calls at start) costs
// about one round trip per 1000 keys of the database. Give the Store a
// database of its own when that database is large.
//
// # Expiry
//
// SaveSnapshot and Commit set the snapshot key's expiry to the remaining
// life of the record (PX, in milliseconds, rounded up, from the Store's
// clock, so the server's clock does not matter); a record whose expireAt
// has passed is deleted rather than saved. Redis never returns an expired
// key. Registrations do not expire.
//
// # Leases
//
// TryLease is a pipeline, one round trip, of SET <lease key> <random
// 128-bit token> NX PX <ttl> and GET <snapshot key> (the same slot): no
// lease when another holder has it, and either way the snapshot as it is
// once the lease was taken or found taken, so that an instance taking the
// lease just after another committed adopts that commit instead of
// fetching again. Release is a compare-and-delete script: it
// deletes the key only if it still holds the token, so a holder whose
// lease lapsed never frees its successor's. Commit is one Lua script:
// save the snapshot, PUBLISH the note, compare-and-delete the lease. It
// saves and publishes even when the lease has lapsed, since the record is
// newer and valid; only the release depends on the token. A lease is an
// optimisation: when Redis fails, a Manager fetches for itself.
//
// # Notes
//
// Subscribe SUBSCRIBEs to <prefix>events on a connection of its own and
// returns once Redis has confirmed it. Messages carry the length-prefixed
// tenant and provider, then the note. go-redis pings an idle subscription
// (every 3 s) and re-establishes a broken one by itself; notes published in between
// are lost, which costs a Manager nothing it relies on: it reads the Store
// before each refresh. Messages that are not this package's notes, or
// larger than MaxMessageSize, are ignored and counted (Stats).
//
// # Round trips
//
// LoadSnapshot, SaveSnapshot, SaveRegistration, Delete, TryLease, Release
// and Commit are one round trip each (Release and Commit run Lua scripts
// by EVALSHA; after a node's script cache was emptied, by a restart or
// SCRIPT FLUSH, the first run there takes one more, an EVAL). Subscribe
// takes one (SUBSCRIBE and its confirmation) plus the dial of its
// connection. LoadRegistrations is described above.
//
// # Bounds and errors
//
// Records are at most MaxRecordSize (16 MiB), IDs MaxIDLen (16 KiB) each,
// messages MaxMessageSize (64 KiB); LoadRegistrations fails past
// MaxRegistrations (1,000,000) keys or 1 GiB of records. A missing record
// is an error matching jwkscache.ErrStoreNotFound. Other errors name the
// operation and wrap their cause (a go-redis or context error); none
// carries record bytes.
package redisstore

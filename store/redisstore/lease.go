package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/jwkscache/jwkscache"
)

// releaseScript deletes the lease key if it still holds this holder's
// token. KEYS[1]: the lease key; ARGV[1]: the token.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	return redis.call('DEL', KEYS[1])
end
return 0
`)

// commitScript saves the snapshot, publishes the note and releases the
// lease if it still holds this holder's token, atomically.
//
// KEYS[1]: the snapshot key; KEYS[2]: the lease key (one slot).
// ARGV[1]: the framed record; ARGV[2]: its remaining life in ms ("0":
// delete it instead); ARGV[3]: the channel; ARGV[4]: the framed note;
// ARGV[5]: the lease token. Returns 1 when it released the lease, else 0.
var commitScript = redis.NewScript(`
if ARGV[2] ~= '0' then
	redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
	redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
if redis.call('GET', KEYS[2]) == ARGV[5] then
	return redis.call('DEL', KEYS[2])
end
return 0
`)

// TryLease tries to take the pair's refresh lease for ttl (rounded up to
// a whole millisecond) and reads the pair's snapshot record, in one round
// trip: a pipeline of SET of the lease key to a random 128-bit token with
// NX and PX, then GET of the snapshot key (both in the pair's slot). It
// returns a nil Lease when another holder has the lease, and a nil record
// when there is none.
//
// go-redis retries a command whose connection broke; if the first SET
// succeeded but its reply was lost, the retry finds the key set and
// TryLease reports the lease held: it then lapses after ttl. Leases are
// an optimisation, so the cost is one delayed refresh.
func (s *Store) TryLease(ctx context.Context, tenantID, providerID string, ttl time.Duration) (jwkscache.Lease, []byte, error) {
	const op = "TryLease"
	if err := check(ctx, op, tenantID, providerID); err != nil {
		return nil, nil, err
	}
	if ttl <= 0 {
		return nil, nil, fmt.Errorf("redisstore: %s: ttl %v, want > 0", op, ttl)
	}
	ttl = (ttl + time.Millisecond - 1) / time.Millisecond * time.Millisecond
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, nil, opError(op, err)
	}
	l := &lease{
		s:        s,
		tenant:   tenantID,
		provider: providerID,
		keys:     s.keys(tenantID, providerID),
		token:    hex.EncodeToString(b[:]),
	}
	pipe := s.client.Pipeline()
	set := pipe.SetNX(ctx, l.keys.lease, l.token, ttl)
	get := pipe.Get(ctx, l.keys.snapshot)
	_, _ = pipe.Exec(ctx) // each command's own error is read below
	ok, err := set.Result()
	if err != nil {
		return nil, nil, opError(op, err)
	}
	v, err := get.Result()
	var rec []byte
	switch {
	case errors.Is(err, redis.Nil):
	case err != nil:
		if ok {
			_ = l.Release(ctx) // do not hold a lease the caller never learns of
		}
		return nil, nil, opError(op, err)
	default:
		if rec, err = s.snapshotRecord(op, tenantID, providerID, v); errors.Is(err, jwkscache.ErrStoreNotFound) {
			rec = nil
		} else if err != nil {
			rec = nil // a malformed value: counted; the caller fetches
		}
	}
	if !ok {
		return nil, rec, nil
	}
	return l, rec, nil
}

// lease is a held (or once held) lease of one pair.
type lease struct {
	s                *Store
	tenant, provider string
	keys             pairKeys
	token            string
}

// Commit saves the snapshot record (as SaveSnapshot: with the remaining
// life until expireAt, or deleted when that is not in the future),
// publishes note to every subscriber of the prefix's channel, and deletes
// the lease key if it still holds this lease's token: all in one Lua
// script, one round trip (EVALSHA; the first Commit after the script
// cache of a node was emptied by a restart or SCRIPT FLUSH takes a second
// one, an EVAL).
//
// The record is saved and the note published even when the lease has
// lapsed (or another instance holds it since): the record is newer data
// and valid, and records are checked by the Manager when read. Only the
// release is conditional. Such a Commit is counted in Stats.LeasesLapsed
// and is not an error.
//
// go-redis may retry the script after a broken connection; a retry saves
// the same record and publishes the note once more, which subscribers
// treat like any other note.
func (l *lease) Commit(ctx context.Context, record []byte, expireAt time.Time, note []byte) error {
	const op = "Commit"
	if err := ctx.Err(); err != nil {
		return opError(op, err)
	}
	if err := checkRecord(op, record); err != nil {
		return err
	}
	msg := frame(l.tenant, l.provider, note)
	if len(msg) > MaxMessageSize {
		return fmt.Errorf("redisstore: %s: note of %d bytes makes a message of more than %d bytes", op, len(note), MaxMessageSize)
	}
	value := frame(l.tenant, l.provider, record)
	ms := remainingMillis(expireAt)
	released, err := commitScript.Run(ctx, l.s.client,
		[]string{l.keys.snapshot, l.keys.lease},
		value, ms, l.s.channel, msg, l.token).Int64()
	if err != nil {
		return opError(op, err)
	}
	if released == 0 {
		l.s.stats.leasesLapsed.Add(1)
	}
	return nil
}

// Release deletes the lease key if it still holds this lease's token: one
// round trip (as Commit's, EVALSHA, plus an EVAL after a script cache
// flush). Releasing a lease that lapsed, or was released already, does
// nothing and is not an error.
func (l *lease) Release(ctx context.Context) error {
	const op = "Release"
	if err := ctx.Err(); err != nil {
		return opError(op, err)
	}
	err := releaseScript.Run(ctx, l.s.client, []string{l.keys.lease}, l.token).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		return opError(op, err)
	}
	return nil
}

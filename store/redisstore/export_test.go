package redisstore

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Keys returns the snapshot, registration and lease keys of a pair.
func Keys(s *Store, tenantID, providerID string) (snapshot, registration, lease string) {
	k := s.keys(tenantID, providerID)
	return k.snapshot, k.registration, k.lease
}

// Frame returns the value (or message) s writes for a pair's payload.
func Frame(tenantID, providerID string, payload []byte) []byte {
	return frame(tenantID, providerID, payload)
}

// SetSubscribedHook sets a function called each time one of s's
// subscriptions is re-established. Call it before Subscribe.
func SetSubscribedHook(s *Store, f func()) { s.subscribedHook = f }

// WaitSubscriptions waits until every subscription goroutine of s has
// exited (after their contexts are done).
func WaitSubscriptions(s *Store) { s.subs.Wait() }

// DeadClient returns a client of an address where nothing answers, for
// tests that must fail before any I/O (or prove that a call does I/O).
func DeadClient(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: time.Second})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

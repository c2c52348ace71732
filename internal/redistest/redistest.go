// Package redistest holds the helpers of this module's Redis tests: a
// client for the Redis named by JWKSCACHE_REDIS_ADDR, unique key prefixes
// that clean up after themselves, and private redis-server processes (one
// server, or a three-node Redis Cluster) for tests that must stop, restart
// or shard the server.
//
// Every helper skips its test, with a message saying why, when
// JWKSCACHE_REDIS_ADDR is empty: the Redis tests run only when it names a
// server (.ci/run sets it). When it is set and the server does not answer,
// the test fails: a CI that means to run the Redis tests must not pass by
// skipping them. StartServer and StartCluster also skip when the
// redis-server (and, for a cluster, redis-cli) binary is not installed.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// EnvAddr is the environment variable naming the Redis (host:port) that
// the Redis tests use.
const EnvAddr = "JWKSCACHE_REDIS_ADDR"

// pingTimeout bounds the first PING of a client.
const pingTimeout = 5 * time.Second

// Addr returns the address in JWKSCACHE_REDIS_ADDR, and skips the test
// when it is empty.
func Addr(t testing.TB) string {
	t.Helper()
	addr := strings.TrimSpace(os.Getenv(EnvAddr))
	if addr == "" {
		t.Skip("skipping: " + EnvAddr + " is not set; set it to the host:port of a Redis 7 server " +
			"(e.g. 127.0.0.1:6379) to run the Redis tests")
	}
	return addr
}

// Client returns a client of the Redis named by JWKSCACHE_REDIS_ADDR,
// closed when the test ends. It skips the test when the variable is empty
// and fails it when that Redis does not answer PING.
//
// The client has ContextTimeoutEnabled set, as a jwkscache Store's client
// should: go-redis otherwise ignores context deadlines.
func Client(t testing.TB) redis.UniversalClient {
	t.Helper()
	addr := Addr(t)
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("%s=%s: Redis is unreachable: %v", EnvAddr, addr, err)
	}
	return c
}

// ClusterClient returns a cluster client of the nodes at addrs (as
// StartCluster returns them), closed when the test ends.
func ClusterClient(t testing.TB, addrs []string) *redis.ClusterClient {
	t.Helper()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
	defer cancel()
	if err := c.ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error {
		return n.Ping(ctx).Err()
	}); err != nil {
		t.Fatalf("Redis Cluster %v is unreachable: %v", addrs, err)
	}
	return c
}

// Prefix returns a key prefix of its own for the test ("jwkscachetest:",
// 16 random hex digits, ":"), so that parallel tests, and runs that share
// one Redis, never see each other's keys. When the test ends, every key
// under it is deleted from c (on every master of a cluster).
func Prefix(t testing.TB, c redis.UniversalClient) string {
	t.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	prefix := "jwkscachetest:" + hex.EncodeToString(b[:]) + ":"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := DeleteKeys(ctx, c, prefix+"*"); err != nil {
			t.Errorf("cleaning up the keys of prefix %q: %v", prefix, err)
		}
	})
	return prefix
}

// DeleteKeys deletes every key matching the SCAN pattern match, on every
// master when c is a cluster client.
func DeleteKeys(ctx context.Context, c redis.UniversalClient, match string) error {
	del := func(ctx context.Context, node redis.UniversalClient) error {
		iter := node.Scan(ctx, 0, match, 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if err := iter.Err(); err != nil {
			return err
		}
		if len(keys) == 0 {
			return nil
		}
		// One key per DEL: in a cluster, the keys of one node may still
		// be in different slots.
		pipe := node.Pipeline()
		for _, k := range keys {
			pipe.Del(ctx, k)
		}
		_, err := pipe.Exec(ctx)
		return err
	}
	if cc, ok := c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			return del(ctx, node)
		})
	}
	return del(ctx, c)
}

// CountKeys returns how many keys match the SCAN pattern match, on every
// master when c is a cluster client.
func CountKeys(ctx context.Context, c redis.UniversalClient, match string) (int, error) {
	count := func(ctx context.Context, node redis.UniversalClient) (int, error) {
		iter := node.Scan(ctx, 0, match, 1000).Iterator()
		seen := map[string]struct{}{}
		for iter.Next(ctx) {
			seen[iter.Val()] = struct{}{}
		}
		return len(seen), iter.Err()
	}
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		return count(ctx, c)
	}
	var (
		mu  sync.Mutex
		sum int
	)
	err := cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		n, err := count(ctx, node)
		mu.Lock()
		sum += n
		mu.Unlock()
		return err
	})
	return sum, err
}

package main

import (
	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/store/redisstore"
	"github.com/redis/go-redis/v9"
)

// newRedisStore returns a redisstore.Store on client, and its Close. The
// Store does not own the client: the caller closes it after.
func newRedisStore(client redis.UniversalClient, prefix string) (jwkscache.Store, func() error, error) {
	s, err := redisstore.New(client, redisstore.WithPrefix(prefix))
	if err != nil {
		return nil, nil, err
	}
	return s, s.Close, nil
}

package redisstore_test

import (
	"context"
	"fmt"
	"log"

	"github.com/redis/go-redis/v9"

	"github.com/jwkscache/jwkscache/store/redisstore"
)

func ExampleNew() {
	client := redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:                 []string{"127.0.0.1:6379"}, // several: a Redis Cluster
		ContextTimeoutEnabled: true,                       // so that context deadlines bound each call
	})
	defer client.Close()

	store, err := redisstore.New(client, redisstore.WithPrefix("myapp:jwks:"))
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close() // ends the subscriptions, not the client

	// A Manager does this itself when given the store; shown here to
	// name the calls.
	ctx := context.Background()
	if err := store.Subscribe(ctx, func(tenantID, providerID string, note []byte) {
		fmt.Printf("%s/%s refreshed: %s\n", tenantID, providerID, note)
	}); err != nil {
		log.Fatal(err)
	}
}

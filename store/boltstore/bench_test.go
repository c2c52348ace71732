package boltstore_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jwkscache/jwkscache/store/boltstore"
)

// benchRecord is a realistic snapshot record: a recorded Auth0 JWKS (two
// RSA keys with their certificates, 3,237 bytes) behind 96 bytes standing
// for the Manager's header (version, checksum, HMAC, metadata).
func benchRecord(b *testing.B) []byte {
	jwks, err := os.ReadFile("../../testdata/jwks/auth0.firezone-2022.json")
	if err != nil {
		b.Fatal(err)
	}
	return append(bytes.Repeat([]byte{0xa5}, 96), jwks...)
}

// benchStore opens a store holding snapshots of 1,000 other pairs, as a
// daemon serving many providers would.
func benchStore(b *testing.B, rec []byte) *boltstore.Store {
	s, err := boltstore.Open(filepath.Join(b.TempDir(), "bench.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	expireAt := time.Now().Add(time.Hour)
	for i := range 1000 {
		if err := s.SaveSnapshot(ctx, fmt.Sprintf("tenant%d", i%10), fmt.Sprintf("provider%d", i), rec, expireAt); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

// BenchmarkSaveSnapshot replaces one pair's snapshot, as each refresh
// does: one write transaction, fsync included.
func BenchmarkSaveSnapshot(b *testing.B) {
	rec := benchRecord(b)
	s := benchStore(b, rec)
	expireAt := time.Now().Add(time.Hour)
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	for b.Loop() {
		if err := s.SaveSnapshot(ctx, "acme", "auth0", rec, expireAt); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoadSnapshot reads one pair's snapshot, as a Manager does for
// each provider when it starts.
func BenchmarkLoadSnapshot(b *testing.B) {
	rec := benchRecord(b)
	s := benchStore(b, rec)
	if err := s.SaveSnapshot(ctx, "acme", "auth0", rec, time.Now().Add(time.Hour)); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.LoadSnapshot(ctx, "acme", "auth0"); err != nil {
			b.Fatal(err)
		}
	}
}

package redisstore_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jwkscache/jwkscache/internal/redistest"
	"github.com/jwkscache/jwkscache/store/redisstore"
)

// benchRecord is a snapshot record of about 4 KiB: Auth0's JWKS (3.2 KiB)
// and room for the Manager's envelope.
func benchRecord(b *testing.B) []byte {
	b.Helper()
	jwks, err := os.ReadFile("../../testdata/jwks/auth0.firezone-2022.json")
	if err != nil {
		b.Fatal(err)
	}
	rec := make([]byte, 0, 4096)
	rec = append(rec, jwks...)
	for len(rec) < 4096 {
		rec = append(rec, ' ')
	}
	return rec
}

func benchStore(b *testing.B) *redisstore.Store {
	b.Helper()
	c := redistest.Client(b)
	return newStore(b, c, redistest.Prefix(b, c))
}

func BenchmarkSaveSnapshot(b *testing.B) {
	s := benchStore(b)
	rec := benchRecord(b)
	ctx := context.Background()
	expireAt := time.Now().Add(time.Hour)
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	for b.Loop() {
		if err := s.SaveSnapshot(ctx, "tenant", "provider", rec, expireAt); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLoadSnapshot(b *testing.B) {
	s := benchStore(b)
	rec := benchRecord(b)
	ctx := context.Background()
	if err := s.SaveSnapshot(ctx, "tenant", "provider", rec, time.Now().Add(time.Hour)); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	for b.Loop() {
		got, err := s.LoadSnapshot(ctx, "tenant", "provider")
		if err != nil || len(got) != len(rec) {
			b.Fatal(len(got), err)
		}
	}
}

// BenchmarkCommit measures a refresh's whole write path: TryLease, then
// Commit (save, publish, release), two round trips.
func BenchmarkCommit(b *testing.B) {
	s := benchStore(b)
	rec := benchRecord(b)
	ctx := context.Background()
	expireAt := time.Now().Add(time.Hour)
	note := []byte("sha256:0123456789abcdef0123456789abcdef")
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	for b.Loop() {
		l, _, err := s.TryLease(ctx, "tenant", "provider", time.Minute)
		if err != nil || l == nil {
			b.Fatal(l, err)
		}
		if err := l.Commit(ctx, rec, expireAt, note); err != nil {
			b.Fatal(err)
		}
	}
}

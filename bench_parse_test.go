package jwkscache

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"testing"
)

// BenchmarkParseKeySet measures parsing and validating a whole document,
// the work done once per successful fetch.
//
//   - 2keys: Google's recorded set, two RSA-2048 RS256 keys.
//   - 100keys: a generated set of 100 keys, the most a document may hold:
//     75 EC P-256 ES256 keys and 25 RSA-2048 RS256 keys (5 generated RSA
//     keys, each listed 5 times under different kids, so that setup stays
//     fast; parsing costs the same).
//   - 1MiB-padded: a hostile document at the default response cap: one
//     usable key followed by {} entries up to 1 MiB (issue 6). It should
//     cost at most a few times 100keys.
func BenchmarkParseKeySet(b *testing.B) {
	var entries []any
	rsaKeys := make([]*rsa.PrivateKey, 5)
	for i := range rsaKeys {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			b.Fatal(err)
		}
		rsaKeys[i] = k
	}
	for i := range 100 {
		if i%4 == 3 {
			entries = append(entries, jwkMap(b, &rsaKeys[i%5].PublicKey, fmt.Sprintf("rsa-%02d", i), "RS256", "sig"))
			continue
		}
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		entries = append(entries, jwkMap(b, &k.PublicKey, fmt.Sprintf("ec-%02d", i), "ES256", "sig"))
	}
	docs := []struct {
		name string
		doc  []byte
		keys int
	}{
		{"2keys", readFixture(b, "google.firezone-2022.json"), 2},
		{"100keys", jwksDoc(b, entries...), 100},
		{"1MiB-padded", paddedDoc(b, entries[0], DefaultMaxResponseBytes), 1},
	}
	for _, d := range docs {
		ks, err := parseKeySet(d.doc)
		if err != nil || len(ks.keys) != d.keys {
			b.Fatalf("%s: %v, %d keys", d.name, err, len(ks.keys))
		}
		b.Run(d.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(d.doc)))
			for b.Loop() {
				if _, err := parseKeySet(d.doc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// paddedDoc is a JWKS document of exactly size bytes: the key first, then
// as many {} entries as fit, then spaces. It is the hostile document of
// issue 6: cheap to send, once 350,000 skipped-key records per parse.
func paddedDoc(tb testing.TB, key any, size int) []byte {
	tb.Helper()
	doc := jwksDoc(tb, key)
	head, tail := doc[:len(doc)-2], doc[len(doc)-2:] // tail is "]}"
	if !bytes.Equal(tail, []byte("]}")) {
		tb.Fatalf("unexpected document end %q", tail)
	}
	n := (size - len(doc)) / len(",{}")
	if n < 0 {
		tb.Fatalf("a document of %d bytes is too small for the key", size)
	}
	out := make([]byte, 0, size)
	out = append(out, head...)
	out = append(out, bytes.Repeat([]byte(",{}"), n)...)
	out = append(out, tail...)
	out = append(out, bytes.Repeat([]byte(" "), size-len(out))...)
	return out
}

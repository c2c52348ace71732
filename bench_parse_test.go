package jwkscache

import (
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

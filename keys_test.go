package jwkscache

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	jose "github.com/go-jose/go-jose/v4"
)

// readFixture returns a file of testdata/jwks.
func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "jwks", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// generatedKeys are keys made once per test binary.
type generatedKeys struct {
	p256a, p256b *ecdsa.PrivateKey
	p384, p521   *ecdsa.PrivateKey
	ed           ed25519.PublicKey
	rsa2048      *rsa.PrivateKey
	rsa1024      *rsa.PrivateKey
	x25519       *ecdh.PublicKey
}

var (
	testKeysOnce sync.Once
	testKeys     generatedKeys
)

func genKeys(t testing.TB) *generatedKeys {
	t.Helper()
	testKeysOnce.Do(func() {
		k := &testKeys
		must := func(err error) {
			if err != nil {
				panic(err)
			}
		}
		var err error
		k.p256a, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(err)
		k.p256b, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(err)
		k.p384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		must(err)
		k.p521, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
		must(err)
		k.ed, _, err = ed25519.GenerateKey(rand.Reader)
		must(err)
		k.rsa2048, err = rsa.GenerateKey(rand.Reader, 2048)
		must(err)
		k.rsa1024, err = rsa.GenerateKey(rand.Reader, 1024)
		must(err)
		xk, err := ecdh.X25519().GenerateKey(rand.Reader)
		must(err)
		k.x25519 = xk.PublicKey()
	})
	return &testKeys
}

// jwkMap marshals a public key with go-jose and returns its members, for a
// test to change before building a set.
func jwkMap(t testing.TB, pub any, kid, alg, use string) map[string]any {
	t.Helper()
	b, err := jose.JSONWebKey{Key: pub, KeyID: kid, Algorithm: alg, Use: use}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// rsaModulusJWK is an RSA JWK whose modulus is a random odd number of
// exactly bits bits. Parsing checks the size, not the primes, so this tests
// the bounds without generating 8192-bit keys.
func rsaModulusJWK(t testing.TB, bits int, kid string) map[string]any {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), uint(bits-1)))
	if err != nil {
		t.Fatal(err)
	}
	n.SetBit(n, bits-1, 1).SetBit(n, 0, 1)
	return map[string]any{
		"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
		"n": base64.RawURLEncoding.EncodeToString(n.Bytes()), "e": "AQAB",
	}
}

// jwksDoc builds a JWKS document. Each key is a map, a json.RawMessage or a
// string of raw JSON.
func jwksDoc(t testing.TB, keys ...any) []byte {
	t.Helper()
	raw := make([]json.RawMessage, len(keys))
	for i, k := range keys {
		switch k := k.(type) {
		case string:
			raw[i] = json.RawMessage(k)
		case json.RawMessage:
			raw[i] = k
		default:
			b, err := json.Marshal(k)
			if err != nil {
				t.Fatal(err)
			}
			raw[i] = b
		}
	}
	b, err := json.Marshal(map[string]any{"keys": raw})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// jwkWith returns a copy of m with the given members set (nil deletes).
func jwkWith(m map[string]any, kv ...any) map[string]any {
	out := make(map[string]any, len(m)+len(kv)/2)
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
			continue
		}
		out[kv[i].(string)] = kv[i+1]
	}
	return out
}

func usableKIDs(ks *keySet) []string {
	if ks == nil {
		return nil
	}
	out := []string{}
	for _, k := range ks.keys {
		out = append(out, k.info.KID)
	}
	return out
}

// checkKeySet asserts the invariants of a parsed set: every usable key is
// public, typed consistently with its Go key, without x5u, and find,
// lookup, has and lookupAlg agree with a linear scan of the keys.
func checkKeySet(t testing.TB, ks *keySet) {
	t.Helper()
	for i, k := range ks.keys {
		if !k.jwk.IsPublic() {
			t.Errorf("key %d (%q) is not public", i, k.info.KID)
		}
		if !k.jwk.Valid() {
			t.Errorf("key %d (%q) is not valid", i, k.info.KID)
		}
		if k.jwk.CertificatesURL != nil {
			t.Errorf("key %d (%q) kept x5u %v", i, k.info.KID, k.jwk.CertificatesURL)
		}
		if k.jwk.KeyID != k.info.KID || k.jwk.Algorithm != k.info.Alg || k.jwk.Use != k.info.Use {
			t.Errorf("key %d: info %+v disagrees with go-jose (kid %q alg %q use %q)", i, k.info, k.jwk.KeyID, k.jwk.Algorithm, k.jwk.Use)
		}
		var family algSet
		switch pk := k.jwk.Key.(type) {
		case *rsa.PublicKey:
			family = familyRSA
			if k.info.KTY != "RSA" {
				t.Errorf("key %d: RSA key typed %q", i, k.info.KTY)
			}
		case *ecdsa.PublicKey:
			family = map[string]algSet{"P-256": algES256, "P-384": algES384, "P-521": algES512}[pk.Curve.Params().Name]
			if k.info.KTY != "EC" || k.info.Crv != pk.Curve.Params().Name {
				t.Errorf("key %d: %s key typed %q %q", i, pk.Curve.Params().Name, k.info.KTY, k.info.Crv)
			}
		case ed25519.PublicKey:
			family = algEdDSA
			if k.info.KTY != "OKP" || k.info.Crv != "Ed25519" {
				t.Errorf("key %d: Ed25519 key typed %q %q", i, k.info.KTY, k.info.Crv)
			}
		default:
			t.Errorf("key %d: unexpected key type %T", i, k.jwk.Key)
		}
		if k.algs == 0 || k.algs&^family != 0 {
			t.Errorf("key %d (%q): algs %v outside its family %v", i, k.info.KID, k.algs.names(), family.names())
		}

		same := 0
		for _, o := range ks.keys {
			if o.info.KID == k.info.KID {
				same++
			}
		}
		if !ks.has(k.info.KID) {
			t.Errorf("has(%q) = false", k.info.KID)
		}
		got, err := ks.lookup(k.info.KID)
		switch {
		case same == 1 && (got != k || err != nil || ks.find(k.info.KID) != k):
			t.Errorf("kid %q names one key: lookup = %p, %v; find = %p; want %p", k.info.KID, got, err, ks.find(k.info.KID), k)
		case same > 1 && (got != nil || !errors.Is(err, ErrKeyNotFound) || ks.find(k.info.KID) != nil):
			t.Errorf("kid %q names %d keys: lookup = %p, %v; find = %p; want an ambiguity error", k.info.KID, same, got, err, ks.find(k.info.KID))
		}
		for _, alg := range k.algs.names() {
			cands := 0
			for _, o := range ks.keys {
				if (k.info.KID == "" || o.info.KID == k.info.KID) && o.algs&algBit(alg) != 0 {
					cands++
				}
			}
			got, err := ks.lookupAlg(k.info.KID, alg)
			if cands == 1 && (got != k || err != nil) {
				t.Errorf("lookupAlg(%q, %s) = %p, %v; want key %d", k.info.KID, alg, got, err, i)
			}
			if cands > 1 && (got != nil || !errors.Is(err, ErrKeyNotFound)) {
				t.Errorf("lookupAlg(%q, %s) with %d candidates = %p, %v; want an error, never the first", k.info.KID, alg, cands, got, err)
			}
		}
	}
	if (ks.byKID != nil) != (len(ks.keys) > smallSet) {
		t.Errorf("byKID built = %v for %d keys", ks.byKID != nil, len(ks.keys))
	}
	if ks.find("no such kid \x00") != nil || ks.has("no such kid \x00") {
		t.Error("an unknown kid was found")
	}
}

// TestParseKeySetFixtures runs every recorded JWKS of testdata/jwks.
func TestParseKeySetFixtures(t *testing.T) {
	tests := []struct {
		file    string
		kids    []string
		skipped []SkippedKey
		err     error // nil, ErrNoKeys or errNotJWKS
	}{
		{file: "apple.wellknown-2024.json", kids: []string{"FftONTxoEg", "T8tIJ1zSrO", "pggnQeNCOU"}},
		{file: "auth0.firezone-2022.json", kids: []string{"QjYxQ0U1QTVCMzk4RTJFNEIxMERGN0NBOUVBQTk1NDEzRTcwNTVBMg", "Lk-5NnjByFf99cg0nxMdi"}},
		{file: "entra-azure.firezone-2022.json", kids: []string{
			"nOo3ZDrODXEK1jKWhXslHR_KXEg", "l3sQ-50cCH4xBVZLHTGwnSR7680", "Mr5-AUibfBii7Nd1jBebaxboXW0",
			"jS1Xo1OWDj_52vbwGNgvQO2VzMc", "2ZQpJ3UpbjAYXYGaXEJl8lV0TOI", "-KI3Q9nNR7bRofxmeZoXqbHZGew",
			"DqUu8gf-nAgcyjP3-SuplNAXAnc", "OzZ5Dbmcso9Qzt2ModGmihg30Bo", "1LTMzakihiRla_8z2BEJVXeWMqo",
			"bW8ZcMjBCnJZS-ibX5UQDNStvx4",
		}},
		{file: "entra-common.wellknown-2024.json", kids: []string{
			"Mc7l3Iz93g7uwgNeEmmw_WYGPko", "iw1BXXcybk07kmtIeeJeIYqas18", "3PaK4EfyBNQu3CtjYsa3YmhQ5E0",
			"k8kbXTgyy1QKJ54n61Qg3OldE_E", "d-Zi0Gbus4sEaOqXgU8pMvYc3KI", "8IIDH6M8c3cXoeojKme8Jvqsr2Y",
			"iE89_EVhreMiV2-8rKE2zWBUm3M",
		}},
		{file: "google.firezone-2022.json", kids: []string{"f451345fad08101bfb345cf642a2da9267b9ebeb", "713fd68c966e29380981edc0164a2f6c06c5702a"}},
		{file: "google.wellknown-2024.json", kids: []string{"73e25f9789119c7875d58087a78ac23f5ef2eda3", "c88d809f4db943df53da7accfd47764d05ba391f"}},
		{
			file:    "keycloak.firezone-2022.json",
			kids:    []string{"nB0vgzwAcgJmjXwQZSzBMNkhoCaH4fvSwx5GC8Jq93c"},
			skipped: []SkippedKey{{KID: "Q2O_f0Z7hVL1WUxKQbChyWK_FzQK-qRZh4Kg9mxxt_I", Index: 1, Reason: SkipUse}}, // RSA-OAEP, use=enc
		},
		{
			file:    "mixed-ec-okp-rsa.firezone.json",
			kids:    []string{"QKaRe_ok1wM_wbsCvCB7lRpOnxwLjInQiPOuRV92nC8", "hGRpSjuI5dEvm1JeWD8j3HazXJORfEL6my5Xyv89qFg", "zYb7k7iekVbatGuWqznHhnVaEOkdjJBy6HzxLJ2FRLo"},
			skipped: []SkippedKey{{KID: "example@dockyard.com", Index: 3, Reason: SkipRSASize}}, // 2040 bits
		},
		{file: "okta.firezone-2022.json", kids: []string{"sljES1Bh0VMGwUpPfFunCVAzvLRdea7WluQfeV6zWTQ", "TgT2Cxt-D-sVMlgTm3On7DLee8ljXgYhdzkrPkTc4sY"}},
		{file: "onelogin.firezone-2022.json", kids: []string{"JRcO4nxs5jgc8YdN7I2hLO4V_ql1bdoiMXmcYgHm4Hs"}},
		{
			file: "paypal.wellknown-2024.json",
			kids: []string{
				"16e6c7334cf754186f877ff1f4a0bc128e1c97ca", "53ef2b2d6d6f79b1a15aa95fd2f083307ca01809",
				"7239c69c8d054c1f8cfbb11f287e8702", "f16b4522a7c8ad2358df9a57a500851114d2e7d2",
				"8bc45f1b83c642bca8de0d943a348a80", "3cec3e5e7f129111f1aa509f7cb69d6daf816c6c",
				"b8609fda7e964c9eaf9ca054facd5558", "10aba280c5c211ec9d640242ac120002",
				"0p8fuebzyxcoikyfytc3rkp5zzsefd6nceplqjfe", "zd5v2oifghewbxgpfsxavzl4jqxyxtc2wyi8qu0x",
				"qbo9erwnz9aytisgmlyvwznt74xnpk5mfpc3vjlu", "b9cf476b8eee47fb8f476b8eee67fba0",
				"4e17cf9dd7c0498985a9b26620e5924c", "2225541d274045a6b174bafe62e9eafd",
			},
			skipped: []SkippedKey{{KID: "753778214125442a472d4b6150645367", Index: 7, Reason: SkipCrv}}, // X25519
		},
		{
			file:    "rfc7517-A.1-public.json",
			kids:    []string{"2011-04-29"},
			skipped: []SkippedKey{{KID: "1", Index: 0, Reason: SkipUse}}, // EC use=enc
		},
		{
			file: "rfc7517-A.2-private.json",
			skipped: []SkippedKey{
				{KID: "1", Index: 0, Reason: SkipPrivateMaterial},
				{KID: "2011-04-29", Index: 1, Reason: SkipPrivateMaterial},
			},
			err: ErrNoKeys,
		},
		{
			file: "rfc7517-A.3-symmetric.json",
			skipped: []SkippedKey{
				{KID: "", Index: 0, Reason: SkipSymmetric},
				{KID: "HMAC key used in JWS spec Appendix A.1 example", Index: 1, Reason: SkipSymmetric},
			},
			err: ErrNoKeys,
		},
		// RFC 7520 and RFC 8037 give single JWKs, not sets.
		{file: "rfc7520-3.1-ec_public_key.json", err: errNotJWKS},
		{file: "rfc7520-3.2-ec_private_key.json", err: errNotJWKS},
		{file: "rfc7520-3.3-rsa_public_key.json", err: errNotJWKS},
		{file: "rfc7520-3.4-rsa_private_key.json", err: errNotJWKS},
		{file: "rfc7520-3.5-symmetric_key_mac_computation.json", err: errNotJWKS},
		{file: "rfc7520-3.6-symmetric_key_encryption.json", err: errNotJWKS},
		{file: "rfc8037-A.2-ed25519-public.json", err: errNotJWKS},
		{
			file: "smart-backend-es384.inferno-bdt.json",
			kids: []string{"9e4cce3ecfd2e3c76540f74264a4a893", "f29397ef446d5c1480adebbcb59910b3", "cd520211e5661dbba2256f67f6d53f97", "ed9a43ff7263878a1c79472daaf987a7"},
			skipped: []SkippedKey{
				{KID: "cd520211e5661dbba2256f67f6d53f97", Index: 3, Reason: SkipDuplicate},
				{KID: "ed9a43ff7263878a1c79472daaf987a7", Index: 5, Reason: SkipDuplicate},
				{KID: "f29397ef446d5c1480adebbcb59910b3", Index: 6, Reason: SkipDuplicate},
			},
		},
		{file: "vault.firezone-2022.json", kids: []string{"cfdb8380-cbe8-a9f6-fcd4-51abcec905ce", "5e18c268-79c7-b761-16fd-3b241fa33336"}},
		{
			file: "yahoo.wellknown-2024.json",
			kids: []string{"3466d51f7dd0c780565688c183921816c45889ad"}, // the ES256 key
			skipped: []SkippedKey{ // 1024-bit RSA
				{KID: "6ff94cdad11e7c3ac08dc9ec3c44844b87e364f7", Index: 0, Reason: SkipRSASize},
				{KID: "0", Index: 2, Reason: SkipRSASize},
				{KID: "4", Index: 3, Reason: SkipRSASize},
			},
		},
	}

	files, err := filepath.Glob(filepath.Join("testdata", "jwks", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	var covered []string
	for _, tt := range tests {
		covered = append(covered, filepath.Join("testdata", "jwks", tt.file))
	}
	slices.Sort(files)
	slices.Sort(covered)
	if !slices.Equal(files, covered) {
		t.Errorf("fixture table out of date:\n files %q\n table %q", files, covered)
	}

	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.file, ".json"), func(t *testing.T) {
			ks, err := parseKeySet(readFixture(t, tt.file))
			if tt.err == nil && err != nil || tt.err != nil && !errors.Is(err, tt.err) {
				t.Fatalf("parseKeySet error = %v, want %v", err, tt.err)
			}
			if tt.err == errNotJWKS {
				if ks != nil {
					t.Errorf("a document that is not a set returned a key set")
				}
				return
			}
			want := tt.kids
			if want == nil {
				want = []string{}
			}
			if got := usableKIDs(ks); !slices.Equal(got, want) {
				t.Errorf("usable kids = %q\nwant %q", got, want)
			}
			if !reflect.DeepEqual(ks.skipped, tt.skipped) {
				t.Errorf("skipped = %+v\nwant %+v", ks.skipped, tt.skipped)
			}
			if err != nil {
				for _, s := range tt.skipped {
					if !strings.Contains(err.Error(), s.Reason) {
						t.Errorf("error %q does not give the skip reason %s", err, s.Reason)
					}
				}
			}
			checkKeySet(t, ks)
		})
	}
}

// TestParseKeySetFixtureAlgorithms pins the algorithms each kind of real key
// may verify: a JWK's alg restricts it, no alg allows its family.
func TestParseKeySetFixtureAlgorithms(t *testing.T) {
	tests := []struct {
		file, kid string
		algs      []string
	}{
		{"google.firezone-2022.json", "f451345fad08101bfb345cf642a2da9267b9ebeb", []string{"RS256"}},
		{"entra-azure.firezone-2022.json", "nOo3ZDrODXEK1jKWhXslHR_KXEg", []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}},
		{"onelogin.firezone-2022.json", "JRcO4nxs5jgc8YdN7I2hLO4V_ql1bdoiMXmcYgHm4Hs", []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}},
		{"paypal.wellknown-2024.json", "10aba280c5c211ec9d640242ac120002", []string{"PS256"}},
		{"paypal.wellknown-2024.json", "f16b4522a7c8ad2358df9a57a500851114d2e7d2", []string{"ES256"}}, // EC without alg
		{"mixed-ec-okp-rsa.firezone.json", "hGRpSjuI5dEvm1JeWD8j3HazXJORfEL6my5Xyv89qFg", []string{"EdDSA"}},
		{"smart-backend-es384.inferno-bdt.json", "9e4cce3ecfd2e3c76540f74264a4a893", []string{"ES384"}},
		{"yahoo.wellknown-2024.json", "3466d51f7dd0c780565688c183921816c45889ad", []string{"ES256"}},
	}
	for _, tt := range tests {
		t.Run(tt.file+"/"+tt.kid, func(t *testing.T) {
			ks, err := parseKeySet(readFixture(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			k := ks.find(tt.kid)
			if k == nil {
				t.Fatalf("find(%q) = nil", tt.kid)
			}
			if got := k.algs.names(); !slices.Equal(got, tt.algs) {
				t.Errorf("algs = %v, want %v", got, tt.algs)
			}
			for _, alg := range algNames {
				got, err := ks.lookupAlg(tt.kid, alg)
				if slices.Contains(tt.algs, alg) {
					if got != k || err != nil {
						t.Errorf("lookupAlg(%s) = %v, %v; want the key", alg, got, err)
					}
				} else if got != nil || !errors.Is(err, ErrKeyNotFound) {
					t.Errorf("lookupAlg(%s) = %v, %v; want ErrKeyNotFound", alg, got, err)
				}
			}
		})
	}
}

// TestParseKeySetX5C: certificate chains parse, and a chain that does not
// match the key makes the key invalid.
func TestParseKeySetX5C(t *testing.T) {
	var doc struct{ Keys []map[string]any }
	if err := json.Unmarshal(readFixture(t, "auth0.firezone-2022.json"), &doc); err != nil {
		t.Fatal(err)
	}
	ks, err := parseKeySet(readFixture(t, "auth0.firezone-2022.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ks.keys[0].jwk.Certificates) == 0 {
		t.Error("x5c not parsed")
	}
	swapped := jwkWith(doc.Keys[0], "x5c", doc.Keys[1]["x5c"], "x5t", nil)
	ks, err = parseKeySet(jwksDoc(t, swapped, doc.Keys[1]))
	if err != nil {
		t.Fatal(err)
	}
	want := []SkippedKey{{KID: doc.Keys[0]["kid"].(string), Index: 0, Reason: SkipInvalid}}
	if !reflect.DeepEqual(ks.skipped, want) {
		t.Errorf("skipped = %+v, want %+v", ks.skipped, want)
	}
}

// TestParseKeySetGenerated covers what the fixtures lack.
func TestParseKeySetGenerated(t *testing.T) {
	k := genKeys(t)
	p256 := jwkMap(t, &k.p256a.PublicKey, "p256", "ES256", "sig")
	rsaKey := jwkMap(t, &k.rsa2048.PublicKey, "rsa", "RS256", "sig")
	xKey := map[string]any{"kty": "OKP", "crv": "X25519", "kid": "x25519", "x": base64.RawURLEncoding.EncodeToString(k.x25519.Bytes())}

	tests := []struct {
		name    string
		doc     []byte
		kids    []string
		algs    [][]string // per usable key, when set
		skipped []SkippedKey
		err     error
	}{
		{
			name: "EC P-384",
			doc:  jwksDoc(t, jwkMap(t, &k.p384.PublicKey, "p384", "ES384", "sig"), jwkMap(t, &k.p384.PublicKey, "p384-noalg", "", "")),
			kids: []string{"p384", "p384-noalg"},
			algs: [][]string{{"ES384"}, {"ES384"}},
		},
		{
			name: "EC P-521 and Ed25519",
			doc:  jwksDoc(t, jwkMap(t, &k.p521.PublicKey, "p521", "", "sig"), jwkMap(t, k.ed, "ed", "EdDSA", "sig"), jwkMap(t, k.ed, "ed-rfc9864", "Ed25519", "sig")),
			kids: []string{"p521", "ed", "ed-rfc9864"},
			algs: [][]string{{"ES512"}, {"EdDSA"}, {"EdDSA"}},
		},
		{
			name:    "RSA 1024 skipped",
			doc:     jwksDoc(t, jwkMap(t, &k.rsa1024.PublicKey, "rsa1024", "RS256", "sig"), p256),
			kids:    []string{"p256"},
			skipped: []SkippedKey{{KID: "rsa1024", Index: 0, Reason: SkipRSASize}},
		},
		{
			name: "RSA modulus bounds",
			// go-jose refuses moduli over jose.MaxRSAModulusBits (4096) before
			// our 8192 bound: those are reported as rsa_key_size too.
			doc: jwksDoc(t, rsaModulusJWK(t, 2047, "2047"), rsaModulusJWK(t, 2048, "2048"), rsaModulusJWK(t, 3072, "3072"),
				rsaModulusJWK(t, 4096, "4096"), rsaModulusJWK(t, 4097, "4097"), rsaModulusJWK(t, 8192, "8192"), rsaModulusJWK(t, 8193, "8193")),
			kids: []string{"2048", "3072", "4096"},
			skipped: []SkippedKey{
				{KID: "2047", Index: 0, Reason: SkipRSASize},
				{KID: "4097", Index: 4, Reason: SkipRSASize},
				{KID: "8192", Index: 5, Reason: SkipRSASize},
				{KID: "8193", Index: 6, Reason: SkipRSASize},
			},
		},
		{
			name: "key without kid",
			doc:  jwksDoc(t, jwkMap(t, &k.p256a.PublicKey, "", "ES256", "sig")),
			kids: []string{""},
		},
		{
			name:    "X25519 skipped",
			doc:     jwksDoc(t, xKey, p256),
			kids:    []string{"p256"},
			skipped: []SkippedKey{{KID: "x25519", Index: 0, Reason: SkipCrv}},
		},
		{
			name: "alg not of the key's type or unknown",
			doc: jwksDoc(t, jwkWith(rsaKey, "alg", "ES256"), jwkWith(p256, "alg", "ES384"), jwkWith(p256, "alg", "RS256"),
				jwkWith(rsaKey, "alg", "HS256"), jwkWith(rsaKey, "alg", "none"), jwkWith(rsaKey, "alg", "RSA-OAEP"), jwkWith(p256, "alg", "es256"), p256),
			kids: []string{"p256"},
			skipped: []SkippedKey{
				{KID: "rsa", Index: 0, Reason: SkipAlg}, {KID: "p256", Index: 1, Reason: SkipAlg},
				{KID: "p256", Index: 2, Reason: SkipAlg}, {KID: "rsa", Index: 3, Reason: SkipAlg},
				{KID: "rsa", Index: 4, Reason: SkipAlg}, {KID: "rsa", Index: 5, Reason: SkipAlg},
				{KID: "p256", Index: 6, Reason: SkipAlg},
			},
		},
		{
			name: "key_ops",
			doc: jwksDoc(t, jwkWith(p256, "kid", "enc", "key_ops", []string{"encrypt"}), jwkWith(p256, "kid", "empty", "key_ops", []string{}),
				jwkWith(p256, "kid", "sign", "key_ops", []string{"sign"}), jwkWith(p256, "kid", "verify", "key_ops", []string{"verify"}),
				jwkWith(p256, "kid", "both", "key_ops", []string{"sign", "verify"})),
			kids: []string{"verify", "both"},
			skipped: []SkippedKey{
				{KID: "enc", Index: 0, Reason: SkipKeyOps}, {KID: "empty", Index: 1, Reason: SkipKeyOps},
				{KID: "sign", Index: 2, Reason: SkipKeyOps},
			},
		},
		{
			name:    "use",
			doc:     jwksDoc(t, jwkWith(p256, "kid", "enc", "use", "enc"), jwkWith(p256, "kid", "SIG", "use", "SIG"), jwkWith(p256, "kid", "nouse", "use", nil)),
			kids:    []string{"nouse"},
			skipped: []SkippedKey{{KID: "enc", Index: 0, Reason: SkipUse}, {KID: "SIG", Index: 1, Reason: SkipUse}},
		},
		{
			name: "bad base64url",
			doc: jwksDoc(t, jwkWith(p256, "kid", "x", "x", "!!not base64!!"),
				jwkWith(rsaKey, "kid", "padded", "n", base64.URLEncoding.EncodeToString(k.rsa2048.N.Bytes())),
				jwkWith(rsaKey, "kid", "std", "n", strings.NewReplacer("-", "+", "_", "/").Replace(rsaKey["n"].(string))), p256),
			kids: []string{"p256"},
			skipped: []SkippedKey{
				{KID: "x", Index: 0, Reason: SkipEncoding}, {KID: "padded", Index: 1, Reason: SkipEncoding},
				{KID: "std", Index: 2, Reason: SkipEncoding},
			},
		},
		{
			// Issue 6: the reason comes from typed checks of the members
			// go-jose decodes, not from its error text.
			name: "encoding of every member go-jose decodes",
			doc: jwksDoc(t, jwkWith(rsaKey, "kid", "e", "e", "A*AB"), jwkWith(p256, "kid", "y", "y", "!!"),
				jwkWith(p256, "kid", "pub", "pub", "!!"), jwkWith(p256, "kid", "x5t", "x5t", "!!"),
				jwkWith(p256, "kid", "x5t#S256", "x5t#S256", "!!"), jwkWith(p256, "kid", "x5c", "x5c", []string{"!!"}),
				jwkWith(p256, "kid", "x5c-url", "x5c", []string{"-_-_"}), // x5c is standard base64
				jwkWith(rsaKey, "kid", "n-number", "n", 5), jwkWith(p256, "kid", "x5c-string", "x5c", "AAAA"),
				jwkWith(p256, "kid", "x5u-number", "x5u", 5), p256),
			kids: []string{"p256"},
			skipped: []SkippedKey{
				{KID: "e", Index: 0, Reason: SkipEncoding}, {KID: "y", Index: 1, Reason: SkipEncoding},
				{KID: "pub", Index: 2, Reason: SkipEncoding}, {KID: "x5t", Index: 3, Reason: SkipEncoding},
				{KID: "x5t#S256", Index: 4, Reason: SkipEncoding}, {KID: "x5c", Index: 5, Reason: SkipEncoding},
				{KID: "x5c-url", Index: 6, Reason: SkipEncoding}, {KID: "n-number", Index: 7, Reason: SkipEncoding},
				{KID: "x5c-string", Index: 8, Reason: SkipEncoding}, {KID: "x5u-number", Index: 9, Reason: SkipEncoding},
			},
		},
		{
			// Before issue 6 any go-jose error whose text held "base64" was
			// invalid_encoding: an x5u that is no URL (and names base64)
			// was one. Members still count as absent when null or "".
			name: "not an encoding error",
			doc: jwksDoc(t, jwkWith(p256, "kid", "x5u-base64", "x5u", "%zz-base64"), jwkWith(p256, "kid", "x5c-der", "x5c", []string{"AAAA"}),
				jwkWith(rsaKey, "kid", "e-null", "e", json.RawMessage("null")), jwkWith(rsaKey, "kid", "e-empty", "e", ""),
				jwkWith(p256, "kid", "enc-before", "use", "enc", "x", "!!"), jwkWith(p256, "kid", "x5t-null", "x5t", json.RawMessage("null"))),
			kids: []string{"x5t-null"},
			skipped: []SkippedKey{
				{KID: "x5u-base64", Index: 0, Reason: SkipInvalid}, {KID: "x5c-der", Index: 1, Reason: SkipInvalid},
				{KID: "e-null", Index: 2, Reason: SkipInvalid}, {KID: "e-empty", Index: 3, Reason: SkipInvalid},
				{KID: "enc-before", Index: 4, Reason: SkipUse},
			},
		},
		{
			name: "member types and malformed entries",
			doc:  jwksDoc(t, `{"kty":"EC","kid":5}`, `"a string"`, `12`, `[1]`, `null`, jwkWith(p256, "use", 1), p256),
			kids: []string{"p256"},
			skipped: []SkippedKey{
				{KID: "", Index: 0, Reason: SkipEncoding}, {KID: "", Index: 1, Reason: SkipEncoding},
				{KID: "", Index: 2, Reason: SkipEncoding}, {KID: "", Index: 3, Reason: SkipEncoding},
				{KID: "", Index: 4, Reason: SkipKty}, {KID: "p256", Index: 5, Reason: SkipEncoding},
			},
		},
		{
			name: "invalid keys",
			doc: jwksDoc(t, jwkWith(p256, "kid", "off-curve", "y", p256["x"]), jwkWith(p256, "kid", "no-y", "y", nil),
				jwkWith(p256, "kid", "short-x", "x", "AAAA"), jwkWith(rsaKey, "kid", "e1", "e", "AQ"),
				map[string]any{"kty": "OKP", "crv": "Ed25519", "kid": "ed-short", "x": "AAAA"}, p256),
			kids: []string{"p256"},
			skipped: []SkippedKey{
				{KID: "off-curve", Index: 0, Reason: SkipInvalid}, {KID: "no-y", Index: 1, Reason: SkipInvalid},
				{KID: "short-x", Index: 2, Reason: SkipInvalid}, {KID: "e1", Index: 3, Reason: SkipInvalid},
				{KID: "ed-short", Index: 4, Reason: SkipInvalid},
			},
		},
		{
			name: "unsupported kty and crv",
			doc: jwksDoc(t, jwkWith(p256, "kid", "akp", "kty", "AKP"), jwkWith(p256, "kid", "none", "kty", nil),
				jwkWith(p256, "kid", "k1", "crv", "secp256k1", "alg", nil), map[string]any{"kty": "OKP", "crv": "Ed448", "kid": "ed448", "x": "AAAA"}, p256),
			kids: []string{"p256"},
			skipped: []SkippedKey{
				{KID: "akp", Index: 0, Reason: SkipKty}, {KID: "none", Index: 1, Reason: SkipKty},
				{KID: "k1", Index: 2, Reason: SkipCrv}, {KID: "ed448", Index: 3, Reason: SkipCrv},
			},
		},
		{
			name: "private and symmetric material",
			doc: jwksDoc(t, jwkWith(p256, "kid", "d", "d", "AAAA"), jwkWith(p256, "kid", "d-null", "d", json.RawMessage("null")),
				jwkWith(rsaKey, "kid", "p", "p", "AAAA"), jwkWith(map[string]any{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}, "kid", "priv", "priv", "AAAA"),
				map[string]any{"kty": "oct", "kid": "oct", "k": "c2VjcmV0"}, jwkWith(rsaKey, "kid", "k", "k", "c2VjcmV0"), p256),
			kids: []string{"p256"},
			skipped: []SkippedKey{
				{KID: "d", Index: 0, Reason: SkipPrivateMaterial}, {KID: "d-null", Index: 1, Reason: SkipPrivateMaterial},
				{KID: "p", Index: 2, Reason: SkipPrivateMaterial}, {KID: "priv", Index: 3, Reason: SkipPrivateMaterial},
				{KID: "oct", Index: 4, Reason: SkipSymmetric}, {KID: "k", Index: 5, Reason: SkipSymmetric},
			},
		},
		{
			// Regression: the checks read the JWK with encoding/json, which
			// matches member names case-insensitively, while go-jose matches
			// them exactly, so {"use":"enc","USE":"sig"} was checked as a
			// signing key and kept as go-jose's use=enc key; a P-256 key with
			// "CRV":"P-521" was typed ES512.
			name: "member names are case-sensitive, as in go-jose",
			// Raw JSON: the member order matters (the last one won).
			doc: jwksDoc(t, `{"use":"enc","USE":"sig","kty":"EC","kid":"enc-USE-sig","crv":"P-256","x":"`+p256["x"].(string)+`","y":"`+p256["y"].(string)+`"}`,
				`{"crv":"P-256","CRV":"P-521","kty":"EC","kid":"CRV","x":"`+p256["x"].(string)+`","y":"`+p256["y"].(string)+`"}`,
				`{"alg":"ES256","ALG":"ES512","kty":"EC","kid":"ALG","crv":"P-256","x":"`+p256["x"].(string)+`","y":"`+p256["y"].(string)+`"}`,
				// An upper-case "D" is no JWK member (RFC 7517 names are
				// case-sensitive): go-jose reads a public key, and so do we.
				jwkWith(p256, "kid", "D", "D", "AAAA")),
			kids:    []string{"CRV", "ALG", "D"},
			algs:    [][]string{{"ES256"}, {"ES256"}, {"ES256"}},
			skipped: []SkippedKey{{KID: "enc-USE-sig", Index: 0, Reason: SkipUse}},
		},
		{
			name: "duplicate member names refused",
			doc: jwksDoc(t, `{"kty":"EC","kid":"dupe","crv":"P-256","crv":"P-384","x":"`+p256["x"].(string)+`","y":"`+p256["y"].(string)+`"}`,
				p256),
			kids:    []string{"p256"},
			skipped: []SkippedKey{{KID: "dupe", Index: 0, Reason: SkipEncoding}},
		},
		{name: "empty keys array", doc: []byte(`{"keys":[]}`), err: ErrNoKeys},
		{name: "keys null", doc: []byte(`{"keys":null}`), err: errNotJWKS},
		{name: "keys not an array", doc: []byte(`{"keys":{}}`), err: errNotJWKS},
		{name: "no keys member", doc: []byte(`{"kty":"EC"}`), err: errNotJWKS},
		{name: "array", doc: []byte(`[]`), err: errNotJWKS},
		{name: "JSON null", doc: []byte(`null`), err: errNotJWKS},
		{name: "empty body", doc: []byte(``), err: errNotJWKS},
		{name: "truncated", doc: jwksDoc(t, p256)[:40], err: errNotJWKS},
		{name: "HTML", doc: []byte("<!DOCTYPE html><html><body>Sign in</body></html>"), err: errHTML},
		{name: "HTML after whitespace and BOM", doc: []byte("\ufeff \r\n\t<html>"), err: errHTML},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ks, err := parseKeySet(tt.doc)
			if tt.err == nil && err != nil || tt.err != nil && !errors.Is(err, tt.err) {
				t.Fatalf("parseKeySet error = %v, want %v", err, tt.err)
			}
			if tt.err != nil && tt.err != ErrNoKeys {
				if ks != nil {
					t.Error("got a key set with the error")
				}
				return
			}
			want := tt.kids
			if want == nil {
				want = []string{}
			}
			if got := usableKIDs(ks); !slices.Equal(got, want) {
				t.Errorf("usable kids = %q, want %q", got, want)
			}
			if !reflect.DeepEqual(ks.skipped, tt.skipped) {
				t.Errorf("skipped = %+v\nwant %+v", ks.skipped, tt.skipped)
			}
			for i, algs := range tt.algs {
				if i >= len(ks.keys) {
					break
				}
				if got := ks.keys[i].algs.names(); !slices.Equal(got, algs) {
					t.Errorf("key %d algs = %v, want %v", i, got, algs)
				}
			}
			checkKeySet(t, ks)
		})
	}
}

func TestKeyWithoutKID(t *testing.T) {
	k := genKeys(t)
	ks, err := parseKeySet(jwksDoc(t, jwkMap(t, &k.p256a.PublicKey, "", "ES256", "")))
	if err != nil {
		t.Fatal(err)
	}
	only := ks.keys[0]
	if ks.find("") != only {
		t.Error(`find("") did not return the key without kid`)
	}
	if got, err := ks.lookup(""); got != only || err != nil {
		t.Errorf(`lookup("") = %v, %v`, got, err)
	}
	if got, err := ks.lookupAlg("", "ES256"); got != only || err != nil {
		t.Errorf(`lookupAlg("", ES256) = %v, %v`, got, err)
	}
	if _, err := ks.lookupAlg("", "ES384"); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf(`lookupAlg("", ES384) error = %v`, err)
	}
	if _, err := ks.lookup("some-kid"); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("a token kid matched a key without kid: %v", err)
	}

	// Among several keys, a token without kid finds the key without kid by
	// lookup, but by algorithm it is ambiguous when another key may verify
	// the same algorithm (OpenID Connect Core 1.0, section 10.1).
	ks, err = parseKeySet(jwksDoc(t, jwkMap(t, &k.p256a.PublicKey, "", "ES256", ""), jwkMap(t, &k.p256b.PublicKey, "b", "ES256", ""),
		jwkMap(t, &k.rsa2048.PublicKey, "r", "RS256", "")))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ks.lookup(""); got != ks.keys[0] || err != nil {
		t.Errorf(`lookup("") = %v, %v; want the key without kid`, got, err)
	}
	if got, err := ks.lookupAlg("", "ES256"); got != nil || !errors.Is(err, ErrKeyNotFound) {
		t.Errorf(`lookupAlg("", ES256) with two ES256 keys = %v, %v; want an error`, got, err)
	}
	if got, err := ks.lookupAlg("", "RS256"); got != ks.keys[2] || err != nil {
		t.Errorf(`lookupAlg("", RS256) = %v, %v; want the only RSA key`, got, err)
	}
	// A set of one key with a kid serves a token without kid.
	ks, err = parseKeySet(jwksDoc(t, jwkMap(t, &k.p256a.PublicKey, "a", "ES256", "")))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ks.lookup(""); got != ks.keys[0] || err != nil {
		t.Errorf(`lookup("") on a one-key set = %v, %v`, got, err)
	}
}

func TestDuplicateKIDs(t *testing.T) {
	k := genKeys(t)
	t.Run("different families", func(t *testing.T) {
		ks, err := parseKeySet(jwksDoc(t, jwkMap(t, &k.rsa2048.PublicKey, "shared", "RS256", "sig"), jwkMap(t, &k.p256a.PublicKey, "shared", "ES256", "sig")))
		if err != nil {
			t.Fatal(err)
		}
		if len(ks.keys) != 2 || len(ks.skipped) != 0 {
			t.Fatalf("keys %d, skipped %+v; want both kept", len(ks.keys), ks.skipped)
		}
		if got, err := ks.lookupAlg("shared", "RS256"); err != nil || got.info.KTY != "RSA" {
			t.Errorf("lookupAlg(RS256) = %v, %v", got, err)
		}
		if got, err := ks.lookupAlg("shared", "ES256"); err != nil || got.info.KTY != "EC" {
			t.Errorf("lookupAlg(ES256) = %v, %v", got, err)
		}
		if _, err := ks.lookupAlg("shared", "PS256"); !errors.Is(err, ErrKeyNotFound) || !strings.Contains(err.Error(), "may not verify") {
			t.Errorf("lookupAlg(PS256) error = %v", err)
		}
		if got, err := ks.lookup("shared"); got != nil || !errors.Is(err, ErrKeyNotFound) || !strings.Contains(err.Error(), "2 keys") {
			t.Errorf("lookup = %v, %v; want an ambiguity error", got, err)
		}
		if ks.find("shared") != nil {
			t.Error("find returned one of two keys")
		}
		checkKeySet(t, ks)
	})
	t.Run("same family, different material", func(t *testing.T) {
		ks, err := parseKeySet(jwksDoc(t, jwkMap(t, &k.p256a.PublicKey, "dup", "ES256", "sig"), jwkMap(t, &k.p256b.PublicKey, "dup", "ES256", "sig")))
		if err != nil {
			t.Fatal(err)
		}
		if len(ks.keys) != 2 {
			t.Fatalf("kept %d keys, want 2 (never merged: the material differs)", len(ks.keys))
		}
		if got, err := ks.lookupAlg("dup", "ES256"); got != nil || !errors.Is(err, ErrKeyNotFound) {
			t.Errorf("lookupAlg = %v, %v; want a refusal, never the first key", got, err)
		}
		if got, err := ks.lookup("dup"); got != nil || !errors.Is(err, ErrKeyNotFound) {
			t.Errorf("lookup = %v, %v", got, err)
		}
		checkKeySet(t, ks)
	})
	t.Run("same material, different alg", func(t *testing.T) {
		ks, err := parseKeySet(jwksDoc(t, jwkMap(t, &k.rsa2048.PublicKey, "r", "RS256", "sig"), jwkMap(t, &k.rsa2048.PublicKey, "r", "PS256", "sig")))
		if err != nil {
			t.Fatal(err)
		}
		if len(ks.keys) != 2 {
			t.Fatalf("kept %d keys, want 2", len(ks.keys))
		}
		if got, _ := ks.lookupAlg("r", "PS256"); got != ks.keys[1] {
			t.Error("lookupAlg(PS256) did not pick the PS256 key")
		}
		checkKeySet(t, ks)
	})
	t.Run("identical entries merged", func(t *testing.T) {
		p := jwkMap(t, &k.p256a.PublicKey, "same", "ES256", "sig")
		ks, err := parseKeySet(jwksDoc(t, p, p, jwkWith(p, "x5u", "https://attacker.example/x")))
		if err != nil {
			t.Fatal(err)
		}
		want := []SkippedKey{{KID: "same", Index: 1, Reason: SkipDuplicate}, {KID: "same", Index: 2, Reason: SkipDuplicate}}
		if len(ks.keys) != 1 || !reflect.DeepEqual(ks.skipped, want) {
			t.Errorf("keys %d, skipped %+v; want 1 key and %+v", len(ks.keys), ks.skipped, want)
		}
		if got, err := ks.lookupAlg("same", "ES256"); err != nil || got != ks.keys[0] {
			t.Errorf("lookupAlg = %v, %v", got, err)
		}
	})
}

func TestAlgRestriction(t *testing.T) {
	k := genKeys(t)
	ks, err := parseKeySet(jwksDoc(t, jwkMap(t, &k.rsa2048.PublicKey, "rs256", "RS256", "sig"), jwkMap(t, &k.rsa2048.PublicKey, "any-rsa", "", "sig")))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ks.lookupAlg("rs256", "RS256"); err != nil || got.info.KID != "rs256" {
		t.Errorf("lookupAlg(rs256, RS256) = %v, %v", got, err)
	}
	for _, alg := range []string{"PS256", "RS384", "RS512", "PS512", "ES256", "EdDSA"} {
		if got, err := ks.lookupAlg("rs256", alg); got != nil || !errors.Is(err, ErrKeyNotFound) {
			t.Errorf("an RS256 key verifies %s: %v, %v", alg, got, err)
		}
	}
	for _, alg := range []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"} {
		if got, err := ks.lookupAlg("any-rsa", alg); err != nil || got.info.KID != "any-rsa" {
			t.Errorf("an RSA key without alg refuses %s: %v, %v", alg, got, err)
		}
	}
	for _, alg := range []string{"ES256", "ES384", "ES512", "EdDSA", "HS256", "none", "", "rs256"} {
		if got, err := ks.lookupAlg("any-rsa", alg); got != nil || !errors.Is(err, ErrKeyNotFound) {
			t.Errorf("an RSA key verifies %q: %v, %v", alg, got, err)
		}
	}
	if _, err := ks.lookupAlg("missing", "RS256"); err != ErrKeyNotFound {
		t.Errorf("lookupAlg(missing) error = %v, want ErrKeyNotFound itself", err)
	}
	if _, err := ks.lookup("missing"); err != ErrKeyNotFound {
		t.Errorf("lookup(missing) error = %v, want ErrKeyNotFound itself", err)
	}
}

// TestX5UNeverKept: the cache never follows x5u, and drops it so nobody
// downstream does.
func TestX5UNeverKept(t *testing.T) {
	k := genKeys(t)
	ks, err := parseKeySet(jwksDoc(t, jwkWith(jwkMap(t, &k.p256a.PublicKey, "a", "ES256", "sig"), "x5u", "https://attacker.example/cert.pem")))
	if err != nil {
		t.Fatal(err)
	}
	if ks.keys[0].jwk.CertificatesURL != nil {
		t.Errorf("x5u kept: %v", ks.keys[0].jwk.CertificatesURL)
	}
	b, err := ks.keys[0].jwk.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("x5u")) || bytes.Contains(b, []byte("attacker")) {
		t.Errorf("served JWK carries x5u: %s", b)
	}
}

func TestTooManyKeys(t *testing.T) {
	k := genKeys(t)
	var entries []any
	for i := range 105 {
		entries = append(entries, jwkMap(t, &k.p256a.PublicKey, fmt.Sprintf("k%03d", i), "ES256", "sig"))
	}
	ks, err := parseKeySet(jwksDoc(t, entries...))
	if err != nil {
		t.Fatal(err)
	}
	if len(ks.keys) != maxKeysPerSet {
		t.Errorf("%d usable keys, want %d", len(ks.keys), maxKeysPerSet)
	}
	var want []SkippedKey
	for i := 100; i < 105; i++ {
		want = append(want, SkippedKey{KID: fmt.Sprintf("k%03d", i), Index: i, Reason: SkipTooManyKeys})
	}
	if !reflect.DeepEqual(ks.skipped, want) {
		t.Errorf("skipped = %+v\nwant %+v", ks.skipped, want)
	}
	if ks.byKID == nil {
		t.Error("no kid index for 100 keys")
	}
	if ks.find("k099") == nil || ks.find("k100") != nil {
		t.Error("find: k099 must be found, k100 not")
	}
	checkKeySet(t, ks)
}

// TestSkipSummary: the ErrNoKeys error names the first skip reasons and
// counts the rest.
func TestSkipSummary(t *testing.T) {
	var entries []any
	for i := range 7 {
		entries = append(entries, map[string]any{"kty": "oct", "kid": fmt.Sprint(i), "k": "c2VjcmV0"})
	}
	_, err := parseKeySet(jwksDoc(t, entries...))
	if !errors.Is(err, ErrNoKeys) {
		t.Fatalf("error = %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, `"4"=symmetric_key`) || strings.Contains(msg, `"5"=`) || !strings.Contains(msg, "and 2 more") {
		t.Errorf("error = %q", msg)
	}
}

// TestFindAllocs: find is the read path and must not allocate, for small
// and indexed sets.
func TestFindAllocs(t *testing.T) {
	for _, file := range []string{"google.firezone-2022.json", "entra-azure.firezone-2022.json"} {
		ks, err := parseKeySet(readFixture(t, file))
		if err != nil {
			t.Fatal(err)
		}
		kid := ks.keys[len(ks.keys)-1].info.KID
		if n := testing.AllocsPerRun(100, func() {
			if ks.find(kid) == nil {
				t.Fatal("not found")
			}
		}); n != 0 {
			t.Errorf("%s: find allocates %v times", file, n)
		}
	}
}

// TestRSAKeysRefusedByGo (issue 6): RSA keys that crypto/rsa refuses when
// verifying are skipped as invalid_key at parse, so that they are never
// handed out. Each case also checks that premise: verifying a (garbage)
// signature fails with rsa.ErrVerification for a kept key, and with
// another error, the key's refusal, for a skipped one.
func TestRSAKeysRefusedByGo(t *testing.T) {
	base := rsaModulusJWK(t, 2048, "")
	n, err := base64.RawURLEncoding.DecodeString(base["n"].(string))
	if err != nil {
		t.Fatal(err)
	}
	even := new(big.Int).SetBytes(n)
	even.SetBit(even, 0, 0)
	exp := func(e *big.Int) string { return base64.RawURLEncoding.EncodeToString(e.Bytes()) }
	pow2 := func(k uint, plus int64) *big.Int {
		return new(big.Int).Add(new(big.Int).Lsh(big.NewInt(1), k), big.NewInt(plus))
	}
	tests := []struct {
		name string
		jwk  map[string]any
		want string // skip reason, "" when kept
	}{
		{"e=65537", base, ""},
		{"e=3", jwkWith(base, "e", exp(big.NewInt(3))), ""},
		{"e=2^31-1", jwkWith(base, "e", exp(pow2(31, -1))), ""},
		{"even modulus", jwkWith(base, "n", base64.RawURLEncoding.EncodeToString(even.Bytes())), SkipInvalid},
		{"e=1", jwkWith(base, "e", exp(big.NewInt(1))), SkipInvalid}, // go-jose refuses it too
		{"e=2", jwkWith(base, "e", exp(big.NewInt(2))), SkipInvalid},
		{"e=4", jwkWith(base, "e", exp(big.NewInt(4))), SkipInvalid},
		{"e=65536", jwkWith(base, "e", exp(big.NewInt(65536))), SkipInvalid},
		{"e=2^31+1", jwkWith(base, "e", exp(pow2(31, 1))), SkipInvalid},
		{"e=2^32+1", jwkWith(base, "e", exp(pow2(32, 1))), SkipInvalid},
		{"e=2^62+1", jwkWith(base, "e", exp(pow2(62, 1))), SkipInvalid},
		{"e=2^63+1", jwkWith(base, "e", exp(pow2(63, 1))), SkipInvalid}, // over int64: go-jose refuses it
		{"e=2^64+1", jwkWith(base, "e", exp(pow2(64, 1))), SkipInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := genKeys(t)
			ks, err := parseKeySet(jwksDoc(t, jwkWith(tt.jwk, "kid", tt.name), jwkMap(t, &k.p256a.PublicKey, "ec", "ES256", "sig")))
			if err != nil {
				t.Fatal(err)
			}
			var want []SkippedKey
			if tt.want != "" {
				want = []SkippedKey{{KID: tt.name, Index: 0, Reason: tt.want}}
			}
			if !reflect.DeepEqual(ks.skipped, want) {
				t.Errorf("skipped = %+v, want %+v", ks.skipped, want)
			}
			if got, _ := ks.lookupAlg(tt.name, "RS256"); (got != nil) != (tt.want == "") {
				t.Errorf("lookupAlg(%q, RS256) = %v", tt.name, got)
			}
			checkKeySet(t, ks)

			// The premise, for the exponents Go's int holds.
			e := new(big.Int).SetBytes(mustB64(t, tt.jwk["e"].(string)))
			if !e.IsInt64() {
				return
			}
			pub := &rsa.PublicKey{N: new(big.Int).SetBytes(mustB64(t, tt.jwk["n"].(string))), E: int(e.Int64())}
			digest := sha256.Sum256([]byte("payload"))
			err = rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], make([]byte, pub.Size()))
			if refused := !errors.Is(err, rsa.ErrVerification); refused != (tt.want != "") {
				t.Errorf("crypto/rsa verifying with the key: %v; the parse skip reason is %q", err, tt.want)
			}
		})
	}
}

func mustB64(t testing.TB, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hundredKeysDoc is a document of maxKeysPerSet usable keys, 75 EC P-256
// and 25 RSA-2048 ones, under distinct kids.
func hundredKeysDoc(t testing.TB) []byte {
	t.Helper()
	k := genKeys(t)
	entries := make([]any, 0, maxKeysPerSet)
	for i := range maxKeysPerSet {
		switch {
		case i%4 == 3:
			entries = append(entries, jwkMap(t, &k.rsa2048.PublicKey, fmt.Sprintf("rsa-%02d", i), "RS256", "sig"))
		case i%2 == 0:
			entries = append(entries, jwkMap(t, &k.p256a.PublicKey, fmt.Sprintf("ec-%02d", i), "ES256", "sig"))
		default:
			entries = append(entries, jwkMap(t, &k.p256b.PublicKey, fmt.Sprintf("ec-%02d", i), "ES256", "sig"))
		}
	}
	return jwksDoc(t, entries...)
}

// allocatedBytes returns the fewest bytes f allocated in one of three runs
// (the fewest, so that an allocation elsewhere in the process does not
// count).
func allocatedBytes(f func()) uint64 {
	least := uint64(math.MaxUint64)
	var before, after runtime.MemStats
	for range 3 {
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		least = min(least, after.TotalAlloc-before.TotalAlloc)
	}
	return least
}

// TestParseKeySetBoundedWork (issue 6): a document of one key followed by
// {} entries up to the 1 MiB response cap (about 350,000 entries) allocates
// no more than a few times a document of 100 usable keys. The entries past
// maxKeysPerSet are scanned, not decoded, and only the first
// maxSkippedKeys skipped keys are recorded; the rest are counted. Before,
// it kept 350,000 records, 172 MB allocated per parse.
func TestParseKeySetBoundedWork(t *testing.T) {
	k := genKeys(t)
	padded := paddedDoc(t, jwkMap(t, &k.p256a.PublicKey, "good", "ES256", "sig"), DefaultMaxResponseBytes)
	hundred := hundredKeysDoc(t)
	entries := 1 + bytes.Count(padded, []byte("{}"))

	ks, err := parseKeySet(padded)
	if err != nil {
		t.Fatal(err)
	}
	if got := usableKIDs(ks); !slices.Equal(got, []string{"good"}) {
		t.Errorf("usable kids = %q", got)
	}
	var want []SkippedKey
	for i := 1; i < maxKeysPerSet; i++ {
		want = append(want, SkippedKey{KID: "", Index: i, Reason: SkipKty})
	}
	want = append(want, SkippedKey{KID: "", Index: maxKeysPerSet, Reason: SkipTooManyKeys})
	if !reflect.DeepEqual(ks.skipped, want) {
		t.Errorf("%d records, first %+v, last %+v; want %d, the last at index %d", len(ks.skipped), ks.skipped[0], ks.skipped[len(ks.skipped)-1], len(want), maxKeysPerSet)
	}
	if want := entries - 1 - maxSkippedKeys; ks.skippedMore != want {
		t.Errorf("skippedMore = %d, want %d (%d entries)", ks.skippedMore, want, entries)
	}

	parse := func(doc []byte) func() {
		return func() {
			if _, err := parseKeySet(doc); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A bound in bytes rather than time: allocation is deterministic, and
	// a per-entry cost of even 8 bytes would exceed it.
	const factor = 4
	paddedBytes, hundredBytes := allocatedBytes(parse(padded)), allocatedBytes(parse(hundred))
	paddedAllocs, hundredAllocs := testing.AllocsPerRun(3, parse(padded)), testing.AllocsPerRun(3, parse(hundred))
	t.Logf("1 MiB padded: %d B, %.0f allocs; 100 keys: %d B, %.0f allocs", paddedBytes, paddedAllocs, hundredBytes, hundredAllocs)
	if paddedBytes > factor*hundredBytes {
		t.Errorf("the 1 MiB padded document allocates %d bytes, over %d times the %d of 100 keys", paddedBytes, factor, hundredBytes)
	}
	if paddedAllocs > factor*hundredAllocs {
		t.Errorf("the 1 MiB padded document allocates %.0f times, over %d times the %.0f of 100 keys", paddedAllocs, factor, hundredAllocs)
	}
}

// TestSkippedTextBounded (issue 6): kids and error texts taken from a
// document are bounded. Before, a kid of invalid UTF-8 was kept whole in
// its record, each bad byte tripled into U+FFFD, and quoted in the error.
func TestSkippedTextBounded(t *testing.T) {
	hugeKIDs := []string{
		strings.Repeat("\xff", 200<<10),       // invalid UTF-8
		strings.Repeat("é", 100<<10),          // long, valid
		"\xff\xfe" + strings.Repeat("a", 100), // cut after the replaced bytes
		strings.Repeat(`\u0001`, 100),         // quoted as \x01, four bytes each
	}
	var entries []string
	for i := range 300 {
		kid := fmt.Sprintf("k%d", i)
		if i < len(hugeKIDs) {
			kid = hugeKIDs[i]
		}
		// Raw JSON: encoding/json would replace the invalid bytes.
		entries = append(entries, `{"kty":"oct","k":"c2VjcmV0","kid":"`+kid+`"}`)
	}
	doc := []byte(`{"keys":[` + strings.Join(entries, ",") + `]}`)

	ks, err := parseKeySet(doc)
	if !errors.Is(err, ErrNoKeys) {
		t.Fatalf("error = %.200v, want ErrNoKeys", err)
	}
	if len(ks.skipped) != maxSkippedKeys || ks.skippedMore != 300-maxSkippedKeys {
		t.Errorf("%d records and %d more, want %d and %d", len(ks.skipped), ks.skippedMore, maxSkippedKeys, 300-maxSkippedKeys)
	}
	for i, s := range ks.skipped {
		if !utf8.ValidString(s.KID) || len(s.KID) > maxShownID+len("…[9999999 more bytes]") {
			t.Errorf("record %d: kid of %d bytes, valid UTF-8 %v: %.100q", i, len(s.KID), utf8.ValidString(s.KID), s.KID)
		}
	}
	for i, kid := range hugeKIDs {
		// What encoding/json reads, then cut visibly.
		var dec string
		if err := json.Unmarshal([]byte(`"`+kid+`"`), &dec); err != nil {
			t.Fatal(err)
		}
		if got := ks.skipped[i].KID; got != capTo(dec, maxShownID) {
			t.Errorf("record %d: kid %q, want %q", i, got, capTo(dec, maxShownID))
		}
	}
	if !strings.HasSuffix(ks.skipped[0].KID, "more bytes]") {
		t.Errorf("the cut is not visible: %q", ks.skipped[0].KID)
	}
	msg := err.Error()
	if !utf8.ValidString(msg) || len(msg) > 2*maxErrorText {
		t.Errorf("error text of %d bytes, valid UTF-8 %v: %.300q", len(msg), utf8.ValidString(msg), msg)
	}
	if !strings.Contains(msg, "300 keys in the document") || !strings.Contains(msg, "=symmetric_key") || !strings.Contains(msg, "and 295 more") {
		t.Errorf("error = %q", msg)
	}
}

// splitKeys returns the entries of doc's "keys" array as parseKeySet
// finds them, and false when it finds no such array.
func splitKeys(doc []byte) ([][]byte, bool) {
	if !json.Valid(doc) {
		return nil, false
	}
	array := keysArray(doc)
	if array == nil {
		return nil, false
	}
	out := [][]byte{}
	for rest := array[1:]; ; {
		var e []byte
		if e, rest = nextElement(rest); e == nil {
			return out, true
		}
		out = append(out, e)
	}
}

// TestKeysArrayAsEncodingJSON: the scan finds the "keys" member and its
// entries exactly as encoding/json did before issue 6 (a struct field of
// type *[]json.RawMessage): case-insensitive names after unquoting, the
// last member winning, and every kind of entry.
func TestKeysArrayAsEncodingJSON(t *testing.T) {
	docs := []string{
		`{"keys":[]}`, `{"keys":[1]}`, `{"KEYS":[1]}`, `{"Keys":[1]}`, `{"\u006beys":[1]}`, `{"ke\u0079s":[1]}`,
		`{"\u212aeys":[1]}`, "{\"\u212aeys\":[1]}", "{\"key\u017f\":[1]}", `{"keys ":[1]}`, `{"key":[1]}`, `{"kéys":[1]}`,
		`{"keys":[1],"keys":[2,3]}`, `{"keys":[1],"KEYS":null}`, `{"keys":null,"keys":[1]}`, `{"keys":5,"keys":[1]}`,
		`{"keys":[1],"keys":{}}`, `{"keys":"[1]"}`, `{"keys":null}`, `{"keys":true}`, `{"keys":{"keys":[1]}}`,
		`{"a":{"keys":[9]},"b":["keys",[1]],"keys":[{"x":"]}\"[{,","y":[[],{}]},[[]],"\\",-1.5e3,true,false,null,{},"",0]}`,
		" \r\n\t{ \"a\" : 1 , \"keys\" : [ 1 , { } , \"a\" , [ ] ] , \"b\" : [ ] } \n",
		`{"keys":["\u0022]", "\\\"", "\\\\", "]]"]}`,
		"{\"keys\":[\"\xff\xfe\",{\"kid\":\"\xff\"}]}",
		`{}`, `[]`, `[{"keys":[1]}]`, `null`, `"keys"`, `1`, `{"a":1}`, ``, `{"keys":[1]`, `{"keys":[1,]}`, "\ufeff{\"keys\":[]}",
	}
	for _, doc := range docs {
		var ref struct {
			Keys *[]json.RawMessage `json:"keys"`
		}
		refOK := json.Unmarshal([]byte(doc), &ref) == nil && ref.Keys != nil
		got, ok := splitKeys([]byte(doc))
		if ok != refOK {
			t.Errorf("%q: found keys %v, encoding/json %v", doc, ok, refOK)
			continue
		}
		if !ok {
			if ks, err := parseKeySet([]byte(doc)); ks != nil || !errors.Is(err, errNotJWKS) {
				t.Errorf("%q: parseKeySet = %v, %v; want errNotJWKS", doc, ks, err)
			}
			continue
		}
		var want [][]byte
		for _, e := range *ref.Keys {
			want = append(want, e)
		}
		if !slices.EqualFunc(got, want, bytes.Equal) {
			t.Errorf("%q: entries %q, encoding/json %q", doc, got, want)
		}
	}
}

package jwkscache

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

// Tests of the stored record format (record.go) and of the age checks of a
// restored snapshot (restoredSnapshot.checkTimes). Every refusal is checked
// for its reason, since the reason is what ProviderStatus.StoreRefused and
// jwks_cache_store_refused_total report.
//
// The fuzzers FuzzStoredRecord and FuzzStoredRegistration feed arbitrary
// bytes to decodeSnapshot and decodeRegistration twice: as a stored record,
// which exercises the framing (a fuzzer cannot forge a SHA-256 checksum or
// an HMAC), and sealed as the payload of a well-formed record, which is
// what a buggy writer or the holder of a store key could produce, so that
// the checks after the checksum and MAC are fuzzed too:
//
//	go test -run='^$' -fuzz='^FuzzStoredRecord$' -fuzztime=2m .
//	go test -run='^$' -fuzz='^FuzzStoredRegistration$' -fuzztime=2m .

// Store keys of the tests (Options.StoreKeys entries are at least 32 bytes).
var (
	recKeyA = bytes.Repeat([]byte("A"), 32)
	recKeyB = bytes.Repeat([]byte("B"), 32)
)

// Times of the test snapshots: nanoseconds set, so that a round trip that
// loses precision shows.
var (
	recFetched = time.Unix(1_700_000_000, 123_456_789)
	recExpires = recFetched.Add(5*time.Minute + 7)
	recStale   = recExpires.Add(time.Hour + 11)
)

const (
	recJWKSURL = "https://idp.example/oauth2/v1/keys"
	recIssuer  = "https://issuer.example"
	recDiscURL = "https://keys.issuer.example/jwks"
)

// recFixture is a registration, the URL policy its Manager would apply,
// and what a snapshot of it records.
type recFixture struct {
	key        providerKey
	reg        Registration
	pol        urlPolicy
	url        string // the snapshot's URL
	discovered bool
}

// recJWKSFixture is a provider registered with a JWKS URL.
func recJWKSFixture() recFixture {
	reg := Registration{TenantID: "t1", ProviderID: "p1", JWKSURL: recJWKSURL}.WithDefaults()
	return recFixture{key: reg.key(), reg: reg, pol: urlPolicy{}, url: recJWKSURL}
}

// recDiscoveryFixture is a provider registered with an issuer only, whose
// JWKS URL comes from discovery.
func recDiscoveryFixture() recFixture {
	reg := Registration{TenantID: "t1", ProviderID: "p1", Issuer: recIssuer, AllowedDomains: []string{"issuer.example"}}.WithDefaults()
	return recFixture{key: reg.key(), reg: reg, pol: urlPolicy{regDomains: reg.AllowedDomains}, url: recDiscURL, discovered: true}
}

// recBody is a JWKS of three keys, and their kids in document order.
func recBody(t *testing.T) ([]byte, []string) {
	t.Helper()
	keys := []*testidp.Key{testidp.NewKey("RS256", "rsa-1"), testidp.NewKey("ES256", "ec-1"), testidp.NewKey("EdDSA", "ed-1")}
	var pubs []any
	var kids []string
	for _, k := range keys {
		pubs = append(pubs, k.Public)
		kids = append(kids, k.KID)
	}
	return mtJWKS(t, pubs...), kids
}

// recSnapshot is a snapshot of body as fx's provider would hold it.
func recSnapshot(t testing.TB, fx recFixture, body []byte) *snapshot {
	t.Helper()
	ks, err := parseKeySet(body)
	if err != nil {
		t.Fatalf("test JWKS does not parse: %v", err)
	}
	doc := &document{raw: body, hash: sha256.Sum256(body), keys: ks}
	return &snapshot{
		keys: ks, doc: doc, url: fx.url, issuer: fx.reg.Issuer,
		validators: validators{ETag: `W/"etag-1"`, LastModified: "Tue, 14 Nov 2023 22:13:20 GMT"},
		fetchedAt:  recFetched, expiresAt: recExpires, staleUntil: recStale,
		ttlSource: "max-age",
	}
}

// recEncode is the record of body for fx's provider.
func recEncode(t *testing.T, fx recFixture, body []byte, keys macKeys) []byte {
	t.Helper()
	return encodeSnapshot(fx.key, recSnapshot(t, fx, body), fx.discovered, keys)
}

// recReseal opens a snapshot record, lets edit change its payload, and
// seals it again with keys: a well-formed record with a valid checksum and
// MAC, whatever it says.
func recReseal(t *testing.T, b []byte, keys macKeys, edit func(*snapshotRecord)) []byte {
	t.Helper()
	payload, err := openRecord(kindSnapshot, b, math.MaxInt64, keys)
	if err != nil {
		t.Fatalf("reseal: %v", err)
	}
	var rec snapshotRecord
	if err := json.Unmarshal(payload, &rec); err != nil {
		t.Fatalf("reseal: %v", err)
	}
	edit(&rec)
	p, err := json.Marshal(&rec)
	if err != nil {
		t.Fatal(err)
	}
	return sealRecord(kindSnapshot, p, keys)
}

// wantRefused fails unless err is a refused record of reason want, or, for
// want "", unless err is nil. The error text must be bounded and valid
// UTF-8: it reaches logs and ProviderStatus.
func wantRefused(t testing.TB, err error, want string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("accepted; want refused (%s)", want)
	}
	reason, ok := isRecordError(err)
	if !ok {
		t.Fatalf("error %v (%T) is not a refused record", err, err)
	}
	if reason != want {
		t.Fatalf("refused (%s), want (%s): %v", reason, want, err)
	}
	checkRecordErrorText(t, err)
}

func checkRecordErrorText(t testing.TB, err error) {
	t.Helper()
	msg := err.Error()
	reason, _ := isRecordError(err)
	if !strings.HasPrefix(msg, "jwkscache: stored record refused ("+reason+"): ") {
		t.Errorf("error text %.200q does not name its reason", msg)
	}
	if len(msg) > 2*maxErrorText || !utf8.ValidString(msg) {
		t.Errorf("error text of %d bytes, valid UTF-8 %v: %.200q", len(msg), utf8.ValidString(msg), msg)
	}
}

func TestStoredRecordSnapshotRoundTrip(t *testing.T) {
	body, kids := recBody(t)
	for _, fxc := range []struct {
		name string
		fx   recFixture
	}{
		{"jwksUrl", recJWKSFixture()},
		{"discovery", recDiscoveryFixture()},
	} {
		for _, kc := range []struct {
			name      string
			seal, use macKeys
		}{
			{"no MAC", nil, nil},
			{"MAC", macKeys{recKeyA}, macKeys{recKeyA}},
			{"MAC rotated", macKeys{recKeyA, recKeyB}, macKeys{recKeyB, recKeyA}},
		} {
			t.Run(fxc.name+"/"+kc.name, func(t *testing.T) {
				fx := fxc.fx
				s := recSnapshot(t, fx, body)
				b := encodeSnapshot(fx.key, s, fx.discovered, kc.seal)
				if n := int64(len(b)); n > maxSnapshotRecord(&fx.reg) {
					t.Fatalf("record of %d bytes over its own bound %d", n, maxSnapshotRecord(&fx.reg))
				}
				r, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, b, kc.use)
				wantRefused(t, err, "")
				rec := r.rec
				if rec.TenantID != fx.key.tenant || rec.ProviderID != fx.key.provider {
					t.Errorf("owner %s/%s", rec.TenantID, rec.ProviderID)
				}
				if rec.URL != s.url || rec.Discovered != fx.discovered || rec.Issuer != s.issuer {
					t.Errorf("url %q discovered %v issuer %q; want %q %v %q", rec.URL, rec.Discovered, rec.Issuer, s.url, fx.discovered, s.issuer)
				}
				if got := (validators{ETag: string(rec.ETag), LastModified: string(rec.LastModified)}); got != s.validators {
					t.Errorf("validators %+v, want %+v", got, s.validators)
				}
				if rec.TTLSource != s.ttlSource {
					t.Errorf("ttl source %q, want %q", rec.TTLSource, s.ttlSource)
				}
				for _, c := range []struct {
					name      string
					got, want time.Time
				}{
					{"fetchedAt", r.fetchedAt(), s.fetchedAt},
					{"expiresAt", r.expiresAt(), s.expiresAt},
					{"staleUntil", r.staleUntil(), s.staleUntil},
				} {
					if !c.got.Equal(c.want) || c.got.UnixNano() != c.want.UnixNano() {
						t.Errorf("%s %v (%d), want %v (%d)", c.name, c.got, c.got.UnixNano(), c.want, c.want.UnixNano())
					}
				}
				if !bytes.Equal(rec.Body, body) {
					t.Errorf("body changed:\n got %q\nwant %q", rec.Body, body)
				}
				if r.hash != s.doc.hash || !bytes.Equal(rec.Hash, s.doc.hash[:]) {
					t.Errorf("hash %x (record %x), want %x", r.hash, rec.Hash, s.doc.hash)
				}
				if got := kidsOf(r.keys); !slices.Equal(got, kids) {
					t.Errorf("kids %q, want %q", got, kids)
				}
				for i, k := range r.keys.keys {
					if want := s.keys.keys[i]; k.algs != want.algs || !reflect.DeepEqual(k.info, want.info) {
						t.Errorf("key %d: %+v, want %+v", i, k.info, want.info)
					}
				}
				if err := r.checkTimes(&fx.reg, recFetched.Add(time.Minute)); err != nil {
					t.Errorf("checkTimes: %v", err)
				}
				// A record is a function of the snapshot: encoding the
				// restored snapshot again gives the same bytes.
				s2 := *s
				s2.doc = &document{raw: rec.Body, hash: r.hash, keys: r.keys}
				s2.keys = r.keys
				s2.fetchedAt, s2.expiresAt, s2.staleUntil = r.fetchedAt(), r.expiresAt(), r.staleUntil()
				if b2 := encodeSnapshot(fx.key, &s2, rec.Discovered, kc.seal); !bytes.Equal(b2, b) {
					t.Errorf("re-encoding the restored snapshot changed the record")
				}
			})
		}
	}
}

// recRegistrations are registrations with every field set away from its
// default, or set to "off".
func recRegistrations() map[string]Registration {
	pin := base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32))
	pin2 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x07}, 32))
	full := Registration{
		TenantID: "acme-eu", ProviderID: "okta_main",
		JWKSURL: "https://acme.okta.example/oauth2/v1/keys", Issuer: "https://acme.okta.example",
		AllowHTTP: true, AllowedDomains: []string{"okta.example", "acme.example"},
		RefreshEarly: 45*time.Second + 250*time.Millisecond, StaleWhileError: 3*time.Hour + 7*time.Nanosecond,
		MinTTL: 90 * time.Second, MaxTTL: 36*time.Hour + time.Minute + 1,
		MaxResponseBytes: 512<<10 + 3, NegativeCacheTTL: 12 * time.Second, MaxRedirects: 7,
		PinnedSPKI: []string{pin, pin2}, PrefetchJitter: 1500 * time.Millisecond,
		Retry: RetryPolicy{
			MaxRetries: 5, AttemptTimeout: 1500 * time.Millisecond, InitialBackoff: 100 * time.Millisecond,
			MaxBackoff: 5*time.Second + 1, Deadline: 20 * time.Second, Jitter: JitterDecorrelated,
		},
	}
	off := Registration{
		TenantID: "t-off", ProviderID: "p_off", Issuer: "https://login.example/tenant/v2.0",
		StaleWhileError: -1, PrefetchJitter: -1, MaxRedirects: -1,
		Retry: RetryPolicy{MaxRetries: -1, Jitter: JitterNone},
	}
	return map[string]Registration{
		"minimal":            {TenantID: "t1", ProviderID: "p1", JWKSURL: recJWKSURL},
		"full":               full,
		"full with defaults": full.WithDefaults(),
		"off":                off,
		"off with defaults":  off.WithDefaults(),
		"defaults":           Registration{TenantID: "t1", ProviderID: "p1", JWKSURL: recJWKSURL}.WithDefaults(),
	}
}

func TestStoredRegistrationRoundTrip(t *testing.T) {
	for name, reg := range recRegistrations() {
		for _, keys := range []macKeys{nil, {recKeyA}} {
			t.Run(fmt.Sprintf("%s/keys=%d", name, len(keys)), func(t *testing.T) {
				if err := reg.Validate(); err != nil {
					t.Fatalf("test registration invalid: %v", err)
				}
				b := encodeRegistration(&reg, keys)
				got, err := decodeRegistration(b, keys)
				wantRefused(t, err, "")
				if !reflect.DeepEqual(got, reg) {
					t.Fatalf("round trip:\n got %+v\nwant %+v", got, reg)
				}
				if !bytes.Equal(encodeRegistration(&got, keys), b) {
					t.Errorf("re-encoding changed the record")
				}
			})
		}
	}

	// "Off" is stored as zero and read back as -1 (registration.go,
	// durToJSON/intToJSON): any negative value round-trips to -1, with the
	// same effective value.
	t.Run("negative off values", func(t *testing.T) {
		reg := Registration{
			TenantID: "t1", ProviderID: "p1", JWKSURL: recJWKSURL,
			StaleWhileError: -5 * time.Second, PrefetchJitter: -time.Hour, MaxRedirects: -3,
			Retry: RetryPolicy{MaxRetries: -9},
		}
		got, err := decodeRegistration(encodeRegistration(&reg, nil), nil)
		wantRefused(t, err, "")
		want := reg
		want.StaleWhileError, want.PrefetchJitter, want.MaxRedirects, want.Retry.MaxRetries = -1, -1, -1, -1
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v\nwant %+v", got, want)
		}
		g, w := got.WithDefaults(), reg.WithDefaults()
		if g.staleWindow() != w.staleWindow() || g.jitterWindow() != w.jitterWindow() ||
			g.redirectLimit() != w.redirectLimit() || g.Retry.attempts() != w.Retry.attempts() {
			t.Errorf("effective values changed: %+v, want %+v", g, w)
		}
	})
}

// recordRegion names the part of a record a byte belongs to.
func recordRegion(b []byte, i int) string {
	plen := int(binary.BigEndian.Uint32(b[len(recordMagic)+3:]))
	switch body := recordHeader + plen; {
	case i < recordHeader:
		return "header"
	case i < body:
		return "payload"
	case i < body+sha256.Size:
		return "checksum"
	default:
		return "mac"
	}
}

// TestStoredRecordBitFlips flips every bit of sealed records: each flip is
// refused for the reason of the region it hits, except a flip in the MAC
// of a record read without keys, which is not checked (the payload, which
// the checksum covers, is then the one sealed).
func TestStoredRecordBitFlips(t *testing.T) {
	body, _ := recBody(t)
	jfx, dfx := recJWKSFixture(), recDiscoveryFixture()
	reg := recRegistrations()["full"]
	for _, c := range []struct {
		name      string
		kind      byte
		fx        recFixture // the reader, for a snapshot
		b         []byte
		open      macKeys
		macReason string // the reason for a flip in the MAC: "" accepted
	}{
		{"snapshot without MAC", kindSnapshot, jfx, recEncode(t, jfx, body, nil), nil, ""},
		{"snapshot with MAC", kindSnapshot, jfx, recEncode(t, jfx, body, macKeys{recKeyA}), macKeys{recKeyA}, refusedMAC},
		{"snapshot with MAC read without keys", kindSnapshot, jfx, recEncode(t, jfx, body, macKeys{recKeyA}), nil, ""},
		{"discovered snapshot with MAC", kindSnapshot, dfx, recEncode(t, dfx, body, macKeys{recKeyB}), macKeys{recKeyA, recKeyB}, refusedMAC},
		{"registration without MAC", kindRegistration, jfx, encodeRegistration(&reg, nil), nil, ""},
		{"registration with MAC", kindRegistration, jfx, encodeRegistration(&reg, macKeys{recKeyA}), macKeys{recKeyA}, refusedMAC},
	} {
		t.Run(c.name, func(t *testing.T) {
			orig, err := openRecord(c.kind, c.b, math.MaxInt64, c.open)
			wantRefused(t, err, "")
			orig = bytes.Clone(orig)
			fx := c.fx
			m := bytes.Clone(c.b)
			for i := range m {
				region := recordRegion(c.b, i)
				want := map[string]string{"header": refusedFormat, "payload": refusedSum, "checksum": refusedSum, "mac": c.macReason}[region]
				for bit := range 8 {
					m[i] ^= 1 << bit
					payload, err := openRecord(c.kind, m, math.MaxInt64, c.open)
					if (err == nil) != (want == "") || err != nil && !reasonIs(err, want) {
						t.Fatalf("bit %d of byte %d (%s): got %v, want reason %q", bit, i, region, err, want)
					}
					if err == nil && !bytes.Equal(payload, orig) {
						t.Fatalf("bit %d of byte %d (%s): accepted with another payload", bit, i, region)
					}
					// The decoders agree with openRecord.
					var derr error
					if c.kind == kindSnapshot {
						_, derr = decodeSnapshot(fx.key, &fx.reg, fx.pol, m, c.open)
					} else {
						_, derr = decodeRegistration(m, c.open)
					}
					if (derr == nil) != (err == nil) || err != nil && !reasonIs(derr, want) {
						t.Fatalf("bit %d of byte %d (%s): decoder: %v; openRecord: %v", bit, i, region, derr, err)
					}
					m[i] ^= 1 << bit
				}
			}
		})
	}
}

func reasonIs(err error, want string) bool {
	r, ok := isRecordError(err)
	return ok && r == want
}

func TestStoredRecordTruncatedOrExtended(t *testing.T) {
	body, _ := recBody(t)
	fx := recJWKSFixture()
	reg := recRegistrations()["full"]
	for _, c := range []struct {
		name string
		kind byte
		b    []byte
		keys macKeys
	}{
		{"snapshot without MAC", kindSnapshot, recEncode(t, fx, body, nil), nil},
		{"snapshot with MAC", kindSnapshot, recEncode(t, fx, body, macKeys{recKeyA}), macKeys{recKeyA}},
		{"snapshot with MAC read without keys", kindSnapshot, recEncode(t, fx, body, macKeys{recKeyA}), nil},
		{"registration with MAC", kindRegistration, encodeRegistration(&reg, macKeys{recKeyA}), macKeys{recKeyA}},
	} {
		t.Run(c.name, func(t *testing.T) {
			decode := func(b []byte) error {
				if c.kind == kindSnapshot {
					_, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, b, c.keys)
					return err
				}
				_, err := decodeRegistration(b, c.keys)
				return err
			}
			wantRefused(t, decode(c.b), "")
			for n := range len(c.b) {
				// A fresh copy: no spare capacity for a reader to see past the end.
				cut := bytes.Clone(c.b[:n])
				if _, err := openRecord(c.kind, cut, math.MaxInt64, c.keys); !reasonIs(err, refusedFormat) {
					t.Fatalf("cut to %d of %d bytes: %v", n, len(c.b), err)
				}
				if err := decode(cut); !reasonIs(err, refusedFormat) {
					t.Fatalf("cut to %d of %d bytes: decoder: %v", n, len(c.b), err)
				}
			}
			for _, extra := range [][]byte{{0}, {'\n'}, bytes.Repeat([]byte{0}, sha256.Size), c.b} {
				if err := decode(append(bytes.Clone(c.b), extra...)); !reasonIs(err, refusedFormat) {
					t.Fatalf("%d bytes appended: %v", len(extra), err)
				}
			}
		})
	}
}

// recRecomputeSum rewrites the checksum of a record whose header or
// payload was changed: what anyone who can write to the store can do.
func recRecomputeSum(b []byte) []byte {
	plen := int(binary.BigEndian.Uint32(b[len(recordMagic)+3:]))
	body := recordHeader + plen
	sum := sha256.Sum256(b[:body])
	copy(b[body:], sum[:])
	return b
}

func TestStoredRecordMAC(t *testing.T) {
	body, _ := recBody(t)
	fx := recJWKSFixture()
	reg := recRegistrations()["full"]

	// stripped is a MACed record with its MAC removed, its flag cleared and
	// its checksum recomputed; forged is an unMACed record given a flag
	// and a MAC of zeros. Neither needs a key.
	stripped := func(b []byte) []byte {
		b = bytes.Clone(b[:len(b)-sha256.Size])
		b[len(recordMagic)+2] = 0
		return recRecomputeSum(b)
	}
	forged := func(b []byte) []byte {
		b = append(bytes.Clone(b), make([]byte, sha256.Size)...)
		b[len(recordMagic)+2] = 1
		return recRecomputeSum(b)
	}
	otherMAC := func(b []byte) []byte {
		b = bytes.Clone(b)
		copy(b[len(b)-sha256.Size:], bytes.Repeat([]byte{0xee}, sha256.Size))
		return b
	}
	cut := func(k []byte) []byte { return k[:len(k)-1] }
	longer := func(k []byte) []byte { return append(bytes.Clone(k), 'A') }

	for _, c := range []struct {
		name   string
		seal   macKeys
		tamper func([]byte) []byte
		open   macKeys
		want   string
	}{
		{"same key", macKeys{recKeyA}, nil, macKeys{recKeyA}, ""},
		{"another key", macKeys{recKeyA}, nil, macKeys{recKeyB}, refusedMAC},
		{"rotation: any key verifies", macKeys{recKeyA}, nil, macKeys{recKeyB, recKeyA}, ""},
		{"rotation: the first key signs", macKeys{recKeyB, recKeyA}, nil, macKeys{recKeyB}, ""},
		{"rotation: the second key does not sign", macKeys{recKeyB, recKeyA}, nil, macKeys{recKeyA}, refusedMAC},
		{"key cut by a byte", macKeys{recKeyA}, nil, macKeys{cut(recKeyA)}, refusedMAC},
		{"key longer by a byte", macKeys{recKeyA}, nil, macKeys{longer(recKeyA)}, refusedMAC},
		{"no MAC, keys configured", nil, nil, macKeys{recKeyA}, refusedMAC},
		{"MAC stripped, checksum recomputed", macKeys{recKeyA}, stripped, macKeys{recKeyA}, refusedMAC},
		{"MAC forged, checksum recomputed", nil, forged, macKeys{recKeyA}, refusedMAC},
		{"MAC replaced", macKeys{recKeyA}, otherMAC, macKeys{recKeyA}, refusedMAC},
		// Without keys the MAC is neither required nor checked
		// (record.go: "Without keys, records carry no MAC and none is
		// required"): a store written by keyed instances stays readable.
		{"MAC, no keys configured", macKeys{recKeyA}, nil, nil, ""},
		{"MAC replaced, no keys configured", macKeys{recKeyA}, otherMAC, nil, ""},
		{"MAC stripped, no keys configured", macKeys{recKeyA}, stripped, nil, ""},
		{"no MAC, no keys", nil, nil, nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			snap := recEncode(t, fx, body, c.seal)
			regRec := encodeRegistration(&reg, c.seal)
			if c.tamper != nil {
				snap, regRec = c.tamper(snap), c.tamper(regRec)
			}
			_, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, snap, c.open)
			wantRefused(t, err, c.want)
			_, err = decodeRegistration(regRec, c.open)
			wantRefused(t, err, c.want)
		})
	}

	// The MAC covers the header too: a keyed record whose kind byte is
	// changed (and checksum recomputed) is refused for its MAC even where
	// its kind would be right.
	t.Run("kind changed under the MAC", func(t *testing.T) {
		b := encodeRegistration(&reg, macKeys{recKeyA})
		b[len(recordMagic)+1] = kindSnapshot
		_, err := openRecord(kindSnapshot, recRecomputeSum(b), math.MaxInt64, macKeys{recKeyA})
		wantRefused(t, err, refusedMAC)
	})
}

func TestStoredRecordKindConfusion(t *testing.T) {
	body, _ := recBody(t)
	fx := recJWKSFixture()
	reg := recRegistrations()["minimal"]
	for _, keys := range []macKeys{nil, {recKeyA}} {
		t.Run(fmt.Sprintf("keys=%d", len(keys)), func(t *testing.T) {
			_, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, encodeRegistration(&reg, keys), keys)
			wantRefused(t, err, refusedFormat)
			_, err = decodeRegistration(recEncode(t, fx, body, keys), keys)
			wantRefused(t, err, refusedFormat)

			// Other kinds and versions, well formed otherwise.
			payload := []byte(`{}`)
			for _, mut := range []struct {
				at  int
				val byte
			}{
				{len(recordMagic), 0}, {len(recordMagic), recordVersion + 1}, {len(recordMagic), 0xff},
				{len(recordMagic) + 1, 0}, {len(recordMagic) + 1, 3}, {len(recordMagic) + 1, 0xff},
				{len(recordMagic) + 2, 2}, {0, 'j'},
			} {
				for _, kind := range []byte{kindSnapshot, kindRegistration} {
					b := sealRecord(kind, payload, keys)
					b[mut.at] = mut.val
					recRecomputeSum(b)
					if _, err := openRecord(kind, b, math.MaxInt64, keys); !reasonIs(err, refusedFormat) {
						t.Errorf("kind %d, byte %d = %d: %v", kind, mut.at, mut.val, err)
					}
				}
			}
		})
	}
}

func TestStoredRecordOwner(t *testing.T) {
	body, _ := recBody(t)
	jfx, dfx := recJWKSFixture(), recDiscoveryFixture()
	httpURL := "http://keys.issuer.example/jwks"

	withKey := func(fx recFixture, tenant, provider string) recFixture {
		fx.key = providerKey{tenant, provider}
		fx.reg.TenantID, fx.reg.ProviderID = tenant, provider
		return fx
	}
	withPol := func(fx recFixture, pol urlPolicy) recFixture { fx.pol = pol; return fx }
	withReg := func(fx recFixture, edit func(*Registration)) recFixture {
		edit(&fx.reg)
		fx.pol.regDomains = fx.reg.AllowedDomains
		return fx
	}

	for _, c := range []struct {
		name   string
		writer recFixture // the provider that wrote the record
		edit   func(*snapshotRecord)
		reader recFixture // the provider reading it
		want   string
	}{
		{"jwksUrl: same provider", jfx, nil, jfx, ""},
		{"jwksUrl: another provider", jfx, nil, withKey(jfx, "t1", "p2"), refusedOwner},
		{"jwksUrl: another tenant", jfx, nil, withKey(jfx, "t2", "p1"), refusedOwner},
		{"jwksUrl: swapped ids", withKey(jfx, "p1", "t1"), nil, jfx, refusedOwner},
		{"jwksUrl: ids differ in case", withKey(jfx, "T1", "P1"), nil, jfx, refusedOwner},
		{"jwksUrl: tenant prefix", withKey(jfx, "t1x", "p1"), nil, jfx, refusedOwner},
		{"jwksUrl: another URL", jfx, func(r *snapshotRecord) { r.URL = "https://idp.example/other" }, jfx, refusedOwner},
		{"jwksUrl: URL with a trailing slash", jfx, func(r *snapshotRecord) { r.URL += "/" }, jfx, refusedOwner},
		{"jwksUrl: URL in another case", jfx, func(r *snapshotRecord) { r.URL = strings.ToUpper(r.URL) }, jfx, refusedOwner},
		{"jwksUrl: registration moved", jfx, nil, withReg(jfx, func(r *Registration) { r.JWKSURL = "https://new.example/keys" }), refusedOwner},
		{"jwksUrl: discovered record", jfx, func(r *snapshotRecord) { r.Discovered = true }, jfx, refusedOwner},
		{"jwksUrl: discovered record of the same URL and issuer", jfx, func(r *snapshotRecord) { r.Discovered, r.Issuer = true, recIssuer },
			withReg(jfx, func(r *Registration) { r.Issuer = recIssuer }), refusedOwner},
		// A registration that also names its issuer keeps its keys: the
		// record's issuer is not the registration's to check.
		{"jwksUrl: record issuer ignored", jfx, func(r *snapshotRecord) { r.Issuer = "https://elsewhere.example" }, jfx, ""},

		{"discovery: same provider", dfx, nil, dfx, ""},
		{"discovery: another provider", dfx, nil, withKey(dfx, "t1", "p2"), refusedOwner},
		{"discovery: another tenant", dfx, nil, withKey(dfx, "t2", "p1"), refusedOwner},
		{"discovery: another issuer", dfx, func(r *snapshotRecord) { r.Issuer = "https://evil.example" }, dfx, refusedOwner},
		{"discovery: issuer with a trailing slash", dfx, func(r *snapshotRecord) { r.Issuer += "/" }, dfx, refusedOwner},
		{"discovery: no issuer", dfx, func(r *snapshotRecord) { r.Issuer = "" }, dfx, refusedOwner},
		{"discovery: record not discovered", dfx, func(r *snapshotRecord) { r.Discovered = false }, dfx, refusedOwner},
		{"discovery: record of a jwksUrl registration", withReg(jfx, func(r *Registration) { r.Issuer = recIssuer }),
			func(r *snapshotRecord) { r.URL = recDiscURL }, dfx, refusedOwner},
		{"discovery: registration's issuer changed", dfx, nil, withReg(dfx, func(r *Registration) { r.Issuer = "https://issuer.example/v2" }), refusedOwner},
		{"discovery: URL in a subdomain", dfx, func(r *snapshotRecord) { r.URL = "https://a.b.issuer.example/k" }, dfx, ""},
		{"discovery: http refused", dfx, func(r *snapshotRecord) { r.URL = httpURL }, dfx, refusedOwner},
		{"discovery: http refused by the Options", dfx, func(r *snapshotRecord) { r.URL = httpURL },
			withReg(dfx, func(r *Registration) { r.AllowHTTP = true }), refusedOwner}, // policy allowHTTP false
		{"discovery: http allowed", dfx, func(r *snapshotRecord) { r.URL = httpURL },
			withPol(dfx, urlPolicy{allowHTTP: true, regDomains: dfx.reg.AllowedDomains}), ""},
		{"discovery: outside the registration's domains", dfx, func(r *snapshotRecord) { r.URL = "https://keys.evil.example/jwks" }, dfx, refusedOwner},
		{"discovery: suffix that is not a subdomain", dfx, func(r *snapshotRecord) { r.URL = "https://evilissuer.example/jwks" }, dfx, refusedOwner},
		{"discovery: outside the Options' domains", dfx, nil,
			withPol(dfx, urlPolicy{domains: []string{"other.example"}, regDomains: dfx.reg.AllowedDomains}), refusedOwner},
		{"discovery: within the Options' domains", dfx, nil,
			withPol(dfx, urlPolicy{domains: []string{"issuer.example"}}), ""},
		{"discovery: no domain list", dfx, func(r *snapshotRecord) { r.URL = "https://anywhere.example/jwks" }, withPol(dfx, urlPolicy{}), ""},
		{"discovery: IP literal refused", dfx, func(r *snapshotRecord) { r.URL = "https://10.1.2.3/jwks" }, withPol(dfx, urlPolicy{}), refusedOwner},
		{"discovery: IP literal within AllowedAddresses", dfx, func(r *snapshotRecord) { r.URL = "https://10.1.2.3/jwks" },
			withPol(dfx, urlPolicy{allowedAddresses: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}), ""},
		{"discovery: IPv4 in another spelling", dfx, func(r *snapshotRecord) { r.URL = "https://0x7f000001/jwks" }, withPol(dfx, urlPolicy{}), refusedOwner},
		{"discovery: userinfo", dfx, func(r *snapshotRecord) { r.URL = "https://u:p@keys.issuer.example/jwks" }, dfx, refusedOwner},
		{"discovery: not https", dfx, func(r *snapshotRecord) { r.URL = "ftp://keys.issuer.example/jwks" }, dfx, refusedOwner},
		{"discovery: relative URL", dfx, func(r *snapshotRecord) { r.URL = "/jwks" }, dfx, refusedOwner},
		{"discovery: empty URL", dfx, func(r *snapshotRecord) { r.URL = "" }, dfx, refusedOwner},
		{"discovery: control character in the URL", dfx, func(r *snapshotRecord) { r.URL = "https://keys.issuer.example/\x00" }, dfx, refusedOwner},
	} {
		for _, keys := range []macKeys{nil, {recKeyA}} {
			t.Run(fmt.Sprintf("%s/keys=%d", c.name, len(keys)), func(t *testing.T) {
				b := recEncode(t, c.writer, body, keys)
				if c.edit != nil {
					b = recReseal(t, b, keys, c.edit)
				}
				r, err := decodeSnapshot(c.reader.key, &c.reader.reg, c.reader.pol, b, keys)
				want := c.want
				if want == refusedOwner && len(keys) > 0 && c.writer.key == c.reader.key &&
					(err == nil || !strings.Contains(err.Error(), "discovered URL refused")) {
					// The pair's own authenticated record of another source:
					// a registration changed since, not tampering.
					want = refusedSuperseded
				}
				wantRefused(t, err, want)
				if err == nil && (r.rec.TenantID != c.reader.key.tenant || r.rec.ProviderID != c.reader.key.provider) {
					t.Fatalf("accepted the record of %s/%s", r.rec.TenantID, r.rec.ProviderID)
				}
			})
		}
	}
}

// recPadded is a JWKS of exactly n bytes (n at least the size of body):
// body padded with trailing white space, which JSON ignores.
func recPadded(t *testing.T, body []byte, n int) []byte {
	t.Helper()
	if n < len(body) {
		t.Fatalf("pad %d bytes to %d", len(body), n)
	}
	return append(bytes.Clone(body), bytes.Repeat([]byte(" "), n-len(body))...)
}

func TestStoredRecordSize(t *testing.T) {
	body, _ := recBody(t)

	t.Run("body over MaxResponseBytes", func(t *testing.T) {
		for _, d := range []int{-1, 0, 1, 2, 1000} {
			fx := recJWKSFixture()
			fx.reg.MaxResponseBytes = int64(len(body) + d)
			want := ""
			if d < 0 {
				want = refusedSize
			}
			for _, keys := range []macKeys{nil, {recKeyA}} {
				_, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, recEncode(t, fx, body, keys), keys)
				wantRefused(t, err, want)
			}
		}
	})

	// The bound is checked before anything is parsed: a record one byte
	// over it is refused for its size even when its payload is not JSON; one
	// at the bound goes on to be refused for its format.
	t.Run("record over maxSnapshotRecord", func(t *testing.T) {
		for _, mrb := range []int64{1, 4096, 4097, 4098, DefaultMaxResponseBytes} {
			fx := recJWKSFixture()
			fx.reg.MaxResponseBytes = mrb
			limit := int(maxSnapshotRecord(&fx.reg))
			for _, keys := range []macKeys{nil, {recKeyA}} {
				overhead := recordHeader + sha256.Size
				if len(keys) > 0 {
					overhead += sha256.Size
				}
				at := sealRecord(kindSnapshot, bytes.Repeat([]byte("x"), limit-overhead), keys)
				over := sealRecord(kindSnapshot, bytes.Repeat([]byte("x"), limit-overhead+1), keys)
				if len(at) != limit || len(over) != limit+1 {
					t.Fatalf("records of %d and %d bytes, limit %d", len(at), len(over), limit)
				}
				_, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, at, keys)
				wantRefused(t, err, refusedFormat)
				_, err = decodeSnapshot(fx.key, &fx.reg, fx.pol, over, keys)
				wantRefused(t, err, refusedSize)
				// Not even a record: the size comes first.
				_, err = decodeSnapshot(fx.key, &fx.reg, fx.pol, bytes.Repeat([]byte("<"), limit+1), keys)
				wantRefused(t, err, refusedSize)
			}
		}
	})

	// Whatever a fetch may hold passes the reader's bound: a body of
	// MaxResponseBytes (whatever its size modulo 3, which base64 rounds
	// up), validators of the longest length the reader takes, made of
	// characters JSON escapes six-fold, long ids and URLs.
	t.Run("largest snapshot fits", func(t *testing.T) {
		for _, mrb := range []int{4096, 4097, 4098, 64 << 10, 64<<10 + 1, 64<<10 + 2} {
			for _, discovery := range []bool{false, true} {
				fx := recJWKSFixture()
				long := "https://idp.example/" + strings.Repeat("k", 2000)
				fx.reg.JWKSURL, fx.url = long, long
				if discovery {
					fx = recDiscoveryFixture()
					fx.reg.Issuer = "https://issuer.example/" + strings.Repeat("i", 2000)
					fx.url = "https://keys.issuer.example/" + strings.Repeat("k", 2000)
				}
				id := strings.Repeat("x", maxIDLen)
				fx.key = providerKey{id, id}
				fx.reg.TenantID, fx.reg.ProviderID = id, id
				fx.reg.MaxResponseBytes = int64(mrb)
				s := recSnapshot(t, fx, recPadded(t, body, mrb))
				s.validators = validators{ETag: strings.Repeat("<", maxErrorText), LastModified: strings.Repeat("\x01", maxErrorText)}
				s.ttlSource = strings.Repeat("&", 64)
				for _, keys := range []macKeys{nil, {recKeyA}} {
					b := encodeSnapshot(fx.key, s, fx.discovered, keys)
					r, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, b, keys)
					if err != nil {
						t.Fatalf("MaxResponseBytes %d, discovery %v: record of %d bytes (bound %d): %v",
							mrb, discovery, len(b), maxSnapshotRecord(&fx.reg), err)
					}
					if len(r.rec.Body) != mrb || string(r.rec.ETag) != s.validators.ETag || string(r.rec.LastModified) != s.validators.LastModified {
						t.Fatalf("fields changed")
					}
				}
			}
		}
	})

	t.Run("validators", func(t *testing.T) {
		fx := recJWKSFixture()
		long := func(n int) string { return strings.Repeat("v", n) }
		for _, c := range []struct {
			name string
			edit func(*snapshotRecord)
			want string
		}{
			{"etag at the bound", func(r *snapshotRecord) { r.ETag = []byte(long(maxErrorText)) }, ""},
			{"etag over", func(r *snapshotRecord) { r.ETag = []byte(long(maxErrorText + 1)) }, refusedSize},
			{"last-modified at the bound", func(r *snapshotRecord) { r.LastModified = []byte(long(maxErrorText)) }, ""},
			{"last-modified over", func(r *snapshotRecord) { r.LastModified = []byte(long(maxErrorText + 1)) }, refusedSize},
			{"ttl source at the bound", func(r *snapshotRecord) { r.TTLSource = long(64) }, ""},
			{"ttl source over", func(r *snapshotRecord) { r.TTLSource = long(65) }, refusedSize},
			{"empty validators", func(r *snapshotRecord) { r.ETag, r.LastModified, r.TTLSource = nil, nil, "" }, ""},
		} {
			t.Run(c.name, func(t *testing.T) {
				b := recReseal(t, recEncode(t, fx, body, nil), nil, c.edit)
				_, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, b, nil)
				wantRefused(t, err, c.want)
			})
		}
	})

	t.Run("registration record over maxRegistrationRecord", func(t *testing.T) {
		for _, keys := range []macKeys{nil, {recKeyA}} {
			overhead := recordHeader + sha256.Size + len(keys)*sha256.Size
			at := sealRecord(kindRegistration, bytes.Repeat([]byte("x"), maxRegistrationRecord-overhead), keys)
			over := sealRecord(kindRegistration, bytes.Repeat([]byte("x"), maxRegistrationRecord-overhead+1), keys)
			_, err := decodeRegistration(at, keys)
			wantRefused(t, err, refusedFormat) // not JSON
			_, err = decodeRegistration(over, keys)
			wantRefused(t, err, refusedSize)

			// A registration whose JSON is over the bound.
			reg := recRegistrations()["minimal"]
			for i := range maxRegistrationRecord / 16 {
				reg.AllowedDomains = append(reg.AllowedDomains, fmt.Sprintf("d%05d.example", i))
			}
			b := encodeRegistration(&reg, keys)
			if len(b) <= maxRegistrationRecord {
				t.Fatalf("record of %d bytes", len(b))
			}
			_, err = decodeRegistration(b, keys)
			wantRefused(t, err, refusedSize)
		}
	})
}

func TestStoredRecordHash(t *testing.T) {
	body, _ := recBody(t)
	other := readFixture(t, "google.wellknown-2024.json")
	fx := recJWKSFixture()
	for _, c := range []struct {
		name string
		edit func(*snapshotRecord)
		want string
	}{
		{"unchanged", func(*snapshotRecord) {}, ""},
		{"another body", func(r *snapshotRecord) { r.Body = other }, refusedSum},
		{"body with a space appended", func(r *snapshotRecord) { r.Body = append(r.Body, ' ') }, refusedSum},
		{"body cut", func(r *snapshotRecord) { r.Body = r.Body[:len(r.Body)-1] }, refusedSum},
		{"another body and its hash", func(r *snapshotRecord) { h := sha256.Sum256(other); r.Body, r.Hash = other, h[:] }, ""},
		{"hash flipped", func(r *snapshotRecord) { r.Hash[31] ^= 1 }, refusedSum},
		{"hash cut", func(r *snapshotRecord) { r.Hash = r.Hash[:31] }, refusedSum},
		{"hash extended", func(r *snapshotRecord) { r.Hash = append(r.Hash, 0) }, refusedSum},
		{"no hash", func(r *snapshotRecord) { r.Hash = nil }, refusedSum},
		{"SHA-256 of nothing", func(r *snapshotRecord) { h := sha256.Sum256(nil); r.Hash = h[:] }, refusedSum},
	} {
		for _, keys := range []macKeys{nil, {recKeyA}} {
			t.Run(fmt.Sprintf("%s/keys=%d", c.name, len(keys)), func(t *testing.T) {
				b := recReseal(t, recEncode(t, fx, body, keys), keys, c.edit)
				r, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, b, keys)
				wantRefused(t, err, c.want)
				if err == nil && r.hash != sha256.Sum256(r.rec.Body) {
					t.Fatalf("hash %x of another body", r.hash)
				}
			})
		}
	}
}

func TestStoredRecordTimes(t *testing.T) {
	body, _ := recBody(t)
	fx := recJWKSFixture()

	// decodeSnapshot: the times of a record are in order.
	for _, c := range []struct {
		name             string
		fetched, expires int64
		stale            int64
		want             string
	}{
		{"ordered", 1, 2, 3, ""},
		{"all equal", 5, 5, 5, ""},
		{"zero", 0, 0, 0, ""},
		{"negative", -3, -2, -1, ""},
		{"fetched after expiry", 3, 2, 4, refusedFormat},
		{"fetched a nanosecond after expiry", 2, 1, 2, refusedFormat},
		{"stale window ends before expiry", 1, 3, 2, refusedFormat},
		{"extremes", math.MinInt64, math.MaxInt64, math.MaxInt64, ""},
		{"extremes reversed", math.MaxInt64, math.MinInt64, math.MaxInt64, refusedFormat},
	} {
		t.Run("decode/"+c.name, func(t *testing.T) {
			b := recReseal(t, recEncode(t, fx, body, nil), nil, func(r *snapshotRecord) {
				r.FetchedAt, r.ExpiresAt, r.StaleUntil = c.fetched, c.expires, c.stale
			})
			r, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, b, nil)
			wantRefused(t, err, c.want)
			if err == nil {
				if r.fetchedAt().UnixNano() != c.fetched || r.expiresAt().UnixNano() != c.expires || r.staleUntil().UnixNano() != c.stale {
					t.Fatalf("times %v %v %v", r.fetchedAt(), r.expiresAt(), r.staleUntil())
				}
				_ = r.checkTimes(&fx.reg, time.Unix(0, 0)) // must not panic
			}
		})
	}

	// checkTimes: against the clock and the registration.
	now := time.Unix(1_800_000_000, 0)
	reg := fx.reg // MaxTTL 24h, StaleWhileError 1h
	noStale := reg
	noStale.StaleWhileError = -1
	longStale := reg
	longStale.StaleWhileError = 48 * time.Hour
	shortMax := reg
	shortMax.MaxTTL = time.Minute
	const skew = time.Minute
	for _, c := range []struct {
		name             string
		reg              *Registration
		fetched, expires time.Time
		staleUntil       time.Time // zero: expires
		want             string
	}{
		{"fresh", &reg, now.Add(-time.Minute), now.Add(time.Minute), time.Time{}, ""},
		{"fetched now", &reg, now, now.Add(time.Hour), time.Time{}, ""},
		{"fetched within the clock skew", &reg, now.Add(skew), now.Add(skew + time.Hour), time.Time{}, ""},
		{"fetched just past the clock skew", &reg, now.Add(skew + 1), now.Add(skew + time.Hour), time.Time{}, refusedExpired},
		{"fetched an hour from now", &reg, now.Add(time.Hour), now.Add(2 * time.Hour), time.Time{}, refusedExpired},
		{"TTL of MaxTTL", &reg, now.Add(-time.Hour), now.Add(-time.Hour + reg.MaxTTL), time.Time{}, ""},
		{"TTL of MaxTTL+1s", &reg, now.Add(-time.Hour), now.Add(-time.Hour + reg.MaxTTL + time.Second), time.Time{}, ""},
		{"TTL over MaxTTL+1s", &reg, now.Add(-time.Hour), now.Add(-time.Hour + reg.MaxTTL + time.Second + 1), time.Time{}, refusedExpired},
		{"TTL over a short MaxTTL", &shortMax, now.Add(-time.Second), now.Add(2 * time.Minute), time.Time{}, refusedExpired},
		{"TTL of the longest duration", &reg, time.Unix(0, math.MinInt64), time.Unix(0, math.MaxInt64), time.Time{}, refusedExpired},
		{"expired, in the stale window", &reg, now.Add(-time.Hour), now.Add(-30 * time.Minute), time.Time{}, ""},
		{"stale window ends in a nanosecond", &reg, now.Add(-2 * time.Hour), now.Add(-time.Hour + 1), time.Time{}, ""},
		{"stale window just over", &reg, now.Add(-2 * time.Hour), now.Add(-time.Hour), time.Time{}, refusedExpired},
		{"long past the stale window", &reg, now.Add(-48 * time.Hour), now.Add(-47 * time.Hour), time.Time{}, refusedExpired},
		{"no stale window: fresh", &noStale, now.Add(-time.Minute), now.Add(1), time.Time{}, ""},
		{"no stale window: at expiry", &noStale, now.Add(-time.Minute), now, time.Time{}, refusedExpired},
		// The registration's window counts, not the record's.
		{"record without window, registration with", &reg, now.Add(-time.Hour), now.Add(-30 * time.Minute), now.Add(-30 * time.Minute), ""},
		{"record with window, registration without", &noStale, now.Add(-time.Hour), now.Add(-30 * time.Minute), now.Add(time.Hour), refusedExpired},
		{"registration's window longer", &longStale, now.Add(-30 * time.Hour), now.Add(-29 * time.Hour), now.Add(-28 * time.Hour), ""},
	} {
		t.Run("checkTimes/"+c.name, func(t *testing.T) {
			stale := c.staleUntil
			if stale.IsZero() {
				stale = c.expires
			}
			b := recReseal(t, recEncode(t, fx, body, nil), nil, func(r *snapshotRecord) {
				r.FetchedAt, r.ExpiresAt, r.StaleUntil = c.fetched.UnixNano(), c.expires.UnixNano(), stale.UnixNano()
			})
			r, err := decodeSnapshot(fx.key, c.reg, fx.pol, b, nil)
			wantRefused(t, err, "")
			wantRefused(t, r.checkTimes(c.reg, now), c.want)
		})
	}
}

func TestStoredRecordContent(t *testing.T) {
	good, _ := recBody(t)
	k := genKeys(t)
	fx := recJWKSFixture()
	for _, c := range []struct {
		name string
		body []byte
		want string
	}{
		{"usable keys", good, ""},
		{"symmetric keys only", readFixture(t, "rfc7517-A.3-symmetric.json"), refusedContent},
		{"private keys only", readFixture(t, "rfc7517-A.2-private.json"), refusedContent},
		{"RSA 1024 only", jwksDoc(t, jwkMap(t, &k.rsa1024.PublicKey, "small", "RS256", "sig")), refusedContent},
		{"encryption keys only", jwksDoc(t, jwkMap(t, &k.p256a.PublicKey, "enc", "", "enc")), refusedContent},
		{"one usable key among unusable ones", jwksDoc(t,
			`{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}`, jwkMap(t, &k.rsa1024.PublicKey, "small", "RS256", "sig"),
			jwkMap(t, &k.p256a.PublicKey, "ok", "ES256", "sig")), ""},
		{"no keys", []byte(`{"keys":[]}`), refusedContent},
		{"HTML", []byte("<!DOCTYPE html><html><body>Sign in</body></html>"), refusedContent},
		{"HTML after a BOM and spaces", []byte("\ufeff \n<html>"), refusedContent},
		{"not JSON", []byte("keys: none"), refusedContent},
		{"truncated JSON", good[:len(good)/2], refusedContent},
		{"JSON, not a JWKS", []byte(`{"issuer":"https://issuer.example"}`), refusedContent},
		{"a single JWK", readFixture(t, "rfc8037-A.2-ed25519-public.json"), refusedContent},
		{"null", []byte("null"), refusedContent},
		{"empty", []byte{}, refusedContent},
		{"nil", nil, refusedContent},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := recReseal(t, recEncode(t, fx, good, nil), nil, func(r *snapshotRecord) {
				h := sha256.Sum256(c.body)
				r.Body, r.Hash = c.body, h[:]
			})
			r, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, b, nil)
			wantRefused(t, err, c.want)
			if err == nil && len(r.keys.keys) == 0 {
				t.Fatal("accepted without keys")
			}
		})
	}

	// Payloads a correct writer never makes.
	for _, c := range []struct {
		name    string
		payload string
		want    string
	}{
		{"not JSON", "not json", refusedFormat},
		{"truncated object", `{"t":"t1"`, refusedFormat},
		{"time as a string", `{"t":"t1","p":"p1","u":"` + recJWKSURL + `","f":"1"}`, refusedFormat},
		{"time as a fraction", `{"t":"t1","p":"p1","u":"` + recJWKSURL + `","f":1.5}`, refusedFormat},
		{"body not base64", `{"t":"t1","p":"p1","u":"` + recJWKSURL + `","b":"!!"}`, refusedFormat},
		{"array", `[]`, refusedFormat},
		{"empty object", `{}`, refusedOwner},
		{"null", `null`, refusedOwner},
		{"owner only", `{"t":"t1","p":"p1","u":"` + recJWKSURL + `"}`, refusedSum}, // no hash
	} {
		t.Run("payload/"+c.name, func(t *testing.T) {
			_, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, sealRecord(kindSnapshot, []byte(c.payload), nil), nil)
			wantRefused(t, err, c.want)
		})
	}

	for _, c := range []struct {
		name    string
		payload string
		want    string
	}{
		{"not JSON", "not json", refusedFormat},
		{"unknown member", `{"tenantId":"t1","providerId":"p1","jwksUrl":"https://a.example","minTTL":"PT1M"}`, refusedContent},
		{"trailing data", `{"tenantId":"t1"}{}`, refusedFormat},
		{"bad duration", `{"tenantId":"t1","minTtl":"30s"}`, refusedContent},
		{"empty object", `{}`, ""}, // validated later, by Register
	} {
		t.Run("registration payload/"+c.name, func(t *testing.T) {
			_, err := decodeRegistration(sealRecord(kindRegistration, []byte(c.payload), nil), nil)
			wantRefused(t, err, c.want)
		})
	}
}

func TestStoredRecordIsRecordError(t *testing.T) {
	_, err := decodeRegistration([]byte("nope"), nil)
	for _, e := range []error{err, fmt.Errorf("restore: %w", err), errors.Join(errors.New("x"), err)} {
		if r, ok := isRecordError(e); !ok || r != refusedFormat {
			t.Errorf("isRecordError(%v) = %q, %v", e, r, ok)
		}
	}
	for _, e := range []error{nil, errors.New("jwkscache: stored record refused (format): forged"), ErrStoreNotFound} {
		if r, ok := isRecordError(e); ok {
			t.Errorf("isRecordError(%v) = %q, true", e, r)
		}
	}
}

// TestStoredRecordWhatRegisterAcceptsRestores checks that what Register
// accepts can be stored and read back: the bounds of validate keep every
// size derived from a registration in range (both were bugs once).
func TestStoredRecordWhatRegisterAcceptsRestores(t *testing.T) {
	body, _ := recBody(t)

	// maxSnapshotRecord computes MaxResponseBytes/3*4 + 4 + recordOverhead,
	// which overflows above about 6.9e18: the bound is then negative and
	// every snapshot record of the provider is refused (size).
	t.Run("MaxResponseBytes near MaxInt64", func(t *testing.T) {
		reg := Registration{TenantID: "t1", ProviderID: "p1", JWKSURL: recJWKSURL, MaxResponseBytes: math.MaxInt64 - 1}
		if reg.Validate() != nil {
			return // refused at registration
		}
		fx := recJWKSFixture()
		fx.reg = reg.WithDefaults()
		_, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, recEncode(t, fx, body, nil), nil)
		if err != nil {
			t.Fatalf("maxSnapshotRecord is %d for a valid MaxResponseBytes of %d: %v",
				maxSnapshotRecord(&fx.reg), fx.reg.MaxResponseBytes, err)
		}
	})

	// Nothing bounds the JSON form of a registration (AllowedDomains,
	// PinnedSPKI, URLs), but decodeRegistration refuses one over 64 KiB: a
	// registration saved by Register is refused by Restore.
	t.Run("registration over maxRegistrationRecord", func(t *testing.T) {
		reg := Registration{TenantID: "t1", ProviderID: "p1", JWKSURL: "https://d00000.example/keys"}
		for i := range maxRegistrationRecord / 16 {
			reg.AllowedDomains = append(reg.AllowedDomains, fmt.Sprintf("d%05d.example", i))
		}
		if reg.Validate() != nil {
			return // refused at registration
		}
		b := encodeRegistration(&reg, nil)
		if _, err := decodeRegistration(b, nil); err != nil {
			t.Fatalf("a valid registration's record of %d bytes is refused: %.120v", len(b), err)
		}
	})
}

// --- Fuzzing ---

// recFuzzFixtures are the providers of FuzzStoredRecord: a small
// MaxResponseBytes keeps the records (and the fuzzer) small.
func recFuzzFixtures() []recFixture {
	j, d := recJWKSFixture(), recDiscoveryFixture()
	j.reg.MaxResponseBytes, d.reg.MaxResponseBytes = 8<<10, 8<<10
	return []recFixture{j, d}
}

// checkRestored asserts the invariants of a record decodeSnapshot accepted
// for fx with keys, and that encoding it again gives a record that decodes
// to the same content.
func checkRestored(t *testing.T, fx recFixture, b []byte, keys macKeys, r *restoredSnapshot) {
	t.Helper()
	rec := &r.rec
	if int64(len(b)) > maxSnapshotRecord(&fx.reg) {
		t.Fatalf("accepted a record of %d bytes, over %d", len(b), maxSnapshotRecord(&fx.reg))
	}
	if rec.TenantID != fx.key.tenant || rec.ProviderID != fx.key.provider {
		t.Fatalf("accepted the record of %q/%q for %v", rec.TenantID, rec.ProviderID, fx.key)
	}
	if fx.reg.usesDiscovery() {
		if !rec.Discovered || rec.Issuer != fx.reg.Issuer || fx.pol.checkURL("jwksUrl", rec.URL) != nil {
			t.Fatalf("accepted discovered %v, issuer %q, URL %q", rec.Discovered, rec.Issuer, rec.URL)
		}
	} else if rec.Discovered || rec.URL != fx.reg.JWKSURL {
		t.Fatalf("accepted discovered %v, URL %q", rec.Discovered, rec.URL)
	}
	if int64(len(rec.Body)) > fx.reg.MaxResponseBytes {
		t.Fatalf("accepted a body of %d bytes", len(rec.Body))
	}
	if sum := sha256.Sum256(rec.Body); r.hash != sum || !bytes.Equal(rec.Hash, sum[:]) {
		t.Fatalf("hash %x, record %x, body's %x", r.hash, rec.Hash, sum)
	}
	if !(rec.FetchedAt <= rec.ExpiresAt && rec.ExpiresAt <= rec.StaleUntil) {
		t.Fatalf("times %d %d %d", rec.FetchedAt, rec.ExpiresAt, rec.StaleUntil)
	}
	if len(rec.ETag) > maxErrorText || len(rec.LastModified) > maxErrorText || len(rec.TTLSource) > 64 {
		t.Fatalf("validators of %d, %d, %d bytes", len(rec.ETag), len(rec.LastModified), len(rec.TTLSource))
	}
	if r.keys == nil || len(r.keys.keys) == 0 {
		t.Fatalf("accepted without keys")
	}
	if len(keys) > 0 {
		// Accepted with keys: the record carries the MAC of one of them.
		body := len(b) - 2*sha256.Size
		if body < recordHeader || b[len(recordMagic)+2] != 1 || !bytes.Equal(b[body+sha256.Size:], keys.sum(recKeyA, b[:body])) {
			t.Fatalf("accepted with keys a record without their MAC")
		}
	}
	for _, now := range []time.Time{r.fetchedAt(), r.expiresAt(), time.Unix(0, 0)} {
		if err := r.checkTimes(&fx.reg, now); err != nil {
			if reason, _ := isRecordError(err); reason != refusedExpired {
				t.Fatalf("checkTimes: %v", err)
			}
		}
	}
	s := &snapshot{
		keys: r.keys, doc: &document{raw: rec.Body, hash: r.hash, keys: r.keys}, url: rec.URL, issuer: rec.Issuer,
		validators: validators{ETag: string(rec.ETag), LastModified: string(rec.LastModified)},
		fetchedAt:  r.fetchedAt(), expiresAt: r.expiresAt(), staleUntil: r.staleUntil(), ttlSource: rec.TTLSource,
	}
	b2 := encodeSnapshot(fx.key, s, rec.Discovered, keys)
	r2, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, b2, keys)
	if err != nil {
		t.Fatalf("re-encoded record refused: %v", err)
	}
	if !reflect.DeepEqual(r2.rec, r.rec) || r2.hash != r.hash || !slices.Equal(kidsOf(r2.keys), kidsOf(r.keys)) {
		t.Fatalf("re-encoded record differs:\n got %+v\nwant %+v", r2.rec, r.rec)
	}
}

// checkStoredRefusal asserts that a refusal is a refused record with a
// known reason and a bounded text.
func checkStoredRefusal(t *testing.T, err error) {
	t.Helper()
	reason, ok := isRecordError(err)
	if !ok {
		t.Fatalf("error %v (%T) is not a refused record", err, err)
	}
	if !slices.Contains(refusedReasons[:], reason) || reason == refusedExpired {
		t.Fatalf("unknown reason %q", reason)
	}
	checkRecordErrorText(t, err)
}

// FuzzStoredRecord: decodeSnapshot never panics, whatever the store holds;
// a record it accepts belongs to the provider, fits its bounds, matches its
// hash, holds usable keys, carries the MAC when keys are configured, and
// encodes back to itself. The input is read as a record, and sealed as the
// payload of a record with and without a MAC, which must give the same
// verdict.
func FuzzStoredRecord(f *testing.F) {
	body := readFixture(f, "onelogin.firezone-2022.json")
	mixed := readFixture(f, "mixed-ec-okp-rsa.firezone.json")
	fxs := recFuzzFixtures()
	for _, fx := range fxs {
		for _, b := range [][]byte{body, mixed} {
			s := recSnapshot(f, fx, b) // fixed times and bodies: stable seeds
			f.Add(encodeSnapshot(fx.key, s, fx.discovered, nil))
			f.Add(encodeSnapshot(fx.key, s, fx.discovered, macKeys{recKeyA}))
			rec := encodeSnapshot(fx.key, s, fx.discovered, nil)
			f.Add(bytes.Clone(rec[recordHeader : len(rec)-sha256.Size])) // the payload alone
		}
	}
	f.Add([]byte{})
	f.Add([]byte(recordMagic))
	f.Add(sealRecord(kindSnapshot, nil, nil))
	f.Add(sealRecord(kindSnapshot, []byte(`{"t":"t1","p":"p1","u":"`+recJWKSURL+`","b":"e30=","h":"RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o="}`), nil))
	f.Add([]byte(`{"t":"t1","p":"p1","d":true,"i":"` + recIssuer + `","u":"https://x.issuer.example","f":-1,"x":0,"s":1}`))
	f.Add([]byte(`{"t":"t1","p":"p1","u":"` + recJWKSURL + `","T":"t2","P":"p2","b":null}`))

	f.Fuzz(func(t *testing.T, data []byte) {
		for _, fx := range fxs {
			// As stored.
			for _, keys := range []macKeys{nil, {recKeyA}} {
				r, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, data, keys)
				if err != nil {
					checkStoredRefusal(t, err)
					continue
				}
				checkRestored(t, fx, data, keys, r)
			}
			// As the payload of a well-formed record: with or without a
			// MAC, the verdict is the same.
			var reasons [2]string
			for i, keys := range []macKeys{nil, {recKeyA}} {
				b := sealRecord(kindSnapshot, data, keys)
				r, err := decodeSnapshot(fx.key, &fx.reg, fx.pol, b, keys)
				if err != nil {
					checkStoredRefusal(t, err)
					reasons[i], _ = isRecordError(err)
					continue
				}
				checkRestored(t, fx, b, keys, r)
			}
			if reasons[0] == refusedOwner && reasons[1] == refusedSuperseded {
				reasons[1] = refusedOwner // the pair's own record of another source, authenticated
			}
			if reasons[0] != reasons[1] {
				t.Fatalf("verdict %q without a MAC, %q with one", reasons[0], reasons[1])
			}
		}
	})
}

// FuzzStoredRegistration: decodeRegistration never panics; a registration
// it accepts encodes to a record that decodes to the same registration
// (an empty list and no list are the same: JSON writes neither). The input
// is read as a record and sealed as the payload of one.
func FuzzStoredRegistration(f *testing.F) {
	for _, name := range []string{"minimal", "full", "off", "full with defaults"} {
		reg := recRegistrations()[name]
		f.Add(encodeRegistration(&reg, nil))
		f.Add(encodeRegistration(&reg, macKeys{recKeyA}))
		p, err := json.Marshal(reg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
	}
	f.Add([]byte{})
	f.Add([]byte(`{"tenantId":"t1","allowedDomains":[],"pinnedSpki":[],"retryPolicy":{}}`))
	f.Add([]byte(`{"tenantId":"a","staleWhileError":"PT0S","maxRedirects":0,"retryPolicy":{"maxRetries":0,"jitter":"x"}}`))
	f.Add([]byte(`{"maxResponseBytes":-1,"maxTtl":"PT2562047H47M16.854775807S"}`))
	f.Add([]byte(`null`))

	norm := func(r Registration) Registration {
		if len(r.AllowedDomains) == 0 {
			r.AllowedDomains = nil
		}
		if len(r.PinnedSPKI) == 0 {
			r.PinnedSPKI = nil
		}
		return r
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var results [3]error
		for i, in := range []struct {
			b    []byte
			keys macKeys
		}{
			{data, nil},
			{sealRecord(kindRegistration, data, nil), nil},
			{sealRecord(kindRegistration, data, macKeys{recKeyA}), macKeys{recKeyB, recKeyA}},
		} {
			reg, err := decodeRegistration(in.b, in.keys)
			results[i] = err
			if err != nil {
				checkStoredRefusal(t, err)
				continue
			}
			if len(in.b) > maxRegistrationRecord {
				t.Fatalf("accepted a record of %d bytes", len(in.b))
			}
			b := encodeRegistration(&reg, in.keys)
			back, err := decodeRegistration(b, in.keys)
			if err != nil {
				if reason, _ := isRecordError(err); reason == refusedSize && len(b) > maxRegistrationRecord {
					continue // the JSON form written is longer than the one read ("PT168H" for "P1W")
				}
				t.Fatalf("re-encoded registration refused: %v\n%s", err, b)
			}
			if !reflect.DeepEqual(norm(back), norm(reg)) {
				t.Fatalf("round trip through %s:\n got %+v\nwant %+v", b, back, reg)
			}
		}
		reason := func(err error) string { r, _ := isRecordError(err); return r }
		if reason(results[1]) != reason(results[2]) {
			t.Fatalf("verdict %q without a MAC, %q with one", reason(results[1]), reason(results[2]))
		}
	})
}

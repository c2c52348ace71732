package jwkscache

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	jose "github.com/go-jose/go-jose/v4"
)

// The seed corpora in testdata/fuzz/FuzzXxx hold the recorded JWKS
// documents and response headers; the f.Add seeds below add edge cases.
// Run a fuzzer with, for example:
//
//	go test -run='^$' -fuzz=FuzzParseKeySet -fuzztime=20s .

// FuzzParseKeySet: parseKeySet never panics; a set it accepts holds only
// public keys typed like their Go keys, and find, lookup and lookupAlg
// agree with a scan of the keys. It reads the document as encoding/json
// does (the same "keys" member, the same entries), records at most
// maxSkippedKeys skipped keys with their kid cut, and keeps its error texts
// bounded.
func FuzzParseKeySet(f *testing.F) {
	f.Add([]byte(`{"keys":[]}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"","y":""}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","d":"AQAB"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"},null,1,"x",[]]}`))
	f.Add([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","use":"enc","USE":"sig"}]}`))
	f.Add([]byte("\ufeff<html>"))
	f.Add([]byte(`{"keys":{}}`))
	f.Add([]byte(`{"KEYS":[{"kid":"\u212a"}],"k\u0065ys":null,"\u212aeys":[1,{"kid":"a","kid":2},"]\"",[[{}]]]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ks, err := parseKeySet(data)
		var ref struct {
			Keys *[]json.RawMessage `json:"keys"`
		}
		refOK := json.Unmarshal(data, &ref) == nil && ref.Keys != nil
		if err != nil && (len(err.Error()) > 2*maxErrorText || !utf8.ValidString(err.Error())) {
			t.Errorf("error text of %d bytes, valid UTF-8 %v", len(err.Error()), utf8.ValidString(err.Error()))
		}
		switch {
		case err == nil:
			if ks == nil || len(ks.keys) == 0 {
				t.Fatalf("no error and no keys: %+v", ks)
			}
		case errors.Is(err, ErrNoKeys):
			if ks == nil || len(ks.keys) != 0 {
				t.Fatalf("ErrNoKeys with keys: %+v", ks)
			}
		case errors.Is(err, errHTML), errors.Is(err, errNotJWKS):
			if ks != nil {
				t.Fatalf("%v with a key set", err)
			}
			if refOK {
				t.Fatalf("%v for a document encoding/json reads as a JWKS of %d entries", err, len(*ref.Keys))
			}
			return
		default:
			t.Fatalf("unexpected error %v", err)
		}
		if !refOK {
			t.Fatalf("parseKeySet accepted what encoding/json refuses")
		}
		entries := *ref.Keys
		if n := len(ks.keys) + len(ks.skipped) + ks.skippedMore; n != len(entries) {
			t.Errorf("%d keys + %d skipped + %d more for %d entries", len(ks.keys), len(ks.skipped), ks.skippedMore, len(entries))
		}
		if len(ks.skipped) > maxSkippedKeys || ks.skippedMore < 0 || ks.skippedMore > 0 && len(ks.skipped) != maxSkippedKeys {
			t.Errorf("%d records and %d more", len(ks.skipped), ks.skippedMore)
		}
		for i, s := range ks.skipped {
			if s.Reason == "" || i > 0 && s.Index <= ks.skipped[i-1].Index || s.Index < 0 || s.Index >= len(entries) {
				t.Errorf("skipped[%d] = %+v", i, s)
				continue
			}
			if (s.Index >= maxKeysPerSet) != (s.Reason == SkipTooManyKeys) {
				t.Errorf("skipped[%d] = %+v: too_many_keys is for index >= %d only", i, s, maxKeysPerSet)
			}
			// The record names its entry: the kid encoding/json reads
			// there, cut.
			var h struct{ Kid any }
			var kid string
			if json.Unmarshal(entries[s.Index], &h) == nil {
				kid, _ = h.Kid.(string)
			}
			if want := capTo(kid, maxShownID); s.KID != want {
				t.Errorf("skipped[%d] kid %q, want %q", i, s.KID, want)
			}
			// A base64 failure in go-jose is an encoding error, found
			// before go-jose by a typed check.
			var jwk jose.JSONWebKey
			if s.Reason == SkipInvalid && errors.As(jwk.UnmarshalJSON(entries[s.Index]), new(base64.CorruptInputError)) {
				t.Errorf("skipped[%d] = %+v, but go-jose fails on base64", i, s)
			}
		}
		checkKeySet(t, ks)
	})
}

// FuzzFreshness: whatever the caching headers say, the lifetime stays in
// [minTTL, maxTTL] and the refresh lands in [TTL/2, TTL]; an Age of 2^31
// seconds or more makes a max-age response stale; a max-age directive
// appended after the first does not change the result.
func FuzzFreshness(f *testing.F) {
	f.Add("max-age=15, stale-while-revalidate=15, stale-if-error=15", "", "", "", uint32(0), uint32(86370))
	f.Add("no-cache", "0", "", "", uint32(0), uint32(86370))
	f.Add("", "Mon, 01 Jan 1700 00:00:00 GMT", "5", "Sat, 12 Nov 2022 19:33:44 GMT", uint32(0), uint32(86370))
	f.Add("", "Fri, 31 Dec 9999 23:59:59 GMT", "", "Sat, 12 Nov 2022 19:33:44 GMT", uint32(30), uint32(3600))
	f.Add(`private="x`, "", "99999999999999", "", uint32(0), uint32(0))
	f.Add("max-age=99999999999999999999", "", "-1", "", uint32(1<<31), uint32(1<<31))
	f.Add("max-age=60, max-age=3600", "", "", "", uint32(0), uint32(86370))
	f.Add("public, max-age=3600", "", "99999999999999999999", "", uint32(0), uint32(86370))
	f.Add(`ext="a, max-age=1", max-age=300`, "", "2147483648", "", uint32(0), uint32(86370))
	now := time.Date(2022, 11, 12, 19, 33, 44, 0, time.UTC)
	f.Fuzz(func(t *testing.T, cc, expires, age, date string, minExtra, span uint32) {
		h := http.Header{}
		for k, v := range map[string]string{"Cache-Control": cc, "Expires": expires, "Age": age, "Date": date} {
			if v != "" {
				h.Set(k, v)
			}
		}
		minTTL := DefaultMinTTL + time.Duration(minExtra%(366*86400))*time.Second
		maxTTL := minTTL + time.Duration(span)*time.Second
		got := computeFreshness(h, now, minTTL, maxTTL)
		if got.TTL < minTTL || got.TTL > maxTTL {
			t.Fatalf("TTL %v outside [%v, %v]: %+v", got.TTL, minTTL, maxTTL, got)
		}
		if want := min(max(got.Raw, minTTL), maxTTL); got.TTL != want {
			t.Errorf("TTL %v is not Raw %v clamped (%v)", got.TTL, got.Raw, want)
		}
		switch got.Source {
		case "no-cache", "no-store":
			if got.Raw != minTTL {
				t.Errorf("%s: Raw %v, want MinTTL %v", got.Source, got.Raw, minTTL)
			}
		case "default":
			if got.Raw != DefaultTTL {
				t.Errorf("default: Raw %v", got.Raw)
			}
		case "max-age":
			if got.Raw > 1<<31*time.Second {
				t.Errorf("max-age: Raw %v beyond 2^31 s", got.Raw)
			}
		case "expires":
		default:
			t.Errorf("unknown source %q", got.Source)
		}
		d := refreshDelay(got.TTL, DefaultRefreshEarly, DefaultPrefetchJitter, rand.Int64N)
		if d < got.TTL/2 || d > got.TTL {
			t.Errorf("refreshDelay(%v) = %v", got.TTL, d)
		}
		// RFC 9111 section 1.2.2: an Age too large counts as 2^31 s, more
		// than any max-age, so the response is stale.
		if got.Source == "max-age" && ageOverflows(h.Get("Age")) && got.TTL != minTTL {
			t.Errorf("Age %q: TTL %v, want MinTTL %v", h.Get("Age"), got.TTL, minTTL)
		}
		// RFC 9111 section 4.2.1: the first max-age counts, so another one
		// appended changes nothing. (A stray quote outside a directive's
		// argument makes the list split and the whole-header parse
		// disagree about where members end; such input is left out, and
		// so is a value the appended directive would push over
		// maxCacheControl.)
		if got.Source == "max-age" && !strings.ContainsAny(cc, `"\`) && len(cc)+len(", max-age=7") <= maxCacheControl {
			h2 := h.Clone()
			h2.Add("Cache-Control", "max-age=7")
			if again := computeFreshness(h2, now, minTTL, maxTTL); again != got {
				t.Errorf("appending max-age=7 changed %+v to %+v", got, again)
			}
		}
	})
}

// ageOverflows reports whether an Age value is delta-seconds of 2^31 or more.
func ageOverflows(v string) bool {
	v = strings.Trim(v, " \t")
	if v == "" || strings.Trim(v, "0123456789") != "" {
		return false
	}
	n, err := strconv.ParseUint(v, 10, 64)
	return err != nil || n >= 1<<31
}

// FuzzRegistrationJSON: UnmarshalJSON never panics, its errors are short, it
// accepts only documented member names, spelt exactly, and a
// registration it accepts that also passes Validate survives Marshal and
// Unmarshal.
func FuzzRegistrationJSON(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"tenantId":"acme","providerId":"auth0","jwksUrl":"https://acme.eu.auth0.com/.well-known/jwks.json"}`))
	f.Add([]byte(`{"tenantId":"a","providerId":"b","issuer":"https://x.example","staleWhileError":"PT0S","maxRedirects":0,"retryPolicy":{"maxRetries":0}}`))
	f.Add([]byte(`{"tenantId":"a","providerId":"b","jwksUrl":"https://x.example","maxTtl":"PT2562047H47M16.854775807S","prefetchJitter":"PT2562047H47M16.854775807S"}`))
	f.Add([]byte(`{"tenantId":"a"}}`))
	f.Add([]byte(`{"minTtl":"PT1.5M30S"}`))
	f.Add([]byte(`{"tenantId":"a","minTTL":"PT1M"}`))
	f.Add([]byte(`{"retryPolicy":{"maxRetrie\u017f":1,"MaxRetries":2}}`))
	f.Add([]byte(`{"tenantId":"a","tenantId":"b"}`))
	f.Add([]byte(`{"tenantId":"a","providerId":"b","jwksUrl":"https://0x7f000001/jwks"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Registration
		if err := r.UnmarshalJSON(data); err != nil {
			if !errors.Is(err, ErrInvalidRegistration) {
				t.Fatalf("error %v does not match ErrInvalidRegistration", err)
			}
			if n := len(err.Error()); n > 512 {
				t.Fatalf("error text of %d bytes: %.200s", n, err)
			}
			return
		}
		wantExactNames(t, data, registrationFields)
		if err := r.Validate(); err != nil {
			var re *RegistrationError
			if !errors.As(err, &re) || len(re.Fields) == 0 {
				t.Fatalf("Validate error %v is not a *RegistrationError with fields", err)
			}
			return
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		var back Registration
		if err := back.UnmarshalJSON(b); err != nil {
			t.Fatalf("Unmarshal(%s): %v", b, err)
		}
		// An empty list and no list mean the same; JSON writes neither.
		norm := func(r Registration) Registration {
			if len(r.AllowedDomains) == 0 {
				r.AllowedDomains = nil
			}
			if len(r.PinnedSPKI) == 0 {
				r.PinnedSPKI = nil
			}
			return r
		}
		if !reflect.DeepEqual(norm(back), norm(r)) {
			t.Fatalf("round trip through %s:\n got %+v\nwant %+v", b, back, r)
		}
		if err := back.Validate(); err != nil {
			t.Fatalf("round trip made the registration invalid: %v", err)
		}
		// With defaults applied, every effective value is usable by the
		// engine without overflow surprises.
		d := r.WithDefaults()
		if d.MinTTL < DefaultMinTTL || d.MaxTTL < d.MinTTL || d.RefreshEarly < time.Second || d.redirectLimit() > 10 {
			t.Fatalf("validated registration with effective values %+v", d)
		}
		_ = refreshDelay(d.MaxTTL, d.RefreshEarly, d.jitterWindow(), rand.Int64N)
	})
}

// wantExactNames fails unless every member name of the JSON object data is
// one of obj's exactly, once, recursively into obj.nested.
func wantExactNames(t *testing.T, data []byte, obj jsonObject) {
	t.Helper()
	var m map[string]json.RawMessage
	if json.Unmarshal(data, &m) != nil {
		return // null, or not an object
	}
	for name, val := range m {
		if !obj.names[name] {
			t.Fatalf("accepted member %q", name)
		}
		if sub, ok := obj.nested[name]; ok {
			wantExactNames(t, val, sub)
		}
	}
}

// FuzzISODuration: a parsed duration is never negative and formats back to
// itself; every non-negative Duration survives format then parse.
func FuzzISODuration(f *testing.F) {
	for _, s := range []string{"PT30S", "PT0.25S", "PT24H", "PT1H30M", "P1D", "P1W", "PT1.5M", "P1Y", "30s", "PT", "P",
		"PT2562047H47M16.854775807S", "PT2562047H47M16.854775808S", "PT0,5S", "PT.5S"} {
		f.Add(s, int64(len(s))*int64(time.Second))
	}
	f.Add("", int64(-1))
	f.Fuzz(func(t *testing.T, s string, n int64) {
		if d, err := parseISODuration(s); err == nil {
			if d < 0 {
				t.Fatalf("parseISODuration(%q) = %v, negative", s, d)
			}
			back, err := parseISODuration(formatISODuration(d))
			if err != nil || back != d {
				t.Fatalf("parseISODuration(%q) = %v; its format %q parses as %v, %v", s, d, formatISODuration(d), back, err)
			}
		} else if !errors.Is(err, errISODuration) {
			t.Fatalf("error %v does not wrap errISODuration", err)
		}
		d := time.Duration(n)
		if d < 0 {
			d = -(d + 1)
		}
		s = formatISODuration(d)
		if back, err := parseISODuration(s); err != nil || back != d {
			t.Fatalf("formatISODuration(%d) = %q parses as %d, %v", int64(d), s, int64(back), err)
		}
	})
}

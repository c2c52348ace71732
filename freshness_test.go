package jwkscache

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// recordedResponse is one entry of testdata/headers/response-headers.firezone-2022.json.
type recordedResponse struct {
	StatusCode int         `json:"status_code"`
	Headers    [][2]string `json:"headers"`
}

func (r recordedResponse) header() http.Header {
	h := http.Header{}
	for _, kv := range r.Headers {
		h.Add(kv[0], kv[1])
	}
	return h
}

func recordedResponses(t testing.TB) map[string]recordedResponse {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "headers", "response-headers.firezone-2022.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]recordedResponse
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestFreshnessRecordedHeaders computes the lifetime of the seven recorded
// provider responses with the default clamps [30s, 24h].
func TestFreshnessRecordedHeaders(t *testing.T) {
	tests := []struct {
		provider string
		ttl, raw time.Duration
		source   string
	}{
		// public, max-age=21532, must-revalidate, no-transform; Age: 5 (Expires ignored).
		{"google", 21527 * time.Second, 21527 * time.Second, "max-age"},
		// max-age=86400, private: a private cache may use it.
		{"entra-azure", 24 * time.Hour, 24 * time.Hour, "max-age"},
		// public, max-age=15, stale-while-revalidate=15, stale-if-error=86400.
		{"auth0", 30 * time.Second, 15 * time.Second, "max-age"},
		// max-age=3828277 (44 days), must-revalidate.
		{"okta", 24 * time.Hour, 3828277 * time.Second, "max-age"},
		{"keycloak", 30 * time.Second, 30 * time.Second, "no-cache"},
		{"vault", 30 * time.Second, 30 * time.Second, "no-store"},
		// private only: no lifetime given.
		{"onelogin", DefaultTTL, DefaultTTL, "default"},
	}
	recorded := recordedResponses(t)
	var names []string
	for _, tt := range tests {
		names = append(names, tt.provider)
	}
	for p := range recorded {
		if !slices.Contains(names, p) {
			t.Errorf("recorded provider %q has no case", p)
		}
	}
	for _, tt := range tests {
		t.Run(tt.provider, func(t *testing.T) {
			rec, ok := recorded[tt.provider]
			if !ok {
				t.Fatalf("no recorded response for %s", tt.provider)
			}
			h := rec.header()
			now := time.Date(2022, 11, 12, 20, 0, 0, 0, time.UTC)
			if d, err := http.ParseTime(h.Get("Date")); err == nil {
				now = d
			}
			got := computeFreshness(h, now, DefaultMinTTL, DefaultMaxTTL)
			want := freshness{TTL: tt.ttl, Raw: tt.raw, Source: tt.source}
			if got != want {
				t.Errorf("computeFreshness = %+v, want %+v", got, want)
			}
		})
	}
}

func TestFreshnessSynthetic(t *testing.T) {
	const (
		date    = "Sat, 12 Nov 2022 19:33:44 GMT"
		dateP1h = "Sat, 12 Nov 2022 20:33:44 GMT"
		dateM1h = "Sat, 12 Nov 2022 18:33:44 GMT"
	)
	now := time.Date(2022, 11, 12, 19, 33, 44, 0, time.UTC)
	minTTL, maxTTL := DefaultMinTTL, DefaultMaxTTL
	type hdr = [][2]string
	tests := []struct {
		name     string
		h        hdr
		now      time.Time // zero: now
		min, max time.Duration
		want     freshness
	}{
		{"Auth0", hdr{{"Cache-Control", "max-age=15, stale-while-revalidate=15, stale-if-error=15"}}, now, 0, 0,
			freshness{TTL: 30 * time.Second, Raw: 15 * time.Second, Source: "max-age"}},
		{"Okta near a rotation", hdr{{"Cache-Control", "no-cache"}, {"Expires", "0"}, {"Pragma", "no-cache"}}, now, 0, 0,
			freshness{TTL: minTTL, Raw: minTTL, Source: "no-cache"}},
		{"Zitadel", hdr{{"Cache-Control", "no-cache"}}, now, 0, 0,
			freshness{TTL: minTTL, Raw: minTTL, Source: "no-cache"}},
		{"no-cache wins over max-age", hdr{{"Cache-Control", "max-age=3600, no-cache"}}, now, 0, 0,
			freshness{TTL: minTTL, Raw: minTTL, Source: "no-cache"}},
		{"no-store wins over everything", hdr{{"Cache-Control", "no-cache, no-store, max-age=3600"}}, now, 0, 0,
			freshness{TTL: minTTL, Raw: minTTL, Source: "no-store"}},
		{"no-cache with field names", hdr{{"Cache-Control", `no-cache="Set-Cookie", max-age=600`}}, now, 0, 0,
			freshness{TTL: minTTL, Raw: minTTL, Source: "no-cache"}},
		{"max-age=0", hdr{{"Cache-Control", "max-age=0"}}, now, 0, 0,
			freshness{TTL: minTTL, Raw: 0, Source: "max-age"}},
		{"Google with Expires and Age", hdr{{"Date", date}, {"Expires", "Sun, 13 Nov 2022 01:32:36 GMT"},
			{"Cache-Control", "public, max-age=21532, must-revalidate, no-transform"}, {"Age", "5"}}, now, 0, 0,
			freshness{TTL: 21527 * time.Second, Raw: 21527 * time.Second, Source: "max-age"}},
		{"no headers", nil, now, 0, 0, freshness{TTL: DefaultTTL, Raw: DefaultTTL, Source: "default"}},
		{"Expires in the past", hdr{{"Date", date}, {"Expires", dateM1h}}, now, 0, 0,
			freshness{TTL: minTTL, Raw: -time.Hour, Source: "expires"}},
		{"Expires with Date", hdr{{"Date", date}, {"Expires", dateP1h}}, now.Add(time.Hour), 0, 0,
			freshness{TTL: time.Hour, Raw: time.Hour, Source: "expires"}},
		{"Expires without Date uses now", hdr{{"Expires", dateP1h}}, now.Add(10 * time.Minute), 0, 0,
			freshness{TTL: 50 * time.Minute, Raw: 50 * time.Minute, Source: "expires"}},
		{"Expires with invalid Date uses now", hdr{{"Date", "yesterday"}, {"Expires", dateP1h}}, now, 0, 0,
			freshness{TTL: time.Hour, Raw: time.Hour, Source: "expires"}},
		{"Expires minus Age", hdr{{"Date", date}, {"Expires", dateP1h}, {"Age", "600"}}, now, 0, 0,
			freshness{TTL: 50 * time.Minute, Raw: 50 * time.Minute, Source: "expires"}},
		{"Expires in RFC 850 format", hdr{{"Date", date}, {"Expires", "Saturday, 12-Nov-22 20:33:44 GMT"}}, now, 0, 0,
			freshness{TTL: time.Hour, Raw: time.Hour, Source: "expires"}},
		{`invalid Expires "0" means expired`, hdr{{"Expires", "0"}}, now, 0, 0,
			freshness{TTL: minTTL, Raw: 0, Source: "expires"}},
		{"Expires far in the future", hdr{{"Date", date}, {"Expires", "Fri, 31 Dec 9999 23:59:59 GMT"}}, now, 0, 0,
			freshness{TTL: maxTTL, Raw: math.MaxInt64, Source: "expires"}},
		// Regression: Expires minus Date saturated at the minimum Duration,
		// and subtracting Age then wrapped around to a huge lifetime (TTL
		// 24h for a response expired 322 years ago).
		{"Expires centuries in the past, with Age", hdr{{"Date", date}, {"Expires", "Mon, 01 Jan 1700 00:00:00 GMT"}, {"Age", "5"}}, now, 0, 0,
			freshness{TTL: minTTL, Raw: math.MinInt64, Source: "expires"}},
		{"Cache-Control without lifetime falls back to Expires", hdr{{"Cache-Control", "public, must-revalidate"}, {"Date", date}, {"Expires", dateP1h}}, now, 0, 0,
			freshness{TTL: time.Hour, Raw: time.Hour, Source: "expires"}},
		{"malformed max-age falls back to Expires", hdr{{"Cache-Control", "max-age=abc"}, {"Date", date}, {"Expires", dateP1h}}, now, 0, 0,
			freshness{TTL: time.Hour, Raw: time.Hour, Source: "expires"}},
		{"malformed max-age without Expires", hdr{{"Cache-Control", "max-age=1h"}}, now, 0, 0,
			freshness{TTL: DefaultTTL, Raw: DefaultTTL, Source: "default"}},
		{"negative max-age", hdr{{"Cache-Control", "max-age=-60"}}, now, 0, 0,
			freshness{TTL: DefaultTTL, Raw: DefaultTTL, Source: "default"}},
		{"max-age without value", hdr{{"Cache-Control", "max-age"}}, now, 0, 0,
			freshness{TTL: DefaultTTL, Raw: DefaultTTL, Source: "default"}},
		{"max-age= at the end", hdr{{"Cache-Control", "public, max-age="}}, now, 0, 0,
			freshness{TTL: DefaultTTL, Raw: DefaultTTL, Source: "default"}},
		{"unterminated quote ignores the header, no-cache too", hdr{{"Cache-Control", `no-cache, private="x`}}, now, 0, 0,
			freshness{TTL: DefaultTTL, Raw: DefaultTTL, Source: "default"}},
		{"directive with an argument it does not take", hdr{{"Cache-Control", "no-store=1"}}, now, 0, 0,
			freshness{TTL: DefaultTTL, Raw: DefaultTTL, Source: "default"}},
		{"quoted max-age", hdr{{"Cache-Control", `max-age="600"`}}, now, 0, 0,
			freshness{TTL: 10 * time.Minute, Raw: 10 * time.Minute, Source: "max-age"}},
		{"upper-case directive", hdr{{"Cache-Control", "MAX-AGE=600"}}, now, 0, 0,
			freshness{TTL: 10 * time.Minute, Raw: 10 * time.Minute, Source: "max-age"}},
		{"max-age beyond 32 bits", hdr{{"Cache-Control", "max-age=99999999999999999999"}}, now, 0, 0,
			freshness{TTL: maxTTL, Raw: math.MaxInt32 * time.Second, Source: "max-age"}},
		{"unknown extensions ignored", hdr{{"Cache-Control", `community="UCI", max-age=600, immutable`}}, now, 0, 0,
			freshness{TTL: 10 * time.Minute, Raw: 10 * time.Minute, Source: "max-age"}},
		{"s-maxage is for shared caches", hdr{{"Cache-Control", "s-maxage=7200"}}, now, 0, 0,
			freshness{TTL: DefaultTTL, Raw: DefaultTTL, Source: "default"}},
		{"Age larger than max-age", hdr{{"Cache-Control", "max-age=60"}, {"Age", "3600"}}, now, 0, 0,
			freshness{TTL: minTTL, Raw: 60*time.Second - time.Hour, Source: "max-age"}},
		{"Age invalid is ignored", hdr{{"Cache-Control", "max-age=600"}, {"Age", "five"}}, now, 0, 0,
			freshness{TTL: 10 * time.Minute, Raw: 10 * time.Minute, Source: "max-age"}},
		{"Age negative is ignored", hdr{{"Cache-Control", "max-age=600"}, {"Age", "-100"}}, now, 0, 0,
			freshness{TTL: 10 * time.Minute, Raw: 10 * time.Minute, Source: "max-age"}},
		{"Age huge", hdr{{"Cache-Control", "max-age=600"}, {"Age", "99999999999999"}}, now, 0, 0,
			freshness{TTL: minTTL, Raw: 600*time.Second - 1<<31*time.Second, Source: "max-age"}},
		{"multiple Cache-Control lines", hdr{{"Cache-Control", "public"}, {"Cache-Control", "max-age=120"}}, now, 0, 0,
			freshness{TTL: 2 * time.Minute, Raw: 2 * time.Minute, Source: "max-age"}},
		{"no-cache on a second line", hdr{{"Cache-Control", "max-age=120"}, {"Cache-Control", "no-cache"}}, now, 0, 0,
			freshness{TTL: minTTL, Raw: minTTL, Source: "no-cache"}},
		{"custom clamps: floor", hdr{{"Cache-Control", "max-age=15"}}, now, time.Minute, time.Hour,
			freshness{TTL: time.Minute, Raw: 15 * time.Second, Source: "max-age"}},
		{"custom clamps: ceiling", hdr{{"Cache-Control", "max-age=86400"}}, now, time.Minute, time.Hour,
			freshness{TTL: time.Hour, Raw: 24 * time.Hour, Source: "max-age"}},
		{"custom clamps: inside", hdr{{"Cache-Control", "max-age=1800"}}, now, time.Minute, time.Hour,
			freshness{TTL: 30 * time.Minute, Raw: 30 * time.Minute, Source: "max-age"}},
		{"custom clamps: no-cache gives MinTTL", hdr{{"Cache-Control", "no-cache"}}, now, 5 * time.Minute, time.Hour,
			freshness{TTL: 5 * time.Minute, Raw: 5 * time.Minute, Source: "no-cache"}},
		{"custom clamps: default above MaxTTL", nil, now, time.Minute, 5 * time.Minute,
			freshness{TTL: 5 * time.Minute, Raw: DefaultTTL, Source: "default"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for _, kv := range tt.h {
				h.Add(kv[0], kv[1])
			}
			lo, hi := tt.min, tt.max
			if lo == 0 {
				lo, hi = minTTL, maxTTL
			}
			if got := computeFreshness(h, tt.now, lo, hi); got != tt.want {
				t.Errorf("computeFreshness = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// pinnedRnd returns v (at most n-1) and records the n it was asked for.
func pinnedRnd(v int64, gotN *int64) func(int64) int64 {
	return func(n int64) int64 {
		*gotN = n
		if n <= 0 {
			panic("rnd called with n <= 0") // as rand.Int64N does
		}
		return min(v, n-1)
	}
}

func TestRefreshDelay(t *testing.T) {
	const year = 365 * 24 * time.Hour
	tests := []struct {
		name               string
		ttl, early, jitter time.Duration
		rnd                int64 // what the fake rnd returns (capped at n-1)
		want               time.Duration
		wantN              int64 // the n rnd is called with; 0: not called
	}{
		{"80% wins", time.Hour, 30 * time.Second, 0, 0, 48 * time.Minute, 0},
		{"80% of 24h", 24 * time.Hour, 30 * time.Second, 0, 0, 24 * time.Hour * 8 / 10, 0},
		{"ttl-early wins", 100 * time.Second, 30 * time.Second, 0, 0, 70 * time.Second, 0},
		{"ttl-early wins at 10m with early 5m", 10 * time.Minute, 3 * time.Minute, 0, 0, 7 * time.Minute, 0},
		{"equal", 150 * time.Second, 30 * time.Second, 0, 0, 120 * time.Second, 0},
		{"floor: early larger than ttl", 30 * time.Second, time.Hour, 0, 0, 15 * time.Second, 0},
		{"floor: MinTTL with early 30s", 30 * time.Second, 30 * time.Second, 0, 0, 15 * time.Second, 0},
		{"jitter pinned", time.Hour, 30 * time.Second, 5 * time.Second, int64(3 * time.Second), 48*time.Minute - 3*time.Second, int64(5*time.Second) + 1},
		{"jitter zero drawn", time.Hour, 30 * time.Second, 5 * time.Second, 0, 48 * time.Minute, int64(5*time.Second) + 1},
		{"jitter upper bound inclusive", time.Hour, 30 * time.Second, 5 * time.Second, math.MaxInt64, 48*time.Minute - 5*time.Second, int64(5*time.Second) + 1},
		{"jitter never before half", time.Minute, 30 * time.Second, time.Hour, math.MaxInt64, 30 * time.Second, 0},
		{"jitter off (negative)", time.Hour, 30 * time.Second, -1, 0, 48 * time.Minute, 0},
		{"jitter 1ns", time.Hour, 30 * time.Second, 1, 1, 48*time.Minute - 1, 2},
		// Regression: ttl*8/10 overflowed for ttls over 36 years and the
		// refresh fell back to ttl/2.
		{"huge ttl", 60 * year, 30 * time.Second, 0, 0, 48 * year, 0},
		// Regression: jitter+1 overflowed, and rand.Int64N panics on n <= 0.
		{"max jitter", 24 * time.Hour, 30 * time.Second, math.MaxInt64, 0, 24 * time.Hour * 8 / 10, math.MaxInt64},
		{"max jitter drawn", 24 * time.Hour, 30 * time.Second, math.MaxInt64, math.MaxInt64, 12 * time.Hour, math.MaxInt64},
		{"max jitter with early beyond ttl", 30 * time.Second, time.Hour, math.MaxInt64, math.MaxInt64, 15 * time.Second, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gotN int64
			got := refreshDelay(tt.ttl, tt.early, tt.jitter, pinnedRnd(tt.rnd, &gotN))
			if got != tt.want {
				t.Errorf("refreshDelay(%v, %v, %v) = %v, want %v", tt.ttl, tt.early, tt.jitter, got, tt.want)
			}
			if tt.wantN != 0 && gotN != tt.wantN {
				t.Errorf("rnd called with n = %d, want %d", gotN, tt.wantN)
			}
		})
	}
}

// TestRefreshDelayBounds checks the rule on random inputs with the real
// random source: never before ttl/2, never after the earlier of ttl-early
// and 80%, and never earlier than that minus the jitter.
func TestRefreshDelayBounds(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		ttl := DefaultMinTTL + time.Duration(r.Int64N(int64(48*time.Hour)))
		early := time.Second + time.Duration(r.Int64N(int64(2*time.Hour)))
		jitter := time.Duration(r.Int64N(int64(10*time.Minute))) - time.Minute
		got := refreshDelay(ttl, early, jitter, rand.Int64N)
		hi := max(min(ttl-early, ttl-ttl/5), ttl/2) // 80%, rounded up to the nanosecond
		lo := max(hi-max(jitter, 0), ttl/2)
		if got < lo || got > hi {
			t.Fatalf("refreshDelay(%v, %v, %v) = %v, want in [%v, %v]", ttl, early, jitter, got, lo, hi)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"120", 2 * time.Minute},
		{" 120 ", 2 * time.Minute},
		{"0", 0},
		{"", 0},
		{"-5", 0},
		{"99999999999", 24 * time.Hour},
		{"99999999999999999999999", 0}, // not an int64 nor a date
		{"1.5", 0},
		{"soon", 0},
		{"Fri, 01 Mar 2024 12:01:30 GMT", 90 * time.Second},
		{"Friday, 01-Mar-24 12:01:30 GMT", 90 * time.Second}, // RFC 850
		{"Fri Mar  1 12:01:30 2024", 90 * time.Second},       // asctime
		{"Fri, 01 Mar 2024 11:00:00 GMT", 0},                 // in the past
		{"Fri, 01 Mar 2024 12:00:00 GMT", 0},
		{"Fri, 01 Mar 2024 12:01:30 +0000", 0}, // not an HTTP-date
	}
	for _, tt := range tests {
		if got := retryAfter(tt.in, now); got != tt.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestFreshnessAgeOverflowAndRepeats: RFC 9111 section 1.2.2, an Age too
// large to represent counts as 2^31 seconds (so the response is stale and
// gets MinTTL), never as 0; section 4.2.1, of repeated max-age directives
// the first counts (cacheobject alone keeps the last).
func TestFreshnessAgeOverflowAndRepeats(t *testing.T) {
	const date = "Sat, 12 Nov 2022 19:33:44 GMT"
	now := time.Date(2022, 11, 12, 19, 33, 44, 0, time.UTC)
	const overflow = 1 << 31 * time.Second
	type hdr = [][2]string
	for _, tt := range []struct {
		name string
		h    hdr
		want freshness
	}{
		{"Age past 64 bits", hdr{{"Cache-Control", "max-age=3600"}, {"Age", "99999999999999999999"}},
			freshness{TTL: DefaultMinTTL, Raw: time.Hour - overflow, Source: "max-age"}},
		{"Age of 1000 digits", hdr{{"Cache-Control", "max-age=3600"}, {"Age", strings.Repeat("9", 1000)}},
			freshness{TTL: DefaultMinTTL, Raw: time.Hour - overflow, Source: "max-age"}},
		{"Age 2^64", hdr{{"Cache-Control", "max-age=3600"}, {"Age", "18446744073709551616"}},
			freshness{TTL: DefaultMinTTL, Raw: time.Hour - overflow, Source: "max-age"}},
		{"Age 2^31", hdr{{"Cache-Control", "max-age=3600"}, {"Age", "2147483648"}},
			freshness{TTL: DefaultMinTTL, Raw: time.Hour - overflow, Source: "max-age"}},
		{"Age 2^31+1", hdr{{"Cache-Control", "max-age=3600"}, {"Age", "2147483649"}},
			freshness{TTL: DefaultMinTTL, Raw: time.Hour - overflow, Source: "max-age"}},
		{"Age 2^31-1", hdr{{"Cache-Control", "max-age=3600"}, {"Age", "2147483647"}},
			freshness{TTL: DefaultMinTTL, Raw: time.Hour - overflow + time.Second, Source: "max-age"}},
		{"Age overflow with Expires", hdr{{"Date", date}, {"Expires", "Sat, 12 Nov 2022 20:33:44 GMT"}, {"Age", "99999999999999999999"}},
			freshness{TTL: DefaultMinTTL, Raw: time.Hour - overflow, Source: "expires"}},
		{"Age list: the first counts", hdr{{"Cache-Control", "max-age=3600"}, {"Age", "600, 7200"}},
			freshness{TTL: 50 * time.Minute, Raw: 50 * time.Minute, Source: "max-age"}},
		{"Age with a plus sign is invalid", hdr{{"Cache-Control", "max-age=3600"}, {"Age", "+600"}},
			freshness{TTL: time.Hour, Raw: time.Hour, Source: "max-age"}},
		{"Age with inner space is invalid", hdr{{"Cache-Control", "max-age=3600"}, {"Age", "6 00"}},
			freshness{TTL: time.Hour, Raw: time.Hour, Source: "max-age"}},

		{"max-age twice: the first counts", hdr{{"Cache-Control", "max-age=60, max-age=3600"}},
			freshness{TTL: time.Minute, Raw: time.Minute, Source: "max-age"}},
		{"max-age twice, larger first", hdr{{"Cache-Control", "max-age=3600, private, max-age=60"}},
			freshness{TTL: time.Hour, Raw: time.Hour, Source: "max-age"}},
		{"max-age on two field lines", hdr{{"Cache-Control", "max-age=120"}, {"Cache-Control", "max-age=86400"}},
			freshness{TTL: 2 * time.Minute, Raw: 2 * time.Minute, Source: "max-age"}},
		{"max-age twice in other cases", hdr{{"Cache-Control", "Max-Age=300, MAX-AGE=7200"}},
			freshness{TTL: 5 * time.Minute, Raw: 5 * time.Minute, Source: "max-age"}},
		{"a comma in a quoted string is not a separator", hdr{{"Cache-Control", `ext="a, max-age=1", max-age=300`}},
			freshness{TTL: 5 * time.Minute, Raw: 5 * time.Minute, Source: "max-age"}},
		{"an escaped quote does not end the string", hdr{{"Cache-Control", `ext="a\", max-age=1", max-age=300, max-age=9`}},
			freshness{TTL: 5 * time.Minute, Raw: 5 * time.Minute, Source: "max-age"}},
		{"quoted first max-age", hdr{{"Cache-Control", `max-age="600", max-age=60`}},
			freshness{TTL: 10 * time.Minute, Raw: 10 * time.Minute, Source: "max-age"}},
		{"max-age twice minus Age", hdr{{"Cache-Control", "max-age=600, max-age=60"}, {"Age", "100"}},
			freshness{TTL: 500 * time.Second, Raw: 500 * time.Second, Source: "max-age"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for _, kv := range tt.h {
				h.Add(kv[0], kv[1])
			}
			if got := computeFreshness(h, now, DefaultMinTTL, DefaultMaxTTL); got != tt.want {
				t.Errorf("computeFreshness = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestFreshnessLongCacheControl: a Cache-Control value over maxCacheControl
// is ignored as a whole, like one that does not parse, rather than handed to
// a parser whose cost grows with the square of its length.
func TestFreshnessLongCacheControl(t *testing.T) {
	const date = "Sat, 12 Nov 2022 19:33:44 GMT"
	now := time.Date(2022, 11, 12, 19, 33, 44, 0, time.UTC)
	pad := func(head string, n int) string { return head + strings.Repeat(" ", n-len(head)) }
	for _, tt := range []struct {
		name string
		cc   []string
		exp  string
		want freshness
	}{
		{"at the limit", []string{pad("max-age=600", maxCacheControl)}, "",
			freshness{TTL: 10 * time.Minute, Raw: 10 * time.Minute, Source: "max-age"}},
		{"over the limit", []string{pad("max-age=600", maxCacheControl+1)}, "",
			freshness{TTL: DefaultTTL, Raw: DefaultTTL, Source: "default"}},
		{"over the limit falls back to Expires", []string{pad("no-store", maxCacheControl+1)}, "Sat, 12 Nov 2022 20:33:44 GMT",
			freshness{TTL: time.Hour, Raw: time.Hour, Source: "expires"}},
		{"over the limit across field lines", []string{pad("max-age=600", maxCacheControl/2), pad("public", maxCacheControl/2)}, "",
			freshness{TTL: DefaultTTL, Raw: DefaultTTL, Source: "default"}},
		{"many quoted strings", []string{strings.Repeat(`a="",`, 64<<10/5) + "max-age=600"}, "",
			freshness{TTL: DefaultTTL, Raw: DefaultTTL, Source: "default"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{"Cache-Control": tt.cc}
			if tt.exp != "" {
				h.Set("Date", date)
				h.Set("Expires", tt.exp)
			}
			if got := computeFreshness(h, now, DefaultMinTTL, DefaultMaxTTL); got != tt.want {
				t.Errorf("computeFreshness = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSplitList(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		want     []string
	}{
		{"empty", "", []string{""}},
		{"one", "max-age=60", []string{"max-age=60"}},
		{"several", "a, b,c", []string{"a", " b", "c"}},
		{"empty members", ",a,,", []string{"", "a", "", ""}},
		{"quoted comma", `a="x,y", b`, []string{`a="x,y"`, " b"}},
		{"escaped quote", `a="x\",y", b`, []string{`a="x\",y"`, " b"}},
		{"unterminated quote", `a="x, b`, []string{`a="x, b`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := splitList(tt.in); !slices.Equal(got, tt.want) {
				t.Errorf("splitList(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

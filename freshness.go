package jwkscache

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pquerna/cachecontrol/cacheobject"
)

// freshness is the lifetime computed for one response.
type freshness struct {
	TTL    time.Duration // clamped to [MinTTL, MaxTTL]
	Raw    time.Duration // before clamping (may be negative for a stale response)
	Source string        // "max-age", "no-cache", "no-store", "expires", "default"
}

// computeFreshness derives the freshness lifetime of a response from its
// headers (RFC 9111 section 4.2.1, from the point of view of a private
// cache): Cache-Control no-store or no-cache (which for us means "revalidate
// every time") give minTTL, never a hot loop; else max-age minus Age; else
// Expires minus Date (minus Age); else DefaultTTL. The result is clamped to
// [minTTL, maxTTL]. A Cache-Control header that does not parse, or is longer
// than maxCacheControl, is ignored as a whole, as is an s-maxage (we are not
// a shared cache). Of repeated max-age
// directives the first counts (RFC 9111 section 4.2.1). now stands in for a
// missing or invalid Date header.
func computeFreshness(h http.Header, now time.Time, minTTL, maxTTL time.Duration) freshness {
	f := rawFreshness(h, now, minTTL)
	f.TTL = min(max(f.Raw, minTTL), maxTTL)
	return f
}

func rawFreshness(h http.Header, now time.Time, minTTL time.Duration) freshness {
	age := parseAge(h.Get("Age"))
	if cc := strings.Join(h.Values("Cache-Control"), ", "); cc != "" && len(cc) <= maxCacheControl {
		if d, err := cacheobject.ParseResponseCacheControl(cc); err == nil {
			switch {
			case d.NoStore:
				return freshness{Raw: minTTL, Source: "no-store"}
			case d.NoCachePresent:
				return freshness{Raw: minTTL, Source: "no-cache"}
			case d.MaxAge >= 0:
				return freshness{Raw: time.Duration(firstMaxAge(cc, d.MaxAge))*time.Second - age, Source: "max-age"}
			}
		}
	}
	if exp := h.Get("Expires"); exp != "" {
		// RFC 9111 section 5.3: an invalid Expires (such as "0") means
		// "already expired".
		et, err := http.ParseTime(exp)
		if err != nil {
			return freshness{Raw: 0, Source: "expires"}
		}
		date, err := http.ParseTime(h.Get("Date"))
		if err != nil {
			date = now
		}
		// Sub saturates on dates centuries apart; subtracting age from
		// its result could then wrap around, so move Expires instead.
		return freshness{Raw: et.Add(-age).Sub(date), Source: "expires"}
	}
	return freshness{Raw: DefaultTTL, Source: "default"}
}

// maxCacheControl bounds the Cache-Control value handed to cacheobject,
// whose parser allocates the rest of the value for every quoted string: a
// 64 KiB value of a="" directives costs it about 440 MB of allocation.
// Real values are a few dozen bytes.
const maxCacheControl = 4 << 10

// firstMaxAge returns the value of the first max-age directive of the
// Cache-Control value cc, whose parse as a whole gave parsed.
//
// cacheobject keeps the last of repeated directives, while RFC 9111 section
// 4.2.1 says to use the first (or to treat the response as stale). So cc is
// cut into its list members (RFC 9110 section 5.6.1: commas outside quoted
// strings) and each member is parsed on its own by cacheobject, which stays
// the only directive parser; the first member that is a max-age wins. When
// no member is (cacheobject reads an unquoted private= or no-cache= value up
// to the next space, commas included, so the two readings can differ on
// such input), parsed stands.
func firstMaxAge(cc string, parsed cacheobject.DeltaSeconds) cacheobject.DeltaSeconds {
	for _, member := range splitList(cc) {
		if d, err := cacheobject.ParseResponseCacheControl(member); err == nil && d.MaxAge >= 0 {
			return d.MaxAge
		}
	}
	return parsed
}

// splitList cuts a comma-separated header value into its members at the
// commas outside quoted strings (a backslash escapes the next character
// inside one). Members are not trimmed; empty ones are kept.
func splitList(v string) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case c == ',' && !quoted:
			out = append(out, v[start:i])
			start = i + 1
		}
	}
	return append(out, v[start:])
}

// ageOverflow is the value of a delta-seconds too large to represent (RFC
// 9111 section 1.2.2): 2^31 seconds, over 68 years.
const ageOverflow = 1 << 31

// parseAge reads an Age header: delta-seconds, one or more digits (RFC 9111
// section 5.1). A value of 2^31 or more, however many digits it has, counts
// as 2^31 seconds (section 1.2.2), so the response is stale. Of a list (the
// field repeated and folded into one line) the first member counts, as for
// other repeated fields (section 4.2.1). Any other value is invalid and the
// header is ignored: it counts as 0.
func parseAge(v string) time.Duration {
	v, _, _ = strings.Cut(v, ",")
	v = strings.Trim(v, " \t")
	if v == "" {
		return 0
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0
		}
	}
	// All digits: the only error is ErrRange, past 2^64.
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n > ageOverflow {
		n = ageOverflow
	}
	return time.Duration(n) * time.Second
}

// refreshDelay is how long after a fetch the next background refresh is due:
// the earlier of ttl-early and 80% of ttl, minus a random jitter in
// [0, jitter], never before half the ttl. rnd returns a uniform value in
// [0, n); it is a parameter so tests can pin it.
func refreshDelay(ttl, early, jitter time.Duration, rnd func(n int64) int64) time.Duration {
	// ttl-ttl/5 is 80% without the overflow of ttl*8/10 (ttls over 36
	// years). The floor is applied before the jitter too, so that
	// subtracting a huge jitter from a negative d cannot wrap around.
	d := max(min(ttl-early, ttl-ttl/5), ttl/2)
	if jitter > 0 {
		n := int64(jitter)
		if n < math.MaxInt64 {
			n++ // [0, jitter] inclusive, as documented
		}
		d -= time.Duration(rnd(n))
	}
	return max(d, ttl/2)
}

// retryAfter parses a Retry-After header: delta-seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0
		}
		return time.Duration(min(n, 24*3600)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0)
	}
	return 0
}

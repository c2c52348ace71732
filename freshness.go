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
// [minTTL, maxTTL]. A Cache-Control header that does not parse is ignored as
// a whole, as is an s-maxage (we are not a shared cache). now stands in for a
// missing or invalid Date header.
func computeFreshness(h http.Header, now time.Time, minTTL, maxTTL time.Duration) freshness {
	f := rawFreshness(h, now, minTTL)
	f.TTL = min(max(f.Raw, minTTL), maxTTL)
	return f
}

func rawFreshness(h http.Header, now time.Time, minTTL time.Duration) freshness {
	age := parseAge(h.Get("Age"))
	if cc := strings.Join(h.Values("Cache-Control"), ", "); cc != "" {
		if d, err := cacheobject.ParseResponseCacheControl(cc); err == nil {
			switch {
			case d.NoStore:
				return freshness{Raw: minTTL, Source: "no-store"}
			case d.NoCachePresent:
				return freshness{Raw: minTTL, Source: "no-cache"}
			case d.MaxAge >= 0:
				return freshness{Raw: time.Duration(d.MaxAge)*time.Second - age, Source: "max-age"}
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

// parseAge reads an Age header (delta-seconds); invalid values count as 0.
func parseAge(v string) time.Duration {
	if v == "" {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	const maxAge = int64(1<<31 - 1)
	return time.Duration(min(n, maxAge)) * time.Second
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

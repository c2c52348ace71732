package jwkscache

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"time"
)

// formatISODuration formats a non-negative duration as an ISO-8601 duration
// in the PT form used by the JSON API: PT30S, PT0.25S, PT24H, PT1H30M.
func formatISODuration(d time.Duration) string {
	if d <= 0 {
		return "PT0S"
	}
	var b strings.Builder
	b.WriteString("PT")
	if h := d / time.Hour; h > 0 {
		b.WriteString(strconv.FormatInt(int64(h), 10))
		b.WriteByte('H')
		d -= h * time.Hour
	}
	if m := d / time.Minute; m > 0 {
		b.WriteString(strconv.FormatInt(int64(m), 10))
		b.WriteByte('M')
		d -= m * time.Minute
	}
	if d > 0 {
		s := strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
		b.WriteString(s)
		b.WriteByte('S')
	}
	return b.String()
}

var errISODuration = errors.New("not an ISO-8601 duration such as PT30S, PT0.25S or PT24H")

// isoUnits are the components of P[nW][nD][T[nH][nM][nS]], in the order
// ISO 8601 writes them.
var isoUnits = [...]struct {
	unit   byte
	inTime bool // after the T
	d      time.Duration
}{
	{'W', false, 7 * 24 * time.Hour},
	{'D', false, 24 * time.Hour},
	{'H', true, time.Hour},
	{'M', true, time.Minute},
	{'S', true, time.Second},
}

// parseISODuration parses an ISO-8601 duration of the form
// P[nW][nD][T[nH][nM][n[.f]S]], components in that order, a decimal
// fraction (with '.' or ',') on the last component only. Years and months
// are refused: their length is not fixed. Negative durations are refused.
// The arithmetic is exact to the nanosecond, so that
// parseISODuration(formatISODuration(d)) == d for every d >= 0.
func parseISODuration(s string) (time.Duration, error) {
	orig := s // quoted in errors with showID: a JSON document may hold megabytes
	if len(s) < 3 || s[0] != 'P' {
		return 0, fmt.Errorf("%s: %w", showID(orig), errISODuration)
	}
	s = s[1:]
	var total time.Duration
	inTime := false
	next := 0 // the first entry of isoUnits still allowed
	for s != "" {
		if s[0] == 'T' {
			if inTime {
				return 0, fmt.Errorf("%s: %w", showID(orig), errISODuration)
			}
			inTime = true
			s = s[1:]
			if s == "" {
				return 0, fmt.Errorf("%s: %w", showID(orig), errISODuration)
			}
			continue
		}
		i := 0
		for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.' || s[i] == ',') {
			i++
		}
		if i == 0 || i == len(s) {
			return 0, fmt.Errorf("%s: %w", showID(orig), errISODuration)
		}
		num, unit := s[:i], s[i]
		s = s[i+1:]
		u := next
		for u < len(isoUnits) && (isoUnits[u].unit != unit || isoUnits[u].inTime != inTime) {
			u++
		}
		if u == len(isoUnits) {
			// Unknown (Y, or M before the T), repeated, out of order, or on
			// the wrong side of the T.
			return 0, fmt.Errorf("%s: unit %q: %w", showID(orig), unit, errISODuration)
		}
		next = u + 1
		whole, frac, hasFrac := strings.Cut(strings.ReplaceAll(num, ",", "."), ".")
		if whole == "" || hasFrac && (frac == "" || strings.Contains(frac, ".")) {
			return 0, fmt.Errorf("%s: %w", showID(orig), errISODuration)
		}
		// A fraction is allowed on the smallest unit only (ISO 8601), which
		// here means: nothing may follow a fractional component.
		if hasFrac && s != "" {
			return 0, fmt.Errorf("%s: fraction on a non-final component: %w", showID(orig), errISODuration)
		}
		v, ok := scaleDecimal(whole, frac, isoUnits[u].d)
		if !ok || v > math.MaxInt64-total {
			return 0, fmt.Errorf("%s: too long: %w", showID(orig), errISODuration)
		}
		total += v
	}
	return total, nil
}

// scaleDecimal returns whole.frac times unit, rounded to the nanosecond,
// and false when it does not fit in a Duration. whole and frac are decimal
// digits.
func scaleDecimal(whole, frac string, unit time.Duration) (time.Duration, bool) {
	whole = strings.TrimLeft(whole, "0")
	n := int64(0)
	if whole != "" {
		var err error
		if n, err = strconv.ParseInt(whole, 10, 64); err != nil || n > math.MaxInt64/int64(unit) {
			return 0, false
		}
	}
	v := time.Duration(n) * unit
	if frac == "" {
		return v, true
	}
	// Digits past the 18th are below a thousandth of a nanosecond of a week.
	frac = frac[:min(len(frac), 18)]
	f, err := strconv.ParseUint(frac, 10, 64)
	if err != nil {
		return 0, false
	}
	pow := uint64(1)
	for range len(frac) {
		pow *= 10
	}
	// f < pow, so f*unit/pow < unit: the 128-bit quotient fits.
	hi, lo := bits.Mul64(f, uint64(unit))
	q, r := bits.Div64(hi, lo, pow)
	if r >= pow-r {
		q++
	}
	if time.Duration(q) > math.MaxInt64-v {
		return 0, false
	}
	return v + time.Duration(q), true
}

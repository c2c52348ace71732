package jwkscache

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestParseISODuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"PT30S", 30 * time.Second},
		{"PT0.25S", 250 * time.Millisecond},
		{"PT0,25S", 250 * time.Millisecond}, // ISO 8601 prefers the comma
		{"PT24H", 24 * time.Hour},
		{"PT1H30M", 90 * time.Minute},
		{"PT1H30M15S", time.Hour + 30*time.Minute + 15*time.Second},
		{"PT1.5M", 90 * time.Second}, // a fraction on the last component
		{"PT1.5H", 90 * time.Minute},
		{"PT0.000000001S", time.Nanosecond},
		{"PT0.0000000005S", time.Nanosecond}, // rounded half up
		{"PT0.0000000004S", 0},
		{"PT0.1234567891234567891234S", 123456789 * time.Nanosecond},
		{"PT0S", 0},
		{"P0D", 0},
		{"P1D", 24 * time.Hour},
		{"P1.5D", 36 * time.Hour},
		{"P1W", 7 * 24 * time.Hour},
		{"P1W1D", 8 * 24 * time.Hour},
		{"P1DT12H", 36 * time.Hour},
		{"P2DT3H4M5.5S", 2*24*time.Hour + 3*time.Hour + 4*time.Minute + 5500*time.Millisecond},
		{"PT36H", 36 * time.Hour},
		{"PT90M", 90 * time.Minute},
		{"PT3600S", time.Hour},
		{"PT007S", 7 * time.Second},
		{"PT2562047H47M16.854775807S", math.MaxInt64},
		{"PT9223372036.854775807S", math.MaxInt64},
		{"PT9223372036S", 9223372036 * time.Second},
		{"P15250W", 15250 * 7 * 24 * time.Hour}, // 292 years fit
	}
	for _, tt := range tests {
		got, err := parseISODuration(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("parseISODuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseISODurationRefused(t *testing.T) {
	for _, in := range []string{
		"",
		"P",
		"PT",
		"P1DT",
		"T30S",
		"30s",
		"30",
		"pt30s", // designators are upper-case
		"PT30s",
		"P1Y",   // years and months have no fixed length
		"P1M",   // months (M before the T)
		"P1Y2M", //
		"PT1D",  // days after the T
		"P1H",   // hours before the T
		"P1S",
		"-PT30S", // negative
		"PT-30S",
		"P-1D",
		"PT+30S",
		"PT1.5M30S",                  // a fraction on a non-final component
		"P1.5DT1H",                   //
		"PT30S1M",                    // out of order
		"PT1M1H",                     //
		"P1D1W",                      //
		"PT1H1H",                     // repeated
		"PT30S30S",                   //
		"P1DTT1H",                    // two T
		"PTS",                        // no number
		"PT.5S",                      // no digit before the fraction
		"PT5.S",                      // nor after it
		"PT1.2.3S",                   // two separators
		"PT1,2.3S",                   //
		"PT30",                       // no unit
		"PT 30S",                     // spaces
		" PT30S",                     //
		"PT30S ",                     //
		"PT1E3S",                     // no exponents
		"PT0x10S",                    //
		"PT1_000S",                   //
		"P1WT",                       //
		"PT2562047H47M16.854775808S", // one nanosecond over the maximum
		"PT9223372036.854775808S",    //
		"PT9223372037S",              //
		"P15251W",                    // 292.3 years do not
		"PT99999999999999999999999999H",
		"PT2562047H47M16S1H", // overflow does not hide the order error either
	} {
		got, err := parseISODuration(in)
		if err == nil {
			t.Errorf("parseISODuration(%q) = %v, want an error", in, got)
			continue
		}
		if !errors.Is(err, errISODuration) {
			t.Errorf("parseISODuration(%q) error %v does not wrap errISODuration", in, err)
		}
	}
}

func TestFormatISODuration(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want string
	}{
		{0, "PT0S"},
		{-time.Second, "PT0S"}, // negative: off, written as zero
		{time.Nanosecond, "PT0.000000001S"},
		{250 * time.Millisecond, "PT0.25S"},
		{30 * time.Second, "PT30S"},
		{90 * time.Second, "PT1M30S"},
		{time.Hour, "PT1H"},
		{90 * time.Minute, "PT1H30M"},
		{24 * time.Hour, "PT24H"},
		{36*time.Hour + 1500*time.Millisecond, "PT36H1.5S"},
		{7 * 24 * time.Hour, "PT168H"},
		{math.MaxInt64, "PT2562047H47M16.854775807S"},
	}
	for _, tt := range tests {
		if got := formatISODuration(tt.in); got != tt.want {
			t.Errorf("formatISODuration(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestISODurationRoundTrip: every non-negative Duration survives
// format-then-parse exactly. Regression: parsing summed float64s, so
// durations over 2^53 ns (104 days) lost nanoseconds, and the maximum
// Duration parsed as a negative one.
func TestISODurationRoundTrip(t *testing.T) {
	ds := []time.Duration{
		0, 1, 999, time.Microsecond, time.Millisecond, 250 * time.Millisecond, time.Second,
		30 * time.Second, 59*time.Second + 999999999, time.Minute, time.Hour, 24 * time.Hour,
		2600*time.Hour + time.Nanosecond, 105 * 24 * time.Hour, 1<<53 + 1, 1<<62 + 12345,
		math.MaxInt64 - 1, math.MaxInt64,
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		ds = append(ds, time.Duration(r.Int64()), time.Duration(r.Int64N(int64(48*time.Hour))),
			time.Duration(r.Int64N(1e6))*time.Millisecond)
	}
	for _, d := range ds {
		s := formatISODuration(d)
		got, err := parseISODuration(s)
		if err != nil || got != d {
			t.Errorf("parseISODuration(formatISODuration(%d) = %q) = %d, %v", int64(d), s, int64(got), err)
		}
	}
}

// TestISODurationErrorCapped: the refused text is quoted in the error, cut
// visibly, so a registration document cannot make an error of megabytes.
func TestISODurationErrorCapped(t *testing.T) {
	for _, c := range []struct{ name, in string }{
		{"long garbage", "PT" + strings.Repeat("9", 100<<10) + "X"},
		{"long number", "PT" + strings.Repeat("9", 100<<10) + "S"},
		{"invalid UTF-8", "P\xff" + strings.Repeat("\xfe", 100<<10)},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseISODuration(c.in)
			if !errors.Is(err, errISODuration) {
				t.Fatalf("error %v does not wrap errISODuration", err)
			}
			if msg := err.Error(); len(msg) > 300 || !utf8.ValidString(msg) || !strings.Contains(msg, "more bytes") {
				t.Errorf("error text of %d bytes, valid UTF-8 %v: %.200q", len(msg), utf8.ValidString(msg), msg)
			}
		})
	}
	t.Run("JSON value that is not a string", func(t *testing.T) {
		var r Registration
		err := r.UnmarshalJSON([]byte(`{"minTtl":[` + strings.Repeat("1,", 50<<10) + `1]}`))
		if !errors.Is(err, ErrInvalidRegistration) || len(err.Error()) > 400 {
			t.Errorf("error of %d bytes: %.200v", len(fmt.Sprint(err)), err)
		}
	})
}

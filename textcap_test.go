package jwkscache

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCapText(t *testing.T) {
	long := strings.Repeat("a", 5000)
	invalid := strings.Repeat("\xff", 3000)
	tests := []struct {
		name, in string
		wantSame bool
	}{
		{"short", "hello", true},
		{"exact", strings.Repeat("b", maxErrorText), true},
		{"long", long, false},
		{"invalid utf-8", invalid, false},
		{"multibyte at cut", strings.Repeat("é", 1000), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := capText(tc.in)
			if tc.wantSame && got != tc.in {
				t.Fatalf("capText changed %q to %q", tc.in, got)
			}
			if !utf8.ValidString(got) {
				t.Fatalf("capText result is not valid UTF-8: %q", got)
			}
			if len(got) > maxErrorText+40 {
				t.Fatalf("capText result has %d bytes, want about %d at most", len(got), maxErrorText)
			}
			if !tc.wantSame && !strings.Contains(got, "more bytes]") && len(tc.in) > maxErrorText {
				t.Fatalf("cut text %q has no visible marker", got[len(got)-30:])
			}
		})
	}
}

func TestShowID(t *testing.T) {
	if got := showID("kid-1"); got != `"kid-1"` {
		t.Fatalf("showID(kid-1) = %s", got)
	}
	got := showID(strings.Repeat("\xfe", 100000))
	if len(got) > maxShownID*4+40 || !strings.Contains(got, "more bytes]") {
		t.Fatalf("showID of a 100 kB invalid kid = %d bytes: %.80s", len(got), got)
	}
	if got := showID(strings.Repeat("k", 200)); !strings.HasPrefix(got, `"`+strings.Repeat("k", maxShownID)+"…[136 more bytes]") {
		t.Fatalf("showID(200 k) = %s", got)
	}
}

package textcap

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCap(t *testing.T) {
	for _, tc := range []struct {
		in    string
		limit int
		want  string
	}{
		{"short", 10, "short"},
		{"abcdef", 3, "abc…[3 more bytes]"},
		{"ééé", 3, "é…[4 more bytes]"}, // never splits a rune
		{"a\xffb", 10, "a\uFFFDb"},     // invalid UTF-8 replaced
		{"", 0, ""},
	} {
		if got := Cap(tc.in, tc.limit); got != tc.want {
			t.Errorf("Cap(%q, %d) = %q, want %q", tc.in, tc.limit, got, tc.want)
		}
	}
	long := strings.Repeat("x\xff", 1000)
	if got := Cap(long, 100); !utf8.ValidString(got) || len(got) > 3*100+40 {
		t.Errorf("Cap of 2,000 hostile bytes: %d bytes, valid %v", len(got), utf8.ValidString(got))
	}
}

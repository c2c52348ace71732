// Package textcap bounds text derived from untrusted input (upstream
// responses, request paths, stored IDs) before it reaches an error message
// or a log record.
package textcap

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Cap returns s as valid UTF-8, cut at a rune boundary after at most limit
// bytes of s, with a visible marker saying how much was cut. Each run of
// invalid bytes becomes one U+FFFD (3 bytes), so the result is at most
// 3*limit bytes plus the marker, whatever s holds.
func Cap(s string, limit int) string {
	if len(s) <= limit && utf8.ValidString(s) {
		return s
	}
	cut := min(limit, len(s))
	for cut > 0 && cut < len(s) && !utf8.RuneStart(s[cut]) {
		cut--
	}
	head := strings.ToValidUTF8(s[:cut], "\uFFFD")
	if cut == len(s) {
		return head
	}
	return head + "…[" + strconv.Itoa(len(s)-cut) + " more bytes]"
}

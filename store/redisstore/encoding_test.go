package redisstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

// trickyPairs are pairs whose naive concatenations collide.
var trickyPairs = [][2]string{
	{"a", "b:c"}, {"a:b", "c"}, {"a/b", "c"}, {"a", "b/c"}, {"a", "b\x00c"}, {"a\x00b", "c"},
	{"{a}", "b"}, {"a", "{b}"}, {"{a", "}b"}, {"a}", "{b"}, {"a{b}", "c"},
	{"a", "b|c"}, {"a|b", "c"}, {"a", "b\nc"}, {"", "ab"}, {"ab", ""}, {"a\"", "b"}, {"", ""},
	{strings.Repeat("x", 4096), "p"}, {"t", strings.Repeat("x", 4096)}, {strings.Repeat("x", 4096) + "y", "p"},
	{"a", "b*"}, {"a*", "b"}, {"é", "ü"}, {"\x01", ""}, {"", "\x01"}, {"\x80", "\x80"},
}

func TestPairTagsAreDistinctAndBraceFree(t *testing.T) {
	seen := map[string][2]string{}
	for _, pr := range trickyPairs {
		tag := pairTag(pr[0], pr[1])
		if len(tag) != tagLen || strings.Trim(tag, "0123456789abcdef") != "" {
			t.Fatalf("tag of %q = %q: want %d hex digits", pr, tag, tagLen)
		}
		if other, dup := seen[tag]; dup {
			t.Fatalf("pairs %q and %q share the tag %s", pr, other, tag)
		}
		seen[tag] = pr
	}
	// Pinned: a change of the tag would orphan every stored record.
	const pinned = "57949d3698eff8420cd82b33cdba931b" // sha256sum of "\x04acmeauth0", first 32 digits
	if got := pairTag("acme", "auth0"); got != pinned || got != pairTagOf([]byte("\x04acmeauth0")) {
		t.Fatalf("pairTag(acme, auth0) = %s, want %s", got, pinned)
	}
}

func TestKeysShareOneHashTag(t *testing.T) {
	s, err := New(DeadClient(t), WithPrefix("pre:"))
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range trickyPairs {
		k := s.keys(pr[0], pr[1])
		tag := "{" + pairTag(pr[0], pr[1]) + "}"
		for _, key := range []string{k.snapshot, k.registration, k.lease} {
			if strings.Count(key, "{") != 1 || strings.Count(key, "}") != 1 || !strings.HasSuffix(key, tag) {
				t.Fatalf("key %q: want exactly one hash tag, %s, at its end", key, tag)
			}
		}
		if k.snapshot != "pre:s:"+tag || k.registration != "pre:r:"+tag || k.lease != "pre:l:"+tag {
			t.Fatalf("keys of %q = %+v", pr, k)
		}
	}
}

func TestFrameRoundTrip(t *testing.T) {
	for _, pr := range trickyPairs {
		for _, payload := range [][]byte{nil, []byte("x"), []byte("\x00\x01{}"), bytes.Repeat([]byte{0xff}, 5000)} {
			b := frame(pr[0], pr[1], payload)
			tt, pp, rest, ok := parseFrame(string(b))
			if !ok || tt != pr[0] || pp != pr[1] || rest != string(payload) {
				t.Fatalf("parseFrame(frame(%q, %q)) = %q, %q, %d bytes, %v", pr[0], pr[1], tt, pp, len(rest), ok)
			}
		}
	}
}

func TestParseFrameRejects(t *testing.T) {
	for _, b := range []string{
		"",
		"\x00",             // unknown version
		"\x02\x00\x00",     // unknown version
		"\x01",             // no tenant length
		"\x01\x05abc",      // tenant longer than the rest
		"\x01\x00",         // no provider length
		"\x01\x01a\x02b",   // provider longer than the rest
		"\x01\x80",         // truncated varint
		"\x01\x80\x00",     // non-minimal varint
		"\x01\x81\x80\x80", // varint longer than 3 bytes
		"\x01\xff\xff\x7f", // length over MaxIDLen
		"{\"keys\":[]}",    // a bare record, not framed
	} {
		if tt, pp, rest, ok := parseFrame(b); ok {
			t.Errorf("parseFrame(%q) = %q, %q, %q, ok", b, tt, pp, rest)
		}
	}
}

func FuzzParseFrame(f *testing.F) {
	f.Add("\x01\x01a\x01bnote")
	f.Add("\x01\x00\x00")
	f.Add("\x01\x80\x01" + strings.Repeat("x", 200))
	f.Fuzz(func(t *testing.T, b string) {
		tt, pp, rest, ok := parseFrame(b)
		if !ok {
			return
		}
		// A frame has one spelling: parsing then framing gives it back.
		if got := string(frame(tt, pp, []byte(rest))); got != b {
			t.Fatalf("frame(parseFrame(%q)) = %q", b, got)
		}
	})
}

func TestValidPrefix(t *testing.T) {
	for _, p := range []string{"jwkscache:", "a", "x*?[]\\-^:", strings.Repeat("p", maxPrefixLen)} {
		if err := validPrefix(p); err != nil {
			t.Errorf("validPrefix(%q) = %v", p, err)
		}
	}
	for _, p := range []string{"", "a{b", "a}b", "{t}:", "a b", "a\x00", "é", "a\n", strings.Repeat("p", maxPrefixLen+1)} {
		if err := validPrefix(p); err == nil {
			t.Errorf("validPrefix(%q) = nil, want an error", p)
		}
	}
}

func TestEscapeGlob(t *testing.T) {
	if got, want := escapeGlob(`a*b?c[d]e\f^g-h:`), `a\*b\?c\[d\]e\\f\^g\-h:`; got != want {
		t.Fatalf("escapeGlob = %q, want %q", got, want)
	}
}

// pairTagOf is the tag of an already encoded pair.
func pairTagOf(encoded []byte) string {
	sum := sha256.Sum256(encoded)
	return hex.EncodeToString(sum[:16])
}

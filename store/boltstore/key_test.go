package boltstore

import (
	"bytes"
	"testing"
)

// FuzzPairKey checks that distinct pairs never share a key, whatever
// bytes their IDs hold.
func FuzzPairKey(f *testing.F) {
	f.Add("a", "b:c", "a:b", "c")
	f.Add("", "\x01a", "\x01", "a")
	f.Add("\x00", "", "", "\x00")
	f.Add("é", "ü", "é\x00", "ü")
	f.Fuzz(func(t *testing.T, t1, p1, t2, p2 string) {
		same := bytes.Equal(pairKey(t1, p1), pairKey(t2, p2))
		if same != (t1 == t2 && p1 == p2) {
			t.Fatalf("pairs (%q, %q) and (%q, %q): keys equal = %v", t1, p1, t2, p2, same)
		}
	})
}

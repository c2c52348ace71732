package controlplane

import (
	"hash/maphash"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jwkscache/jwkscache"
)

func TestEachETag(t *testing.T) {
	type tag struct {
		opaque string
		weak   bool
	}
	for _, tt := range []struct {
		in   string
		want []tag
		bad  bool
	}{
		{`"a"`, []tag{{"a", false}}, false},
		{`W/"a"`, []tag{{"a", true}}, false},
		{` "a" , W/"b",,"c"`, []tag{{"a", false}, {"b", true}, {"c", false}}, false},
		{`"a,b", "c"`, []tag{{"a,b", false}, {"c", false}}, false},
		{`""`, []tag{{"", false}}, false},
		{"", nil, false},
		{` , `, nil, false},
		{`a`, nil, true},
		{`"a`, nil, true},
		{`"a" "b"`, nil, true},
		{`w/"a"`, nil, true},
		{`W/a`, nil, true},
		{`"a b"`, nil, true},
		{"\"a\tb\"", nil, true},
		{"\"\x7f\"", nil, true},
		{`*`, nil, true},
	} {
		var got []tag
		err := eachETag(tt.in, func(o string, w bool) { got = append(got, tag{o, w}) })
		if (err != nil) != tt.bad || !tt.bad && !slices.Equal(got, tt.want) {
			t.Errorf("%q: %v, %v; want %v (bad %v)", tt.in, got, err, tt.want, tt.bad)
		}
	}
}

func TestNoneMatch(t *testing.T) {
	const etag = `"abc"`
	for _, tt := range []struct {
		vals []string
		want bool
	}{
		{[]string{`"abc"`}, true},
		{[]string{`W/"abc"`}, true},
		{[]string{`"x", "abc"`}, true},
		{[]string{`"x"`, `W/"abc"`}, true},
		{[]string{`*`}, true},
		{[]string{` * `}, true},
		{[]string{`"abcd"`}, false},
		{[]string{`abc`}, false},
		{[]string{`"ab"`}, false},
		{[]string{``}, false},
		{[]string{`"abc`}, false},
		{[]string{`"x" junk, "abc"`}, false}, // malformed after "x"
	} {
		if got := noneMatch(tt.vals, etag); got != tt.want {
			t.Errorf("%q: %v, want %v", tt.vals, got, tt.want)
		}
	}
}

func TestWantsRevalidation(t *testing.T) {
	for _, tt := range []struct {
		vals []string
		want bool
	}{
		{[]string{"no-cache"}, true},
		{[]string{"NO-CACHE"}, true},
		{[]string{"max-age=0"}, true},
		{[]string{"Max-Age=00"}, true},
		{[]string{`max-age="0"`}, true},
		{[]string{"no-store, max-age=0"}, true},
		{[]string{" max-age = 0 "}, true},
		{[]string{"no-store", "no-cache"}, true},
		{[]string{`foo="a,no-cache", no-cache`}, true},
		{[]string{"max-age=1"}, false},
		{[]string{"max-age=10"}, false},
		{[]string{"max-age="}, false},
		{[]string{"max-age"}, false},
		{[]string{"no-store"}, false},
		{[]string{"only-if-cached, max-stale=0, min-fresh=0"}, false},
		{[]string{`foo="no-cache"`}, false},
		{[]string{`foo="a, no-cache"`}, false},
		{[]string{`foo="a\", no-cache"`}, false},
		{[]string{"nocache"}, false},
		{[]string{""}, false},
	} {
		if got := wantsRevalidation(tt.vals); got != tt.want {
			t.Errorf("%q: %v, want %v", tt.vals, got, tt.want)
		}
	}
}

func TestIsClean(t *testing.T) {
	for p, want := range map[string]bool{
		"/": true, "/a": true, "/a/": true, "/a/b%2F..%2Fc": true,
		"//a": false, "/a//b": false, "/a/./b": false, "/a/../b": false, "/a/.": false, "/..": false, "a": false,
	} {
		if got := isClean(p); got != want {
			t.Errorf("%q: %v, want %v", p, got, want)
		}
	}
}

// The headers of a served document: max-age is the remaining freshness,
// Age the time since the fetch, both floored to whole seconds and never
// negative; Last-Modified moves to the expiry once the document is stale;
// the entry is reused while nothing changes.
func TestHeaderCache(t *testing.T) {
	c := headerCache{seed: maphash.MakeSeed()}
	fetched := time.Date(2024, 5, 1, 12, 0, 0, 500e6, time.UTC)
	sj := &jwkscache.ServedJWKS{
		Body: []byte(`{"keys":[],"stale":false,"expiresAt":"2024-05-01T12:10:00Z"}`), ETag: `"e1"`,
		LastModified: fetched, FetchedAt: fetched, ExpiresAt: fetched.Add(10 * time.Minute),
	}
	for _, tt := range []struct {
		at         time.Duration // after the fetch
		age, maxAg string
	}{
		{0, "0", "600"},
		{999 * time.Millisecond, "0", "599"},
		{time.Second, "1", "599"},
		{10*time.Second + 500*time.Millisecond, "10", "589"},
		{10 * time.Minute, "600", "0"},
		{time.Hour, "3600", "0"},
		{-time.Hour, "0", "4200"}, // a clock step back
	} {
		e := c.get("acme", "auth0", "", false, sj, fetched.Add(tt.at))
		if e.age[0] != tt.age || e.cacheControl[0] != "public, max-age="+tt.maxAg {
			t.Errorf("at +%v: Age %s, %s; want %s, max-age=%s", tt.at, e.age[0], e.cacheControl[0], tt.age, tt.maxAg)
		}
		if e.lastModified[0] != "Wed, 01 May 2024 12:00:00 GMT" || e.etag[0] != `"e1"` || e.contentLength[0] != strconv.Itoa(len(sj.Body)) {
			t.Errorf("at +%v: %v %v %v", tt.at, e.lastModified, e.etag, e.contentLength)
		}
	}
	now := fetched.Add(time.Minute + 200*time.Millisecond)
	e1 := c.get("acme", "auth0", "", false, sj, now)
	if e2 := c.get("acme", "auth0", "", false, sj, now.Add(100*time.Millisecond)); e2 != e1 {
		t.Error("the entry was rebuilt within the same second")
	}
	if e3 := c.get("acme", "auth0", "", false, sj, now.Add(time.Second)); e3 == e1 || e3.age[0] != "61" || &e3.etag[0] != &e1.etag[0] {
		t.Error("a new second: the ages should change and the rest be shared")
	}
	// A stale document: Last-Modified is the expiry, when "stale" turned
	// true.
	stale := *sj
	stale.Stale = true
	e := c.get("acme", "auth0", "", false, &stale, fetched.Add(time.Hour))
	if e.lastModified[0] != "Wed, 01 May 2024 12:10:00 GMT" || !e.modified.Equal(fetched.Add(10*time.Minute).Truncate(time.Second)) {
		t.Errorf("stale Last-Modified %s", e.lastModified[0])
	}
	// A new document replaces the entry.
	next := *sj
	next.ETag = `"e2"`
	if e := c.get("acme", "auth0", "", false, &next, now); e.etag[0] != `"e2"` {
		t.Errorf("ETag %s after a new document", e.etag[0])
	}
}

func TestErrorMessagesAreCapped(t *testing.T) {
	long := strings.Repeat("é", 2000) + "\xff"
	got := capText(long, maxMessage)
	if len(got) > maxMessage+32 || !strings.Contains(got, "more bytes]") {
		t.Errorf("capText: %d bytes", len(got))
	}
	if capText("short", 10) != "short" || capText("\xff", 10) != "\uFFFD" {
		t.Error("capText of short texts")
	}
	if q := quote(strings.Repeat("t", 1000)); len(q) > 100 {
		t.Errorf("quote: %d bytes", len(q))
	}
}

package jwkscache

// Tests of the refresh engine: revalidation, refresh timing, rotation,
// unknown-kid floods, outages and stale-while-error, bad upstreams, the
// retry policy, the background retry of a failed first load and manual
// Refresh.
//
// Every test runs inside a testing/synctest bubble against the in-memory
// RoundTripper of internal/testidp, so hours of virtual time pass in
// milliseconds and nothing depends on the speed of the machine. The
// Manager's transport is the IdP's RoundTrip wrapped by rtRecorder, which
// only notes when each request was made.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

const (
	rtTenant   = "acme"
	rtProvider = "idp"
	rtPath     = testidp.DefaultPath
	rtURL      = "https://idp.test" + testidp.DefaultPath
)

// rtAllAlgs are the algorithms of the keys testidp.NewDefault serves.
var rtAllAlgs = []string{"RS256", "ES256", "EdDSA"}

// rtRecorder is the IdP's in-memory RoundTripper plus a log of when each
// request was made (virtual time inside the bubble).
type rtRecorder struct {
	idp *testidp.IdP
	mu  sync.Mutex
	log []rtRequest
}

type rtRequest struct {
	at     time.Time
	path   string
	header http.Header
}

func (r *rtRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.log = append(r.log, rtRequest{at: time.Now(), path: req.URL.Path, header: req.Header.Clone()})
	r.mu.Unlock()
	return r.idp.RoundTrip(req)
}

// times returns when each request for path was made, in order.
func (r *rtRecorder) times(path string) []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []time.Time
	for _, q := range r.log {
		if q.path == path {
			out = append(out, q.at)
		}
	}
	return out
}

// since returns the times of the requests for path made at or after t.
func (r *rtRecorder) since(path string, t time.Time) []time.Time {
	var out []time.Time
	for _, at := range r.times(path) {
		if !at.Before(t) {
			out = append(out, at)
		}
	}
	return out
}

// rtEvents collects the events of Options.OnEvent.
type rtEvents struct {
	mu  sync.Mutex
	evs []Event
}

func (e *rtEvents) add(ev Event) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
}

func (e *rtEvents) count(kind EventKind) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ev := range e.evs {
		if ev.Kind == kind {
			n++
		}
	}
	return n
}

// rtConfig configures newRTEnv.
type rtConfig struct {
	reg   Registration       // TenantID, ProviderID and JWKSURL default to rtTenant, rtProvider, rtURL
	opts  Options            // HTTPClient and OnEvent are set by the harness
	setup func(*testidp.IdP) // runs before Register
}

// rtEnv is one Manager with one provider served by one fake IdP.
type rtEnv struct {
	t      *testing.T
	idp    *testidp.IdP
	keys   []*testidp.Key // rsa-1 (RS256), ec-1 (ES256), ed-1 (EdDSA)
	rec    *rtRecorder
	events *rtEvents
	m      *Manager
	once   sync.Once
}

// newRTEnv must be called inside a synctest bubble. It creates the IdP
// (testidp.NewDefault: three keys, Cache-Control max-age=300), the Manager
// and the provider, and waits until the first load has finished.
func newRTEnv(t *testing.T, cfg rtConfig) *rtEnv {
	t.Helper()
	idp, keys := testidp.NewDefault()
	if cfg.setup != nil {
		cfg.setup(idp)
	}
	e := &rtEnv{t: t, idp: idp, keys: keys, rec: &rtRecorder{idp: idp}, events: &rtEvents{}}
	opts := cfg.opts
	opts.HTTPClient = &http.Client{Transport: e.rec}
	opts.OnEvent = e.events.add
	m, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.m = m
	t.Cleanup(e.close) // in case of t.Fatal; tests also defer e.close()
	reg := cfg.reg
	if reg.TenantID == "" {
		reg.TenantID = rtTenant
	}
	if reg.ProviderID == "" {
		reg.ProviderID = rtProvider
	}
	if reg.JWKSURL == "" {
		reg.JWKSURL = rtURL
	}
	if err := m.Register(context.Background(), reg); err != nil {
		t.Fatalf("Register: %v", err)
	}
	e.settle()
	return e
}

// close closes the Manager once and reports a Close error.
func (e *rtEnv) close() {
	e.once.Do(func() {
		if err := e.m.Close(); err != nil {
			e.t.Errorf("Close: %v", err)
		}
	})
}

func (e *rtEnv) prov() *provider { return e.m.providers.get(rtTenant, rtProvider) }

func (e *rtEnv) snap() *snapshot { return e.prov().snap.Load() }

func (e *rtEnv) status() ProviderStatus {
	e.t.Helper()
	st, err := e.m.Status(rtTenant, rtProvider)
	if err != nil {
		e.t.Fatalf("Status: %v", err)
	}
	return st
}

func (e *rtEnv) requests() int { return e.idp.Requests(rtPath) }

func (e *rtEnv) key(kid string) error {
	_, err := e.m.Key(context.Background(), rtTenant, rtProvider, kid)
	return err
}

// parse verifies tok with the provider's Keyfunc.
func (e *rtEnv) parse(tok string) error {
	_, err := jwt.Parse(tok, e.m.Keyfunc(rtTenant, rtProvider), jwt.WithValidMethods(rtAllAlgs))
	return err
}

// settle lets the bubble run until no fetch of the provider is in flight
// (a fetch blocked on a timer counts as in flight).
func (e *rtEnv) settle() {
	synctest.Wait()
	for {
		p := e.prov()
		p.mu.Lock()
		s := p.state
		p.mu.Unlock()
		if s != StateLoading && s != StateRefreshing {
			return
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
	}
}

// sleepUntil advances virtual time to at and lets the bubble settle.
func (e *rtEnv) sleepUntil(at time.Time) {
	if d := time.Until(at); d > 0 {
		time.Sleep(d)
	}
	synctest.Wait()
}

// mustKeep checks that every key of the IdP's original set is still served
// and that the snapshot is s.
func (e *rtEnv) mustKeep(s *snapshot) {
	e.t.Helper()
	if got := e.snap(); got != s {
		e.t.Errorf("snapshot replaced: %p, want %p", got, s)
	}
	for _, k := range e.keys {
		if err := e.key(k.KID); err != nil {
			e.t.Errorf("Key(%s) after the failure: %v", k.KID, err)
		}
	}
	set, err := e.m.Resolve(context.Background(), rtTenant, rtProvider)
	if err != nil {
		e.t.Fatalf("Resolve: %v", err)
	}
	var kids []string
	for _, k := range set.Keys {
		kids = append(kids, k.KeyID)
	}
	if want := rtKIDsOf(e.keys); !slices.Equal(rtSorted(kids), want) {
		e.t.Errorf("Resolve kids = %v, want %v", kids, want)
	}
}

func rtKIDsOf(keys []*testidp.Key) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.KID)
	}
	return rtSorted(out)
}

func rtStatusKIDs(st ProviderStatus) []string {
	var out []string
	for _, k := range st.Keys {
		out = append(out, k.KID)
	}
	return rtSorted(out)
}

func rtSorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func rtClaims() jwt.MapClaims { return jwt.MapClaims{"sub": "alice"} }

// rtFetchError extracts the *FetchError of err.
func rtFetchError(t *testing.T, err error) *FetchError {
	t.Helper()
	var fe *FetchError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v (%T) does not wrap a *FetchError", err, err)
	}
	return fe
}

// 1. Revalidation.

func TestRefreshRevalidation(t *testing.T) {
	cases := []struct {
		name         string
		etag         bool // IdP sends an ETag
		lastModified bool // IdP sends Last-Modified
		change       bool // the IdP rotates a key before the refresh
		wantINM      bool // the refresh carries If-None-Match
		wantIMS      bool // the refresh carries If-Modified-Since
	}{
		{name: "ETag/304 keeps keys", etag: true, wantINM: true},
		{name: "Last-Modified/304 keeps keys", lastModified: true, wantIMS: true},
		{name: "ETag and Last-Modified/304 keeps keys", etag: true, lastModified: true, wantINM: true, wantIMS: true},
		{name: "no validators/identical 200 keeps keys"},
		{name: "ETag/changed body replaces keys", etag: true, change: true, wantINM: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newRTEnv(t, rtConfig{
					reg: Registration{PrefetchJitter: -1},
					setup: func(idp *testidp.IdP) {
						idp.SetETag(rtPath, tc.etag)
						if tc.lastModified {
							idp.SetLastModified(rtPath, time.Now().Add(-time.Hour))
						}
					},
				})
				defer e.close()

				first := e.status()
				snap0 := e.snap()
				if (first.ETag != "") != tc.etag || (first.LastModified != "") != tc.lastModified {
					t.Fatalf("validators after the first load: ETag %q, Last-Modified %q", first.ETag, first.LastModified)
				}
				if n := e.events.count(EventKeysChanged); n != 1 {
					t.Fatalf("keys_changed events after the first load = %d, want 1", n)
				}
				if tc.change {
					e.idp.Rotate(rtPath, "ES256")
				}

				// Past the first snapshot's expiry: the background refresh
				// (at 80% of the TTL) has run exactly once.
				e.sleepUntil(first.ExpiresAt.Add(time.Second))
				if got := e.requests(); got != 2 {
					t.Fatalf("requests = %d, want 2 (first load + one background refresh)", got)
				}
				refreshAt := first.LastRefresh.Add(240 * time.Second)
				if ts := e.rec.times(rtPath); !ts[1].Equal(refreshAt) {
					t.Errorf("background refresh at +%v, want +240s", ts[1].Sub(first.LastRefresh))
				}

				h := e.idp.LastRequest(rtPath)
				if got := h.Get("If-None-Match"); tc.wantINM != (got != "") || tc.wantINM && got != first.ETag {
					t.Errorf("If-None-Match = %q, want sent=%v (%q)", got, tc.wantINM, first.ETag)
				}
				if got := h.Get("If-Modified-Since"); tc.wantIMS != (got != "") || tc.wantIMS && got != first.LastModified {
					t.Errorf("If-Modified-Since = %q, want sent=%v (%q)", got, tc.wantIMS, first.LastModified)
				}

				st := e.status()
				if st.State != StateReady || st.Stale || st.ErrorCount != 0 || st.LastError != "" {
					t.Errorf("status = %v stale=%v errors=%d %q, want Ready, fresh, no error", st.State, st.Stale, st.ErrorCount, st.LastError)
				}
				if !st.LastRefresh.Equal(refreshAt) {
					t.Errorf("LastRefresh = +%v, want +240s (renewed)", st.LastRefresh.Sub(first.LastRefresh))
				}
				if want := refreshAt.Add(300 * time.Second); !st.ExpiresAt.Equal(want) {
					t.Errorf("ExpiresAt = +%v, want +540s (renewed)", st.ExpiresAt.Sub(first.LastRefresh))
				}
				if want := refreshAt.Add(240 * time.Second); !st.NextRefresh.Equal(want) {
					t.Errorf("NextRefresh = +%v, want +480s", st.NextRefresh.Sub(first.LastRefresh))
				}

				snap1 := e.snap()
				p := e.prov()
				if tc.change {
					if n := e.events.count(EventKeysChanged); n != 2 {
						t.Errorf("keys_changed events = %d, want 2", n)
					}
					if snap1.keys == snap0.keys {
						t.Error("key set kept its identity although the keys changed")
					}
					if got, want := rtStatusKIDs(st), rtKIDsOf(e.idp.Keys(rtPath)); !slices.Equal(got, want) {
						t.Errorf("kids = %v, want %v", got, want)
					}
					if got := p.refreshCount(resultUpdated); got != 2 {
						t.Errorf("refreshUpdated = %d, want 2", got)
					}
					return
				}
				if n := e.events.count(EventKeysChanged); n != 1 {
					t.Errorf("keys_changed events = %d, want 1 (the revalidation changed nothing)", n)
				}
				if snap1 == snap0 {
					t.Error("snapshot not replaced: the freshness was not renewed")
				}
				if snap1.keys != snap0.keys {
					t.Error("key set lost its identity on a revalidation that confirmed it")
				}
				if got, want := rtStatusKIDs(st), rtKIDsOf(e.keys); !slices.Equal(got, want) {
					t.Errorf("kids = %v, want %v", got, want)
				}
				if got := p.refreshCount(resultNotModified); got != 1 {
					t.Errorf("refreshNotModified = %d, want 1", got)
				}
				for _, k := range e.keys {
					if err := e.key(k.KID); err != nil {
						t.Errorf("Key(%s): %v", k.KID, err)
					}
				}
			})
		})
	}
}

// 2. Refresh timing.

func TestRefreshTiming(t *testing.T) {
	const s = time.Second
	cases := []struct {
		name         string
		cacheControl string // "" removes the header
		reg          Registration
		ttl          time.Duration // ExpiresAt - LastRefresh
		source       string
		lo, hi       time.Duration // bounds of NextRefresh - LastRefresh
	}{
		{"max-age=300: 80% of the TTL", "max-age=300", Registration{PrefetchJitter: -1}, 300 * s, "max-age", 240 * s, 240 * s},
		// The refresh comes at the earlier of expiry - RefreshEarly and 80%
		// of the TTL (see docs/operations.md): for one hour that is 2880s,
		// not 3570s.
		{"max-age=3600: 80% of the TTL", "max-age=3600", Registration{PrefetchJitter: -1}, 3600 * s, "max-age", 2880 * s, 2880 * s},
		{"max-age=120: expiry minus RefreshEarly", "max-age=120", Registration{PrefetchJitter: -1}, 120 * s, "max-age", 90 * s, 90 * s},
		{"max-age=3600: expiry minus RefreshEarly 20m", "max-age=3600", Registration{RefreshEarly: 20 * time.Minute, PrefetchJitter: -1}, 3600 * s, "max-age", 2400 * s, 2400 * s},
		{"max-age=3600: default jitter in [0,5s]", "max-age=3600", Registration{}, 3600 * s, "max-age", 2875 * s, 2880 * s},
		{"max-age=120: default jitter in [0,5s]", "max-age=120", Registration{}, 120 * s, "max-age", 85 * s, 90 * s},
		{"max-age=300: jitter 20s in [0,20s]", "max-age=300", Registration{PrefetchJitter: 20 * s}, 300 * s, "max-age", 220 * s, 240 * s},
		{"RefreshEarly past half the TTL: floor at half", "max-age=60", Registration{RefreshEarly: 50 * s, PrefetchJitter: -1}, 60 * s, "max-age", 30 * s, 30 * s},
		{"jitter larger than the TTL: floor at half", "max-age=60", Registration{RefreshEarly: s, PrefetchJitter: time.Hour}, 60 * s, "max-age", 30 * s, 48 * s},
		{"max-age=5: clamped to MinTTL", "max-age=5", Registration{PrefetchJitter: -1}, 30 * s, "max-age", 15 * s, 15 * s},
		{"max-age=0: MinTTL", "max-age=0", Registration{}, 30 * s, "max-age", 15 * s, 15 * s},
		{"no-cache: MinTTL", "no-cache", Registration{}, 30 * s, "no-cache", 15 * s, 15 * s},
		{"no-store: MinTTL", "no-store", Registration{}, 30 * s, "no-store", 15 * s, 15 * s},
		{"max-age=5: clamped to MinTTL 2m", "max-age=5", Registration{MinTTL: 2 * time.Minute, PrefetchJitter: -1}, 120 * s, "max-age", 90 * s, 90 * s},
		{"40 days: clamped to MaxTTL", "max-age=3456000", Registration{PrefetchJitter: -1}, 24 * time.Hour, "max-age", 69120 * s, 69120 * s},
		{"no freshness headers: DefaultTTL", "", Registration{PrefetchJitter: -1}, DefaultTTL, "default", 480 * s, 480 * s},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newRTEnv(t, rtConfig{reg: tc.reg, setup: func(idp *testidp.IdP) {
					if tc.cacheControl == "" {
						idp.DelHeader(rtPath, "Cache-Control")
					} else {
						idp.SetHeader(rtPath, "Cache-Control", tc.cacheControl)
					}
				}})
				defer e.close()
				// Three cycles: the first load (200) and two revalidations (304).
				for cycle := range 3 {
					st := e.status()
					if got := st.ExpiresAt.Sub(st.LastRefresh); got != tc.ttl {
						t.Fatalf("cycle %d: TTL = %v, want %v", cycle, got, tc.ttl)
					}
					if st.TTLSource != tc.source {
						t.Errorf("cycle %d: TTLSource = %q, want %q", cycle, st.TTLSource, tc.source)
					}
					d := st.NextRefresh.Sub(st.LastRefresh)
					if d < tc.lo || d > tc.hi {
						t.Fatalf("cycle %d: next refresh after %v, want in [%v, %v]", cycle, d, tc.lo, tc.hi)
					}
					if d < tc.ttl/2 {
						t.Fatalf("cycle %d: next refresh after %v, before half the TTL", cycle, d)
					}
					n := e.requests()
					e.sleepUntil(st.NextRefresh.Add(-time.Millisecond))
					if got := e.requests(); got != n {
						t.Fatalf("cycle %d: %d requests before NextRefresh", cycle, got-n)
					}
					e.sleepUntil(st.NextRefresh.Add(time.Millisecond))
					if got := e.requests(); got != n+1 {
						t.Fatalf("cycle %d: %d requests at NextRefresh, want 1", cycle, got-n)
					}
					if ts := e.rec.times(rtPath); !ts[len(ts)-1].Equal(st.NextRefresh) {
						t.Errorf("cycle %d: refresh at %v, scheduled for %v", cycle, ts[len(ts)-1], st.NextRefresh)
					}
				}
			})
		})
	}
}

// TestRefreshTimingJitterSpread checks that the default jitter spreads the
// refreshes of providers registered together, each within [0, 5s].
func TestRefreshTimingJitterSpread(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newRTEnv(t, rtConfig{setup: func(idp *testidp.IdP) { idp.SetHeader(rtPath, "Cache-Control", "max-age=3600") }})
		defer e.close()
		const n = 16
		for i := range n {
			if err := e.m.Register(context.Background(), Registration{TenantID: rtTenant, ProviderID: fmt.Sprintf("p%d", i), JWKSURL: rtURL}); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		seen := map[time.Duration]bool{}
		for _, st := range e.m.Statuses() {
			d := st.NextRefresh.Sub(st.LastRefresh)
			if d < 2875*time.Second || d > 2880*time.Second {
				t.Errorf("%s: next refresh after %v, want in [2875s, 2880s]", st.ProviderID, d)
			}
			seen[d] = true
		}
		if len(seen) < 2 {
			t.Errorf("all %d providers refresh at the same offset: no jitter", n+1)
		}
	})
}

// TestRefreshNoCacheHour counts the requests of an hour of Cache-Control:
// no-cache: the TTL is MinTTL (30s) and the refresh comes at half of it
// ("never before half the TTL"), so one request every 15s, never a hot loop.
func TestRefreshNoCacheHour(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newRTEnv(t, rtConfig{setup: func(idp *testidp.IdP) { idp.SetHeader(rtPath, "Cache-Control", "no-cache") }})
		defer e.close()
		start := time.Now()
		e.sleepUntil(start.Add(time.Hour))
		ts := e.rec.since(rtPath, start.Add(time.Nanosecond))
		n := len(ts)
		// MinTTL 30s, refresh at 50%..80% of it: 3600/24 .. 3600/15.
		lo, hi := int(time.Hour/(24*time.Second)), int(time.Hour/(15*time.Second))
		t.Logf("no-cache for 1 virtual hour: %d requests", n)
		if n < lo || n > hi {
			t.Errorf("%d requests in an hour of no-cache, want in [%d, %d]", n, lo, hi)
		}
		prev := start
		for _, at := range ts {
			if gap := at.Sub(prev); gap < 15*time.Second {
				t.Fatalf("requests %v apart at +%v: faster than MinTTL/2", gap, at.Sub(start))
			}
			prev = at
		}
	})
}

// 3. Rotation.

func TestRefreshRotation(t *testing.T) {
	t.Run("new kid verifies on first sight", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newRTEnv(t, rtConfig{setup: func(idp *testidp.IdP) {
				idp.SetKeys(rtPath, testidp.NewKey("ES256", "old"))
				idp.SetHeader(rtPath, "Cache-Control", "max-age=86400")
			}})
			defer e.close()
			before := e.requests()
			// Two rotations back to back are both caught at once (burst 2),
			// long before the 24h TTL.
			for i := range 2 {
				nk := e.idp.Rotate(rtPath, "ES256")
				tok := nk.Sign(rtClaims())
				start := time.Now()
				if err := e.parse(tok); err != nil {
					t.Fatalf("rotation %d: token of new kid %s: %v", i+1, nk.KID, err)
				}
				if d := time.Since(start); d != 0 {
					t.Errorf("rotation %d: verification took %v of virtual time", i+1, d)
				}
				if got := e.requests(); got != before+i+1 {
					t.Fatalf("rotation %d: requests = %d, want %d (exactly one kid-driven fetch)", i+1, got, before+i+1)
				}
				if err := e.parse(tok); err != nil {
					t.Fatalf("rotation %d: second verification: %v", i+1, err)
				}
				if got := e.requests(); got != before+i+1 {
					t.Errorf("rotation %d: second verification fetched again", i+1)
				}
			}
			if got, want := rtStatusKIDs(e.status()), rtKIDsOf(e.idp.Keys(rtPath)); !slices.Equal(got, want) {
				t.Errorf("kids = %v, want %v", got, want)
			}
			// A third rotation in the same instant finds the bucket empty; it
			// is caught once a token is back (NegativeCacheTTL later).
			nk := e.idp.Rotate(rtPath, "ES256")
			tok := nk.Sign(rtClaims())
			if err := e.parse(tok); !errors.Is(err, ErrKeyNotFound) {
				t.Fatalf("third rotation within the same instant: %v, want rate-limited ErrKeyNotFound", err)
			}
			if got := e.requests(); got != before+2 {
				t.Fatalf("requests = %d, want %d (bucket empty)", got, before+2)
			}
			time.Sleep(DefaultNegativeCacheTTL)
			if err := e.parse(tok); err != nil {
				t.Fatalf("third rotation after the bucket refilled: %v", err)
			}
			if got := e.requests(); got != before+3 {
				t.Errorf("requests = %d, want %d", got, before+3)
			}
		})
	})

	for _, manual := range []bool{true, false} {
		name := "removed key stops verifying after the scheduled refresh"
		if manual {
			name = "removed key stops verifying after a manual Refresh"
		}
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				a, b := testidp.NewKey("ES256", "a"), testidp.NewKey("ES256", "b")
				e := newRTEnv(t, rtConfig{reg: Registration{PrefetchJitter: -1}, setup: func(idp *testidp.IdP) {
					idp.SetKeys(rtPath, a, b)
				}})
				defer e.close()
				tokA, tokB := a.Sign(rtClaims()), b.Sign(rtClaims())
				if err := e.parse(tokA); err != nil {
					t.Fatal(err)
				}
				e.idp.RemoveKey(rtPath, "a")
				// Until the next refresh the cache still holds "a".
				if err := e.parse(tokA); err != nil {
					t.Fatalf("before the refresh: %v", err)
				}
				if manual {
					if err := e.m.Refresh(context.Background(), rtTenant, rtProvider); err != nil {
						t.Fatalf("Refresh: %v", err)
					}
				} else {
					e.sleepUntil(e.status().NextRefresh.Add(time.Millisecond))
				}
				if got := e.requests(); got != 2 {
					t.Fatalf("requests = %d, want 2", got)
				}
				if got := rtStatusKIDs(e.status()); !slices.Equal(got, []string{"b"}) {
					t.Errorf("kids after the refresh = %v, want [b]", got)
				}
				err := e.parse(tokA)
				if err == nil || !errors.Is(err, ErrKeyNotFound) {
					t.Fatalf("token of removed key: %v, want ErrKeyNotFound", err)
				}
				if got := e.requests(); got > 3 {
					t.Errorf("requests = %d, want at most 3", got)
				}
				n := e.requests()
				if err := e.key("a"); !errors.Is(err, ErrKeyNotFound) {
					t.Errorf("Key(a): %v, want ErrKeyNotFound", err)
				}
				if got := e.requests(); got != n {
					t.Errorf("a second lookup of the removed kid fetched again (negative cache)")
				}
				if err := e.parse(tokB); err != nil {
					t.Errorf("token of the remaining key: %v", err)
				}
			})
		})
	}
}

// 4. Unknown-kid floods, negative cache, global cap.

func TestRefreshUnknownKIDFlood(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newRTEnv(t, rtConfig{setup: func(idp *testidp.IdP) { idp.SetHeader(rtPath, "Cache-Control", "max-age=3600") }})
		defer e.close()
		ctx := context.Background()
		toks := make([]string, len(e.keys))
		for i, k := range e.keys {
			toks[i] = k.Sign(rtClaims())
		}
		before := e.requests()
		const (
			workers   = 10
			perWorker = 1000
			step      = 29 * time.Millisecond // 1000 steps: 29 virtual seconds
		)
		var unknownFound, unknownOther, knownFail, knownWaited atomic.Int64
		start := time.Now()
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := range perWorker {
					kid := fmt.Sprintf("flood-%016x", rand.Uint64())
					_, err := e.m.Key(ctx, rtTenant, rtProvider, kid)
					switch {
					case err == nil:
						unknownFound.Add(1)
					case !errors.Is(err, ErrKeyNotFound):
						unknownOther.Add(1)
					}
					k := e.keys[(w+i)%len(e.keys)]
					t0 := time.Now()
					if _, err := e.m.Key(ctx, rtTenant, rtProvider, k.KID); err != nil {
						knownFail.Add(1)
					}
					if i%50 == 0 {
						if err := e.parse(toks[(w+i)%len(toks)]); err != nil {
							knownFail.Add(1)
						}
					}
					if time.Since(t0) != 0 {
						knownWaited.Add(1)
					}
					time.Sleep(step)
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		got := e.requests() - before
		refreshed, limited, neg := e.prov().kidCounts()
		t.Logf("flood: %d unknown-kid lookups in %v of virtual time cost %d requests (kid-driven refreshes %d, rate-limited %d, negative hits %d)",
			workers*perWorker, elapsed, got, refreshed, limited, neg)
		if elapsed > 30*time.Second {
			t.Errorf("flood lasted %v, want at most 30s", elapsed)
		}
		if got > 3 {
			t.Errorf("flood cost %d requests, want at most 3", got)
		}
		if n := unknownFound.Load(); n != 0 {
			t.Errorf("%d random kids found", n)
		}
		if n := unknownOther.Load(); n != 0 {
			t.Errorf("%d unknown-kid lookups failed with an error other than ErrKeyNotFound", n)
		}
		if n := knownFail.Load(); n != 0 {
			t.Errorf("%d known-kid lookups failed during the flood", n)
		}
		if n := knownWaited.Load(); n != 0 {
			t.Errorf("%d known-kid lookups waited during the flood", n)
		}
	})
}

func TestRefreshNegativeCache(t *testing.T) {
	for _, ttl := range []time.Duration{0, 2 * time.Minute} {
		t.Run(fmt.Sprintf("NegativeCacheTTL=%v", ttl), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newRTEnv(t, rtConfig{
					reg:   Registration{NegativeCacheTTL: ttl},
					setup: func(idp *testidp.IdP) { idp.SetHeader(rtPath, "Cache-Control", "max-age=86400") },
				})
				defer e.close()
				if ttl == 0 {
					ttl = DefaultNegativeCacheTTL
				}
				start := time.Now()
				n := e.requests()
				lookup := func(kid string, wantRequests int) {
					t.Helper()
					if err := e.key(kid); !errors.Is(err, ErrKeyNotFound) {
						t.Fatalf("+%v Key(%s): %v, want ErrKeyNotFound", time.Since(start), kid, err)
					}
					if got := e.requests() - n; got != wantRequests {
						t.Fatalf("+%v Key(%s): %d requests so far, want %d", time.Since(start), kid, got, wantRequests)
					}
				}
				lookup("ghost", 1) // one kid-driven fetch: the kid is missing
				lookup("ghost", 1) // remembered
				time.Sleep(ttl - time.Second)
				lookup("ghost", 1) // still remembered, although the bucket has a token:
				lookup("ghost-2", 2)
				if _, _, got := e.prov().kidCounts(); got != 2 {
					t.Errorf("negative-cache hits = %d, want 2", got)
				}
				time.Sleep(ttl + time.Second)
				lookup("ghost", 3) // forgotten: may fetch again
			})
		})
	}
}

// The global cap of kid-driven refreshes: a shared bucket of
// MaxUnknownKIDRefreshes a second, and a reserve of the same size that only
// quiet providers (whose own bucket is full) may use, so junk kids spread
// over many tenants cannot starve another tenant's first refresh (issue 6,
// item 5), and the total stays within twice the cap.
func TestRefreshGlobalKIDCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 5
		e := newRTEnv(t, rtConfig{opts: Options{MaxUnknownKIDRefreshes: 1}})
		defer e.close()
		ctx := context.Background()
		tenant := func(i int) string { return fmt.Sprintf("tenant-%d", i) }
		for i := range n {
			path := fmt.Sprintf("/t%d/jwks.json", i)
			e.idp.SetKeys(path, e.keys...)
			e.idp.SetHeader(path, "Cache-Control", "max-age=3600")
			reg := Registration{TenantID: tenant(i), ProviderID: "idp", JWKSURL: "https://idp.test" + path}
			if err := e.m.Register(ctx, reg); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		e.idp.ResetCounters()

		lookup := func(i int, kid string, wantRateLimited bool) {
			t.Helper()
			_, err := e.m.Key(ctx, tenant(i), "idp", kid)
			if !errors.Is(err, ErrKeyNotFound) {
				t.Fatalf("provider %d, kid %s: %v, want ErrKeyNotFound", i, kid, err)
			}
			if got := strings.Contains(err.Error(), kidRateLimited); got != wantRateLimited {
				t.Errorf("provider %d, kid %s: rate-limited %v, want %v (%v)", i, kid, got, wantRateLimited, err)
			}
		}
		// At one instant: the shared token goes to provider 0, the
		// reserve's to provider 1 (quiet), and the others are refused.
		lookup(0, "unknown-0", false)
		lookup(1, "unknown-1", false)
		lookup(2, "unknown-2", true)
		lookup(3, "unknown-3", true)
		// Provider 0 has spent its own bucket: not quiet, no reserve.
		lookup(0, "unknown-0b", true)
		if got := e.idp.TotalRequests(); got != 2 {
			t.Errorf("%d kid-driven requests in the first second, want 2 (the cap and the reserve)", got)
		}
		// Both refill at 1/s: the shared token to provider 0 (not quiet),
		// the reserve's to provider 2 (quiet), none left for provider 3.
		time.Sleep(time.Second)
		e.idp.ResetCounters()
		lookup(0, "unknown-0c", false)
		lookup(2, "unknown-2b", false)
		lookup(3, "unknown-3b", true)
		if got := e.idp.TotalRequests(); got != 2 {
			t.Errorf("after 1s: %d kid-driven requests, want 2", got)
		}
	})
}

// 5. Outages.

// rtFaultKinds are the ways an IdP can be down.
var rtFaultKinds = []struct {
	name  string
	fault testidp.Fault
	class ErrorClass
}{
	{"5xx", testidp.Fault{Status: http.StatusServiceUnavailable}, ClassStatus},
	{"timeout", testidp.Fault{Delay: 10 * time.Second}, ClassTimeout}, // AttemptTimeout is 3s
	{"refused", testidp.Fault{Refuse: true}, ClassNetwork},
}

// rtLooker looks up every known kid every 10 virtual seconds, counting
// failures and lookups that waited.
type rtLooker struct {
	e                      *rtEnv
	lookups, fails, waited int
	firstFail              string
}

func (l *rtLooker) check() {
	for _, k := range l.e.keys {
		t0 := time.Now()
		err := l.e.key(k.KID)
		l.lookups++
		if err != nil {
			l.fails++
			if l.firstFail == "" {
				l.firstFail = fmt.Sprintf("Key(%s) at %v: %v", k.KID, t0, err)
			}
		}
		if time.Since(t0) != 0 {
			l.waited++
		}
	}
}

// until looks up every 10s until at, then sleeps to at exactly.
func (l *rtLooker) until(at time.Time) {
	for time.Now().Add(10 * time.Second).Before(at) {
		time.Sleep(10 * time.Second)
		l.check()
	}
	if d := time.Until(at); d > 0 {
		time.Sleep(d)
	}
}

func TestRefreshOutage(t *testing.T) {
	phases := []struct {
		name string
		// begin advances (looking up keys) to the start of the outage.
		begin func(t *testing.T, e *rtEnv, l *rtLooker)
	}{
		{"just fetched", func(t *testing.T, e *rtEnv, l *rtLooker) {}},
		{"mid-TTL", func(t *testing.T, e *rtEnv, l *rtLooker) {
			st := e.status()
			l.until(st.LastRefresh.Add(st.ExpiresAt.Sub(st.LastRefresh) / 2))
		}},
		{"refresh window", func(t *testing.T, e *rtEnv, l *rtLooker) {
			// The outage starts as the background refresh comes due, so
			// every refresh of the window fails and the keys expire.
			l.until(e.status().NextRefresh.Add(-time.Millisecond))
		}},
		{"just expired", func(t *testing.T, e *rtEnv, l *rtLooker) {
			// The refreshes of the window got a login page (kept out by
			// validation), so the keys are already past expiry when the
			// outage starts.
			st := e.status()
			l.until(st.NextRefresh.Add(-time.Millisecond))
			e.idp.SetFault(rtPath, testidp.Fault{HTML: true})
			l.until(st.ExpiresAt.Add(time.Second))
			synctest.Wait()
			if now := e.status(); !now.Stale || now.ErrorCount == 0 {
				t.Fatalf("precondition: keys not expired at the start of the outage: stale=%v errors=%d", now.Stale, now.ErrorCount)
			}
		}},
	}
	const outage = 15 * time.Minute
	for _, ph := range phases {
		for _, fk := range rtFaultKinds {
			t.Run(ph.name+"/"+fk.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					e := newRTEnv(t, rtConfig{})
					defer e.close()
					l := &rtLooker{e: e}
					l.check()
					ph.begin(t, e, l)

					start := time.Now()
					before := len(e.rec.times(rtPath))
					e.idp.SetFault(rtPath, fk.fault)
					l.until(start.Add(outage))
					synctest.Wait()
					st := e.status()
					if !st.Stale || st.ErrorCount == 0 || st.LastErrorClass != string(fk.class) {
						t.Errorf("end of outage: stale=%v errors=%d class=%q, want stale, errors, %q", st.Stale, st.ErrorCount, st.LastErrorClass, fk.class)
					}
					during := len(e.rec.times(rtPath)) - before
					e.idp.ClearFault(rtPath)
					end := time.Now()

					var recovered time.Duration = -1
					for time.Since(end) < 10*time.Minute {
						time.Sleep(10 * time.Second)
						l.check()
						if recovered < 0 && e.status().ErrorCount == 0 {
							recovered = time.Since(end)
						}
					}
					synctest.Wait()
					t.Logf("outage %v: %d requests during it, %d lookups, %d failed, %d waited, recovered within %v",
						outage, during, l.lookups, l.fails, l.waited, recovered)
					if l.fails != 0 {
						t.Errorf("%d of %d lookups of known kids failed; first: %s", l.fails, l.lookups, l.firstFail)
					}
					if l.waited != 0 {
						t.Errorf("%d lookups of known kids waited", l.waited)
					}
					st = e.status()
					if st.State != StateReady || st.Stale || st.ErrorCount != 0 || st.LastError != "" || st.LastRefresh.Before(end) {
						t.Errorf("after recovery: %v stale=%v errors=%d %q lastRefresh=%v, want Ready, fresh, no error, refreshed after %v",
							st.State, st.Stale, st.ErrorCount, st.LastError, st.LastRefresh, end)
					}
					// Backoff is capped at 5 min; a timed-out fetch takes up to 8s.
					if recovered < 0 || recovered > 5*time.Minute+20*time.Second {
						t.Errorf("recovered %v after the IdP came back, want within the 5 min backoff cap", recovered)
					}
				})
			})
		}
	}
}

func TestRefreshOutageBeyondStaleWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newRTEnv(t, rtConfig{reg: Registration{StaleWhileError: 10 * time.Minute}})
		defer e.close()
		ctx := context.Background()
		first := e.status()
		staleUntil := first.StaleUntil
		if want := first.ExpiresAt.Add(10 * time.Minute); !staleUntil.Equal(want) {
			t.Fatalf("StaleUntil = %v, want %v", staleUntil, want)
		}
		start := time.Now()
		before := len(e.rec.times(rtPath))
		e.idp.SetFault(rtPath, testidp.Fault{Status: http.StatusServiceUnavailable})
		// Look up every 10s, off the grid of staleUntil by 5s.
		time.Sleep(5 * time.Second)
		var okBefore, failAfter, badAfter int
		for time.Since(start) < 2*time.Hour {
			now := time.Now()
			err := e.key("rsa-1")
			switch {
			case now.Before(staleUntil):
				if err != nil {
					t.Fatalf("+%v, inside the stale window: %v", now.Sub(start), err)
				}
				okBefore++
			case err == nil:
				t.Fatalf("+%v, after the stale window: lookup succeeded", now.Sub(start))
			case !errors.Is(err, ErrNoKeys) || !errors.Is(err, ErrUpstream):
				badAfter++
				t.Errorf("+%v: %v, want ErrNoKeys and ErrUpstream", now.Sub(start), err)
			default:
				failAfter++
			}
			time.Sleep(10 * time.Second)
		}
		synctest.Wait()
		t.Logf("2h outage with a 10m stale window: %d lookups served (stale or fresh), %d failed with ErrNoKeys; %d requests",
			okBefore, failAfter, len(e.rec.times(rtPath))-before)

		// Empty, or Loading when a background retry happens to be waiting
		// between its attempts right now (the backoff is random).
		st := e.status()
		if st.State != StateEmpty && st.State != StateLoading || st.ErrorCount == 0 || st.LastError == "" || st.LastErrorClass != string(ClassStatus) || len(st.Keys) != 0 {
			t.Errorf("after 2h: %v errors=%d class=%q keys=%d %q, want Empty (or Loading) with a status error and no keys",
				st.State, st.ErrorCount, st.LastErrorClass, len(st.Keys), st.LastError)
		}
		_, err := e.m.Key(ctx, rtTenant, rtProvider, "rsa-1")
		if !errors.Is(err, ErrNoKeys) || !errors.Is(err, ErrUpstream) {
			t.Errorf("Key: %v, want ErrNoKeys and ErrUpstream", err)
		} else if fe := rtFetchError(t, err); fe.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("cause: %v, want status 503", fe)
		}
		if _, err := e.m.Resolve(ctx, rtTenant, rtProvider); !errors.Is(err, ErrNoKeys) || !errors.Is(err, ErrUpstream) {
			t.Errorf("Resolve: %v, want ErrNoKeys and ErrUpstream", err)
		}

		// The background retries never paused for more than the 5 min cap,
		// and grew to it.
		ts := e.rec.times(rtPath)[before:]
		var maxGap time.Duration
		for i := 1; i < len(ts); i++ {
			maxGap = max(maxGap, ts[i].Sub(ts[i-1]))
		}
		if maxGap > failureBackoffMax || maxGap < failureBackoffMax/2 {
			t.Errorf("longest pause between requests %v, want in [2m30s, 5m]", maxGap)
		}

		// The IdP recovers; no lookup is made.
		e.idp.ClearFault(rtPath)
		recoverAt := time.Now()
		for time.Since(recoverAt) < failureBackoffMax+10*time.Second && e.status().State != StateReady {
			time.Sleep(time.Second)
			synctest.Wait()
		}
		st = e.status()
		t.Logf("back to Ready %v after the IdP recovered, without a lookup", time.Since(recoverAt))
		if st.State != StateReady || st.ErrorCount != 0 || st.Stale || len(st.Keys) != 3 {
			t.Fatalf("after recovery: %v errors=%d stale=%v keys=%d, want Ready with 3 keys", st.State, st.ErrorCount, st.Stale, len(st.Keys))
		}
		if err := e.key("rsa-1"); err != nil {
			t.Errorf("Key after recovery: %v", err)
		}
	})
}

// 6. Stale-while-error status, readers never wait.

func TestRefreshStaleWhileError(t *testing.T) {
	// expire makes every refresh fail from the refresh window on and
	// advances past the keys' expiry.
	expire := func(e *rtEnv) ProviderStatus {
		first := e.status()
		e.sleepUntil(first.NextRefresh.Add(-time.Millisecond))
		e.idp.SetFault(rtPath, testidp.Fault{Status: http.StatusServiceUnavailable})
		e.sleepUntil(first.ExpiresAt.Add(time.Second))
		e.settle()
		return first
	}

	t.Run("status during an outage after expiry", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newRTEnv(t, rtConfig{reg: Registration{PrefetchJitter: -1}})
			defer e.close()
			first := expire(e)
			// A synchronous refresh: afterwards no fetch is in flight.
			err := e.m.Refresh(context.Background(), rtTenant, rtProvider)
			if fe := rtFetchError(t, err); fe.Class != ClassStatus || fe.StatusCode != 503 {
				t.Errorf("Refresh: %v, want status 503", err)
			}
			st := e.status()
			if st.State != StateReady || !st.Stale || st.ErrorCount < 2 || st.LastError == "" || st.LastErrorClass != string(ClassStatus) {
				t.Errorf("status: %v stale=%v errors=%d class=%q %q, want Ready, stale, errors, status",
					st.State, st.Stale, st.ErrorCount, st.LastErrorClass, st.LastError)
			}
			if !st.ExpiresAt.Equal(first.ExpiresAt) || !st.StaleUntil.Equal(first.ExpiresAt.Add(DefaultStaleWhileError)) {
				t.Errorf("ExpiresAt %v StaleUntil %v, want %v and +1h", st.ExpiresAt, st.StaleUntil, first.ExpiresAt)
			}
			if got, want := rtStatusKIDs(st), rtKIDsOf(e.keys); !slices.Equal(got, want) {
				t.Errorf("kids = %v, want %v", got, want)
			}
			if !st.NextRefresh.After(time.Now()) {
				t.Errorf("NextRefresh %v is not in the future", st.NextRefresh)
			}
			for _, k := range e.keys {
				if err := e.key(k.KID); err != nil {
					t.Errorf("Key(%s): %v", k.KID, err)
				}
			}
		})
	})

	cases := []struct {
		name   string
		stale  bool // the keys are past expiry
		manual bool // the refresh in flight is a manual Refresh, else the background one
	}{
		{"fresh keys/manual refresh in flight", false, true},
		{"fresh keys/background refresh in flight", false, false},
		{"stale keys/manual refresh in flight", true, true},
		{"stale keys/background retry in flight", true, false},
	}
	for _, tc := range cases {
		t.Run("readers never wait/"+tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newRTEnv(t, rtConfig{reg: Registration{PrefetchJitter: -1}})
				defer e.close()
				if tc.stale {
					expire(e)
				}
				snap0 := e.snap()
				slow := testidp.Fault{Delay: time.Hour} // every attempt times out
				var refreshErr error
				var wg sync.WaitGroup
				if tc.manual {
					e.idp.SetFault(rtPath, slow)
					wg.Go(func() { refreshErr = e.m.Refresh(context.Background(), rtTenant, rtProvider) })
					synctest.Wait()
				} else {
					e.sleepUntil(e.status().NextRefresh.Add(-time.Millisecond))
					e.idp.SetFault(rtPath, slow)
					e.sleepUntil(e.status().NextRefresh.Add(time.Millisecond))
				}
				st := e.status()
				if st.State != StateRefreshing || st.Stale != tc.stale {
					t.Fatalf("precondition: %v stale=%v, want Refreshing stale=%v", st.State, st.Stale, tc.stale)
				}
				n := e.requests()
				start := time.Now()
				for i, k := range e.keys {
					if err := e.key(k.KID); err != nil {
						t.Errorf("Key(%s): %v", k.KID, err)
					}
					if err := e.parse(k.Sign(rtClaims())); err != nil {
						t.Errorf("Keyfunc(%s): %v", k.KID, err)
					}
					if i == 0 {
						if _, err := e.m.Resolve(context.Background(), rtTenant, rtProvider); err != nil {
							t.Errorf("Resolve: %v", err)
						}
					}
				}
				if d := time.Since(start); d != 0 {
					t.Errorf("lookups during a stuck refresh took %v of virtual time, want 0", d)
				}
				if got := e.requests(); got != n {
					t.Errorf("lookups made %d requests", got-n)
				}
				time.Sleep(DefaultDeadline)
				wg.Wait()
				synctest.Wait()
				if tc.manual {
					if fe := rtFetchError(t, refreshErr); fe.Class != ClassTimeout {
						t.Errorf("Refresh: %v, want a timeout", refreshErr)
					}
				}
				st = e.status()
				if st.State != StateReady || st.LastErrorClass != string(ClassTimeout) || st.ErrorCount == 0 {
					t.Errorf("after the stuck refresh: %v class=%q errors=%d, want Ready, timeout", st.State, st.LastErrorClass, st.ErrorCount)
				}
				if e.snap() != snap0 {
					t.Error("the snapshot changed")
				}
			})
		})
	}
}

// 7. Bad upstream responses never replace the last good keys.

func TestRefreshBadUpstream(t *testing.T) {
	fault := func(f testidp.Fault) func(*testidp.IdP) {
		return func(idp *testidp.IdP) { idp.SetFault(rtPath, f) }
	}
	body := func(b, ct string) func(*testidp.IdP) {
		return func(idp *testidp.IdP) { idp.SetBody(rtPath, []byte(b), ct) }
	}
	const mib = 1 << 20
	cases := []struct {
		name   string
		apply  func(*testidp.IdP)
		class  ErrorClass
		status int
		is     error // sentinel the error must match
	}{
		{"status 500", fault(testidp.Fault{Status: 500}), ClassStatus, 500, ErrUpstream},
		{"status 503", fault(testidp.Fault{Status: 503}), ClassStatus, 503, ErrUpstream},
		{"status 404", fault(testidp.Fault{Status: 404}), ClassStatus, 404, ErrUpstream},
		{"status 429", fault(testidp.Fault{Status: 429}), ClassStatus, 429, ErrUpstream},
		{"HTML login page", fault(testidp.Fault{HTML: true}), ClassParse, 0, ErrUpstream},
		{"HTML served as JSON", body("<!DOCTYPE html><html>Login</html>", "application/json"), ClassParse, 0, ErrUpstream},
		{"truncated body", fault(testidp.Fault{Truncated: true}), ClassParse, 0, ErrUpstream},
		{"truncated body, no length", fault(testidp.Fault{Truncated: true, HideLength: true}), ClassParse, 0, ErrUpstream},
		{"oversize body", fault(testidp.Fault{Oversize: 2 * mib}), ClassTooLarge, 0, ErrTooLarge},
		{"oversize body, no length", fault(testidp.Fault{Oversize: 2 * mib, HideLength: true}), ClassTooLarge, 0, ErrTooLarge},
		{"gzip bomb", fault(testidp.Fault{GzipBomb: 8 * mib}), ClassTooLarge, 0, ErrTooLarge},
		{"gzip bomb, no length", fault(testidp.Fault{GzipBomb: 8 * mib, HideLength: true}), ClassTooLarge, 0, ErrTooLarge},
		{"redirect to http", fault(testidp.Fault{RedirectTo: "http://idp.test/jwks.json"}), ClassRedirect, 0, ErrSecurityPolicy},
		{"connection reset", fault(testidp.Fault{Reset: true}), ClassNetwork, 0, ErrUpstream},
		{"connection refused", fault(testidp.Fault{Refuse: true}), ClassNetwork, 0, ErrUpstream},
		{"timeout", fault(testidp.Fault{Delay: time.Minute}), ClassTimeout, 0, ErrUpstream},
		{"only an oct key", body(`{"keys":[{"kty":"oct","kid":"hmac","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}]}`, ""), ClassNoKeys, 0, ErrNoKeys},
		{"empty key set", body(`{"keys":[]}`, ""), ClassNoKeys, 0, ErrNoKeys},
		{"malformed JSON", body(`{"keys":[{"kty":"RSA","kid":`, ""), ClassParse, 0, ErrUpstream},
		{"not a JWKS", body(`{"issuer":"https://idp.test"}`, ""), ClassParse, 0, ErrUpstream},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newRTEnv(t, rtConfig{})
				defer e.close()
				snap0 := e.snap()
				tc.apply(e.idp)
				err := e.m.Refresh(context.Background(), rtTenant, rtProvider)
				if err == nil {
					t.Fatal("Refresh succeeded")
				}
				fe := rtFetchError(t, err)
				if fe.Class != tc.class || fe.StatusCode != tc.status {
					t.Errorf("Refresh: class %q status %d (%v), want %q %d", fe.Class, fe.StatusCode, err, tc.class, tc.status)
				}
				if !errors.Is(err, tc.is) {
					t.Errorf("Refresh: %v does not match %v", err, tc.is)
				}
				st := e.status()
				if st.LastErrorClass != string(tc.class) || st.ErrorCount != 1 || st.LastError == "" || st.State != StateReady || st.Stale {
					t.Errorf("status: class %q errors=%d %v stale=%v %q, want %q, 1 error, Ready, fresh",
						st.LastErrorClass, st.ErrorCount, st.State, st.Stale, st.LastError, tc.class)
				}
				synctest.Wait() // events are delivered on their own goroutine
				if n := e.events.count(EventRefreshFailed); n != 1 {
					t.Errorf("refresh_failed events = %d, want 1", n)
				}
				if n := e.events.count(EventKeysChanged); n != 1 {
					t.Errorf("keys_changed events = %d, want 1", n)
				}
				e.mustKeep(snap0)
			})
		})
	}
}

// 8. The retry policy of one fetch.

func TestRefreshRetryPolicy(t *testing.T) {
	const ms = time.Millisecond
	cases := []struct {
		name     string
		fault    testidp.Fault
		retry    RetryPolicy
		requests int             // per refresh
		gaps     []time.Duration // exact gaps between attempts, when deterministic
		minGap   time.Duration
		maxGaps  []time.Duration // upper bounds of the gaps, when random
		took     time.Duration   // exact duration of the refresh, when deterministic
		class    ErrorClass
		status   int
	}{
		{name: "503 Retry-After 2 honoured", fault: testidp.Fault{Status: 503, RetryAfter: "2"}, requests: 3,
			gaps: []time.Duration{2 * time.Second, 2 * time.Second}, minGap: 2 * time.Second, took: 4 * time.Second, class: ClassStatus, status: 503},
		{name: "429 Retry-After 1 honoured", fault: testidp.Fault{Status: 429, RetryAfter: "1"}, requests: 3,
			gaps: []time.Duration{time.Second, time.Second}, minGap: time.Second, took: 2 * time.Second, class: ClassStatus, status: 429},
		{name: "503 Retry-After 5 over MaxBackoff honoured while it fits the deadline", fault: testidp.Fault{Status: 503, RetryAfter: "5"}, requests: 2,
			gaps: []time.Duration{5 * time.Second}, minGap: 5 * time.Second, took: 5 * time.Second, class: ClassStatus, status: 503},
		{name: "503 Retry-After beyond the deadline: no retry", fault: testidp.Fault{Status: 503, RetryAfter: "30"}, requests: 1, took: 0, class: ClassStatus, status: 503},
		{name: "503 retried: 3 attempts", fault: testidp.Fault{Status: 503}, requests: 3,
			maxGaps: []time.Duration{250 * ms, 500 * ms}, class: ClassStatus, status: 503},
		{name: "500 retried", fault: testidp.Fault{Status: 500}, requests: 3, class: ClassStatus, status: 500},
		{name: "502 retried", fault: testidp.Fault{Status: 502}, requests: 3, class: ClassStatus, status: 502},
		{name: "408 retried", fault: testidp.Fault{Status: 408}, requests: 3, class: ClassStatus, status: 408},
		{name: "429 retried", fault: testidp.Fault{Status: 429}, requests: 3, class: ClassStatus, status: 429},
		{name: "404 not retried", fault: testidp.Fault{Status: 404}, requests: 1, took: 0, class: ClassStatus, status: 404},
		{name: "400 not retried", fault: testidp.Fault{Status: 400}, requests: 1, class: ClassStatus, status: 400},
		{name: "401 not retried", fault: testidp.Fault{Status: 401}, requests: 1, class: ClassStatus, status: 401},
		{name: "403 not retried", fault: testidp.Fault{Status: 403}, requests: 1, class: ClassStatus, status: 403},
		{name: "410 not retried", fault: testidp.Fault{Status: 410}, requests: 1, class: ClassStatus, status: 410},
		{name: "redirect refused: not retried", fault: testidp.Fault{RedirectTo: "http://idp.test/x"}, requests: 1, class: ClassRedirect},
		{name: "connection refused retried", fault: testidp.Fault{Refuse: true}, requests: 3, class: ClassNetwork},
		{name: "JitterNone: exact backoff", fault: testidp.Fault{Status: 503}, retry: RetryPolicy{Jitter: JitterNone}, requests: 3,
			gaps: []time.Duration{250 * ms, 500 * ms}, took: 750 * ms, class: ClassStatus, status: 503},
		{name: "JitterNone: capped by MaxBackoff", fault: testidp.Fault{Status: 503},
			retry:    RetryPolicy{Jitter: JitterNone, MaxRetries: 4, MaxBackoff: time.Second, Deadline: 30 * time.Second},
			requests: 5, gaps: []time.Duration{250 * ms, 500 * ms, time.Second, time.Second}, took: 2750 * ms, class: ClassStatus, status: 503},
		{name: "JitterDecorrelated: within [initial, 3x previous]", fault: testidp.Fault{Status: 503}, retry: RetryPolicy{Jitter: JitterDecorrelated},
			requests: 3, minGap: 250 * ms, maxGaps: []time.Duration{250 * ms, 750 * ms}, class: ClassStatus, status: 503},
		{name: "MaxRetries negative: one attempt", fault: testidp.Fault{Status: 503}, retry: RetryPolicy{MaxRetries: -1}, requests: 1, took: 0, class: ClassStatus, status: 503},
		{name: "timeouts: attempts bounded by AttemptTimeout and Deadline", fault: testidp.Fault{Delay: time.Minute}, retry: RetryPolicy{Jitter: JitterNone},
			requests: 3, gaps: []time.Duration{3250 * ms, 3500 * ms}, took: DefaultDeadline, class: ClassTimeout},
		{name: "timeouts: Deadline cuts the second attempt", fault: testidp.Fault{Delay: time.Minute}, retry: RetryPolicy{Jitter: JitterNone, Deadline: 5 * time.Second},
			requests: 2, gaps: []time.Duration{3250 * ms}, took: 5 * time.Second, class: ClassTimeout},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newRTEnv(t, rtConfig{reg: Registration{Retry: tc.retry}})
				defer e.close()
				e.idp.SetFault(rtPath, tc.fault)
				// Two refreshes in a row: the policy applies per refresh.
				for round := range 2 {
					before := len(e.rec.times(rtPath))
					start := time.Now()
					err := e.m.Refresh(context.Background(), rtTenant, rtProvider)
					took := time.Since(start)
					fe := rtFetchError(t, err)
					if fe.Class != tc.class || fe.StatusCode != tc.status {
						t.Errorf("round %d: %v, want class %q status %d", round, err, tc.class, tc.status)
					}
					ts := e.rec.times(rtPath)[before:]
					if len(ts) != tc.requests {
						t.Fatalf("round %d: %d requests, want %d", round, len(ts), tc.requests)
					}
					if (tc.took != 0 || tc.gaps != nil || tc.requests == 1) && took != tc.took {
						t.Errorf("round %d: refresh took %v, want %v", round, took, tc.took)
					}
					for i := 1; i < len(ts); i++ {
						gap := ts[i].Sub(ts[i-1])
						if tc.gaps != nil && gap != tc.gaps[i-1] {
							t.Errorf("round %d: gap %d = %v, want %v", round, i, gap, tc.gaps[i-1])
						}
						if gap < tc.minGap {
							t.Errorf("round %d: gap %d = %v, want at least %v", round, i, gap, tc.minGap)
						}
						if tc.maxGaps != nil && gap > tc.maxGaps[i-1] {
							t.Errorf("round %d: gap %d = %v, want at most %v", round, i, gap, tc.maxGaps[i-1])
						}
						if tc.gaps == nil && tc.minGap == 0 && gap > DefaultMaxBackoff {
							t.Errorf("round %d: gap %d = %v, over MaxBackoff", round, i, gap)
						}
					}
				}
			})
		})
	}
}

// 9. A failed first load keeps retrying in the background.

func TestRefreshFirstLoadFailure(t *testing.T) {
	cases := []struct {
		name     string
		fault    testidp.Fault
		retry    RetryPolicy
		perFetch int // requests per fetch
		class    ErrorClass
	}{
		{"404, not retried", testidp.Fault{Status: 404}, RetryPolicy{}, 1, ClassStatus},
		{"refused, MaxRetries off", testidp.Fault{Refuse: true}, RetryPolicy{MaxRetries: -1}, 1, ClassNetwork},
		{"503, three attempts per fetch", testidp.Fault{Status: 503}, RetryPolicy{}, 3, ClassStatus},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newRTEnv(t, rtConfig{
					reg:   Registration{Retry: tc.retry},
					setup: func(idp *testidp.IdP) { idp.SetFault(rtPath, tc.fault) },
				})
				defer e.close()
				ctx := context.Background()
				st := e.status()
				if st.State != StateEmpty || st.ErrorCount != 1 || st.LastErrorClass != string(tc.class) {
					t.Fatalf("after the failed first load: %v errors=%d class=%q", st.State, st.ErrorCount, st.LastErrorClass)
				}
				if got := e.requests(); got != tc.perFetch {
					t.Fatalf("first load: %d requests, want %d", got, tc.perFetch)
				}

				// The failure is fresh: callers get it at once, without a request.
				start := time.Now()
				_, err := e.m.Key(ctx, rtTenant, rtProvider, "rsa-1")
				if !errors.Is(err, ErrNoKeys) || !errors.Is(err, ErrUpstream) || rtFetchError(t, err).Class != tc.class {
					t.Errorf("Key: %v, want ErrNoKeys with the %q cause", err, tc.class)
				}
				if _, err := e.m.Resolve(ctx, rtTenant, rtProvider); !errors.Is(err, ErrNoKeys) || !errors.Is(err, ErrUpstream) {
					t.Errorf("Resolve: %v, want ErrNoKeys and ErrUpstream", err)
				}
				if err := e.parse(e.keys[0].Sign(rtClaims())); !errors.Is(err, ErrNoKeys) {
					t.Errorf("Keyfunc: %v, want ErrNoKeys", err)
				}
				if d := time.Since(start); d != 0 {
					t.Errorf("lookups after a fresh failure took %v, want 0", d)
				}
				if got := e.requests(); got != tc.perFetch {
					t.Errorf("lookups after a fresh failure made %d requests", got-tc.perFetch)
				}

				// 40 minutes without any caller.
				e.sleepUntil(start.Add(40 * time.Minute))
				e.settle()
				ts := e.rec.times(rtPath)
				if len(ts)%tc.perFetch != 0 {
					t.Fatalf("%d requests, not a multiple of %d", len(ts), tc.perFetch)
				}
				fetches := len(ts) / tc.perFetch
				var gaps []time.Duration
				for n := 1; n < fetches; n++ {
					end, next := ts[n*tc.perFetch-1], ts[n*tc.perFetch]
					gap := next.Sub(end)
					gaps = append(gaps, gap)
					d := min(2*failureBackoffMin<<(n-1), failureBackoffMax)
					if gap < d/2 || gap > d {
						t.Errorf("gap after failure %d = %v, want in [%v, %v]", n, gap, d/2, d)
					}
				}
				t.Logf("40 min of failed first load: %d fetches (%d requests), gaps %v", fetches, len(ts), gaps)
				if fetches < 12 {
					t.Errorf("only %d fetches in 40 minutes", fetches)
				}
				if st := e.status(); st.ErrorCount != fetches || st.State != StateEmpty {
					t.Errorf("status: errors=%d %v, want %d, Empty", st.ErrorCount, st.State, fetches)
				}

				// The IdP recovers: Ready without any caller, within the cap.
				e.idp.ClearFault(rtPath)
				recoverAt := time.Now()
				if next := e.status().NextRefresh; next.Sub(recoverAt) > failureBackoffMax {
					t.Errorf("next attempt in %v, over the 5 min cap", next.Sub(recoverAt))
				}
				for time.Since(recoverAt) < failureBackoffMax+time.Second && e.status().State != StateReady {
					time.Sleep(100 * time.Millisecond)
					synctest.Wait()
				}
				t.Logf("Ready %v after the IdP recovered, without a caller", time.Since(recoverAt))
				st = e.status()
				if st.State != StateReady || st.ErrorCount != 0 || st.LastError != "" || len(st.Keys) != 3 {
					t.Fatalf("after recovery: %v errors=%d keys=%d %q, want Ready with 3 keys", st.State, st.ErrorCount, len(st.Keys), st.LastError)
				}
				if err := e.key("rsa-1"); err != nil {
					t.Errorf("Key after recovery: %v", err)
				}
			})
		})
	}
}

// 10. Manual Refresh.

func TestRefreshManual(t *testing.T) {
	t.Run("conditional fetch even when fresh", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newRTEnv(t, rtConfig{})
			defer e.close()
			snap0 := e.snap()
			etag := e.status().ETag
			time.Sleep(10 * time.Second) // well inside the 300s TTL
			for i := range 3 {
				n := e.requests()
				if err := e.m.Refresh(context.Background(), rtTenant, rtProvider); err != nil {
					t.Fatalf("Refresh %d: %v", i, err)
				}
				if got := e.requests(); got != n+1 {
					t.Errorf("Refresh %d: %d requests, want 1", i, got-n)
				}
				if got := e.idp.LastRequest(rtPath).Get("If-None-Match"); got != etag || got == "" {
					t.Errorf("Refresh %d: If-None-Match %q, want %q", i, got, etag)
				}
			}
			st := e.status()
			if !st.LastRefresh.Equal(time.Now()) || st.State != StateReady {
				t.Errorf("status: %v LastRefresh %v, want Ready renewed now", st.State, st.LastRefresh)
			}
			if e.snap().keys != snap0.keys || e.events.count(EventKeysChanged) != 1 {
				t.Error("a 304 changed the key set")
			}
			if got := e.prov().refreshCount(resultNotModified); got != 3 {
				t.Errorf("refreshNotModified = %d, want 3", got)
			}
		})
	})

	t.Run("concurrent calls coalesce", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newRTEnv(t, rtConfig{})
			defer e.close()
			const delay = 2 * time.Second // under AttemptTimeout: succeeds
			e.idp.SetFault(rtPath, testidp.Fault{Delay: delay, Count: 1})
			n := e.requests()
			start := time.Now()
			const callers = 10
			errs := make([]error, callers)
			took := make([]time.Duration, callers)
			var wg sync.WaitGroup
			call := func(i int) {
				wg.Go(func() {
					errs[i] = e.m.Refresh(context.Background(), rtTenant, rtProvider)
					took[i] = time.Since(start)
				})
			}
			call(0)
			synctest.Wait() // the first refresh is in flight, held by the delay
			if st := e.status(); st.State != StateRefreshing {
				t.Fatalf("state %v, want Refreshing", st.State)
			}
			for i := 1; i < callers; i++ {
				call(i)
			}
			synctest.Wait()
			wg.Wait()
			if got := e.requests(); got != n+1 {
				t.Errorf("%d concurrent Refresh calls made %d requests, want 1", callers, got-n)
			}
			for i := range callers {
				if errs[i] != nil {
					t.Errorf("caller %d: %v", i, errs[i])
				}
				if took[i] != delay {
					t.Errorf("caller %d returned after %v, want %v (with the shared fetch)", i, took[i], delay)
				}
			}
		})
	})
}

// Unknown kids and the negative cache: "a bounded negative cache remembers
// kids that a fresh fetch did not contain". A fetch that failed, or that
// began before the kid was looked up, has not shown that the kid is missing.
func TestRefreshUnknownKIDNegativeCacheEvidence(t *testing.T) {
	t.Run("failed kid-driven fetch does not negative-cache the kid", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newRTEnv(t, rtConfig{setup: func(idp *testidp.IdP) { idp.SetHeader(rtPath, "Cache-Control", "max-age=86400") }})
			defer e.close()
			nk := e.idp.Rotate(rtPath, "ES256")
			tok := nk.Sign(rtClaims())
			// Exactly the attempts of one fetch fail.
			e.idp.SetFault(rtPath, testidp.Fault{Status: http.StatusServiceUnavailable, Count: DefaultMaxRetries + 1})
			if err := e.parse(tok); err == nil {
				t.Fatal("verified although the refresh failed")
			}
			if got := e.requests(); got != 1+DefaultMaxRetries+1 {
				t.Fatalf("requests = %d, want %d", got, 1+DefaultMaxRetries+1)
			}
			// The IdP answers again and the bucket still holds a token: the
			// rotation must be caught now, not NegativeCacheTTL later.
			if err := e.parse(tok); err != nil {
				t.Errorf("after the IdP recovered: %v (kid negative-cached on a failed fetch)", err)
			}
			if got := e.requests(); got != 1+DefaultMaxRetries+2 {
				t.Errorf("requests = %d, want %d", got, 1+DefaultMaxRetries+2)
			}
		})
	})

	t.Run("joined fetch that began before the rotation", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newRTEnv(t, rtConfig{setup: func(idp *testidp.IdP) { idp.SetHeader(rtPath, "Cache-Control", "max-age=86400") }})
			defer e.close()
			// A slow refresh is in flight; its response is the old set.
			e.idp.SetFault(rtPath, testidp.Fault{Delay: 2 * time.Second, Count: 1})
			var wg sync.WaitGroup
			wg.Go(func() {
				if err := e.m.Refresh(context.Background(), rtTenant, rtProvider); err != nil {
					t.Errorf("Refresh: %v", err)
				}
			})
			synctest.Wait()
			nk := e.idp.Rotate(rtPath, "ES256")
			tok := nk.Sign(rtClaims())
			err := e.parse(tok)
			wg.Wait()
			if err != nil {
				t.Errorf("token of a kid published after the in-flight fetch began: %v", err)
			}
			if got := e.requests(); got != 3 {
				t.Errorf("requests = %d, want 3 (first load, slow refresh, one kid-driven fetch)", got)
			}
			if err := e.parse(tok); err != nil {
				t.Errorf("second verification: %v", err)
			}
		})
	})
}

// TestRefreshRetryAfterBackground checks that a Retry-After too long for
// one fetch still delays the next background attempt (capped at 5 min).
func TestRefreshRetryAfterBackground(t *testing.T) {
	for _, tc := range []struct {
		retryAfter string
		want       time.Duration
	}{
		{"60", time.Minute},
		{"3600", failureBackoffMax},
	} {
		t.Run("Retry-After "+tc.retryAfter, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newRTEnv(t, rtConfig{})
				defer e.close()
				e.idp.SetFault(rtPath, testidp.Fault{Status: 503, RetryAfter: tc.retryAfter})
				n := e.requests()
				err := e.m.Refresh(context.Background(), rtTenant, rtProvider)
				if fe := rtFetchError(t, err); fe.RetryAfter == 0 {
					t.Errorf("Refresh: %v, want a 503 carrying Retry-After", err)
				}
				if got := e.requests() - n; got != 1 {
					t.Errorf("%d requests, want 1 (Retry-After does not fit the deadline)", got)
				}
				next := e.status().NextRefresh
				if d := time.Until(next); d != tc.want {
					t.Errorf("next background attempt in %v, want %v", d, tc.want)
				}
				e.sleepUntil(next.Add(-time.Millisecond))
				if got := e.requests() - n; got != 1 {
					t.Errorf("%d requests before the Retry-After delay ran out, want 1", got)
				}
			})
		})
	}
}

// TestRefreshStaleWhileErrorOff checks that with StaleWhileError off the
// keys stop serving at expiry when refreshes fail, and come back without a
// caller.
func TestRefreshStaleWhileErrorOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newRTEnv(t, rtConfig{reg: Registration{StaleWhileError: -1, PrefetchJitter: -1}})
		defer e.close()
		first := e.status()
		if !first.StaleUntil.Equal(first.ExpiresAt) {
			t.Fatalf("StaleUntil %v, want ExpiresAt %v", first.StaleUntil, first.ExpiresAt)
		}
		e.sleepUntil(first.NextRefresh.Add(-time.Millisecond))
		e.idp.SetFault(rtPath, testidp.Fault{Status: http.StatusServiceUnavailable})
		e.sleepUntil(first.ExpiresAt.Add(-time.Second))
		if err := e.key("rsa-1"); err != nil {
			t.Fatalf("before expiry: %v", err)
		}
		e.sleepUntil(first.ExpiresAt.Add(time.Second))
		e.settle()
		if err := e.key("rsa-1"); !errors.Is(err, ErrNoKeys) || !errors.Is(err, ErrUpstream) {
			t.Errorf("after expiry: %v, want ErrNoKeys and ErrUpstream", err)
		}
		if st := e.status(); st.State != StateEmpty || len(st.Keys) != 0 {
			t.Errorf("after expiry: %v with %d keys, want Empty", st.State, len(st.Keys))
		}
		e.idp.ClearFault(rtPath)
		recoverAt := time.Now()
		for time.Since(recoverAt) < failureBackoffMax+time.Second && e.status().State != StateReady {
			time.Sleep(time.Second)
			synctest.Wait()
		}
		if st := e.status(); st.State != StateReady || st.ErrorCount != 0 {
			t.Errorf("after recovery: %v errors=%d, want Ready", st.State, st.ErrorCount)
		}
	})
}

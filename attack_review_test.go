package jwkscache

// Attack tests from the review of the issue-6 / issue-7 engine (branch
// h-review). Each test demonstrates one finding; it fails on the main it
// was written against and should pass once the finding is fixed.

import (
	"context"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

// atkPanicRT is a RoundTripper that panics while armed and otherwise
// forwards to next. A caller's transport (Options.HTTPClient) is user code:
// a panic there reaches the refresh.
type atkPanicRT struct {
	next  http.RoundTripper
	armed atomic.Int32 // panics left
}

func (rt *atkPanicRT) RoundTrip(r *http.Request) (*http.Response, error) {
	if rt.armed.Add(-1) >= 0 {
		panic("transport exploded")
	}
	return rt.next.RoundTrip(r)
}

// A panic during a scheduled refresh is recovered; the documentation says
// "the refresh fails with ClassPanic and the provider retries later"
// (panicError). But doRefresh set p.inflight = true before the fetch and
// the recovery in flight() never clears it (it takes no lock of p's), so
// expire() and visit() treat the provider as "fetch running" forever: the
// scheduler never refreshes it again, its state stays Refreshing, and once
// its stale window ends it leaves the heap for good.
func TestAttack_PanicDuringRefreshStopsBackgroundRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		k := testidp.NewKey("ES256", "k-1")
		idp.SetKeys("/p", k)
		idp.SetHeader("/p", "Cache-Control", "max-age=60")
		rt := &atkPanicRT{next: idp.Client().Transport}
		m, err := New(Options{HTTPClient: &http.Client{Transport: rt}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close() })
		mtLoad(t, m, "acme", "p", mtHost+"/p")

		rt.armed.Store(1) // the next fetch panics, once
		before := idp.Requests("/p")
		time.Sleep(time.Minute) // the refresh (due before 60 s) panics
		synctest.Wait()
		if rt.armed.Load() == 1 {
			t.Fatal("the scheduled refresh did not run")
		}
		// failureBackoffMax (5 min) later the provider must have been
		// retried, and a healthy IdP then refreshes it every ~30 s.
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		st := mtStatus(t, m, "acme", "p")
		if n := idp.Requests("/p") - before; n == 0 {
			t.Errorf("no fetch in the 10 virtual minutes after a recovered panic: the scheduler "+
				"never retried (state %v, errorCount %d, lastError %q)", st.State, st.ErrorCount, st.LastError)
		}
		if st.State == StateRefreshing {
			t.Errorf("state still %v 10 minutes after the panicked refresh", st.State)
		}
	})
}

// The hit counter's cleanup closure (counters.go allocFor) captures
// c = &m.hits and the documents' cleanup captures d = &m.docs: interior
// pointers into the Manager. Cleanup functions are GC roots, and the
// Manager reaches its providers (the scheduler's heap keeps them after
// Close), so a provider's cleanup keeps the Manager alive, which keeps the
// provider alive: a closed Manager with at least one provider is never
// collected, with every key set it held.
func TestAttack_ClosedManagerIsCollected(t *testing.T) {
	idp := testidp.New()
	idp.SetKeys("/p", testidp.NewKey("ES256", "k-1"))
	var collected atomic.Bool
	func() {
		m, err := New(Options{HTTPClient: idp.Client()})
		if err != nil {
			t.Fatal(err)
		}
		for _, prov := range []string{"a", "b"} {
			if err := m.Register(context.Background(), Registration{TenantID: "acme", ProviderID: prov, JWKSURL: mtHost + "/p"}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := m.Key(context.Background(), "acme", "a", "k-1"); err != nil {
			t.Fatal(err)
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		runtime.AddCleanup(m, func(*atomic.Bool) { collected.Store(true) }, &collected)
	}()
	for i := 0; i < 20 && !collected.Load(); i++ {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if !collected.Load() {
		t.Error("a closed Manager is never garbage-collected: the runtime cleanups of its providers " +
			"and documents capture &m.hits / &m.docs and keep it reachable")
	}
}

// A kid quoted in a lookup error is upstream data (it names a key of the
// fetched document and comes from the token header), yet keys.go's
// lookupAlg and lookup quote it with %q, uncapped: "key %q may not verify
// %s", "kid %q names %d keys ...". The oversized-kid guard in keySlow
// applies only to kids missing from the set. A document with a 100 KB kid
// (well within the 1 MiB cap) and a token naming it with another
// algorithm family yields a 100 KB error text per request.
func TestAttack_LongKidInLookupErrorUncapped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		long := strings.Repeat("K", 100_000)
		rsaKey := testidp.NewKey("RS256", long)
		ecKey := testidp.NewKey("ES256", long)
		idp.SetKeys("/p", rsaKey, ecKey)
		m := mtManager(t, idp, Options{})
		mtLoad(t, m, "acme", "p", mtHost+"/p")

		// Keyfunc: the RSA key may not verify ES384; Key: two keys of one kid.
		tok := &jwt.Token{Header: map[string]any{"kid": long, "alg": "ES384"}, Claims: jwt.MapClaims{}}
		_, err1 := m.Keyfunc("acme", "p")(tok)
		_, err2 := m.Key(t.Context(), "acme", "p", long)
		for i, err := range []error{err1, err2} {
			if err == nil {
				t.Fatalf("lookup %d: no error", i)
			}
			if n := len(err.Error()); n > 2048 {
				t.Errorf("lookup %d: error text of %d bytes from a document kid (want <= ~2 KiB, kid shown cut)", i, n)
			}
		}
	})
}

// atkRecHandler records every attribute value's length.
type atkRecHandler struct {
	mu      sync.Mutex
	longest map[string]int
}

func (h *atkRecHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *atkRecHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	r.Attrs(func(a slog.Attr) bool {
		if n := len(a.Value.String()); n > h.longest[a.Key] {
			h.longest[a.Key] = n
		}
		return true
	})
	return nil
}
func (h *atkRecHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *atkRecHandler) WithGroup(string) slog.Handler      { return h }

// A discovered jwks_uri may be 2 KiB (maxDiscoveredURL) and is upstream
// data, but logOutcome logs it as the "url" attribute uncapped, and
// ProviderError puts it (uncapped) in front of a FetchError that repeats it
// (capped at 1 KiB) with its cause: a lookup error of over 3 KiB, and a
// log attribute over the 1 KiB cap of issue 6 item 4.
func TestAttack_DiscoveredURLUncappedInLogsAndErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		const issuer = mtHost + "/t1"
		jwksPath := "/" + strings.Repeat("j", 2000)
		idp.SetDiscovery("/t1/.well-known/openid-configuration", issuer, mtHost+jwksPath)
		idp.SetKeys(jwksPath, testidp.NewKey("ES256", "k-1"))
		idp.SetHeader(jwksPath, "Cache-Control", "max-age=60")
		h := &atkRecHandler{longest: map[string]int{}}
		m := mtManager(t, idp, Options{Logger: slog.New(h)})
		if err := m.Register(t.Context(), Registration{TenantID: "acme", ProviderID: "p", Issuer: issuer, StaleWhileError: -1}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		mtStatus(t, m, "acme", "p")
		idp.SetFault(jwksPath, testidp.Fault{Status: 500})
		time.Sleep(5 * time.Minute) // refreshes fail, keys expire
		synctest.Wait()
		_, err := m.Key(t.Context(), "acme", "p", "k-1")
		if err == nil {
			t.Fatal("Key succeeded with the IdP failing past expiry")
		}
		if n := len(err.Error()); n > 2048 {
			t.Errorf("lookup error of %d bytes, from a discovered jwks_uri: %.200s…", n, err.Error())
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		for key, n := range h.longest {
			if n > maxErrorText+64 {
				t.Errorf("log attribute %q of %d bytes (cap %d)", key, n, maxErrorText)
			}
		}
	})
}

// applyLocked revives o.base when the stale window ran out while a
// revalidation was in flight and the IdP answers 304. o.base carries the
// issuer bound when the fetch began; update() could not rebind it, since
// the snapshot was nil when Register changed the Issuer (same JWKSURL, so
// not a source change). The revived snapshot therefore binds the keys to
// the OLD issuer: tokens of the issuer the operator just removed verify
// through Keyfunc, and tokens of the new issuer are refused (also through
// TenantKeyfunc, which routes them to this provider), until the document
// changes.
func TestAttack_RevalidatedSnapshotKeepsOldIssuer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const issA, issB = "https://a.example", "https://b.example"
		idp := testidp.New()
		k := testidp.NewKey("ES256", "k-1")
		idp.SetKeys("/p", k)
		idp.SetHeader("/p", "Cache-Control", "max-age=60")
		m := mtManager(t, idp, Options{})
		reg := Registration{TenantID: "acme", ProviderID: "p", JWKSURL: mtHost + "/p", Issuer: issA,
			StaleWhileError: -1, PrefetchJitter: -1,
			Retry: RetryPolicy{AttemptTimeout: time.Minute, Deadline: time.Minute}}
		if err := m.Register(t.Context(), reg); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		st := mtStatus(t, m, "acme", "p")
		if st.State != StateReady {
			t.Fatalf("first load: %v %q", st.State, st.LastError)
		}
		// The revalidation (due at +30 s) takes 40 s: the keys expire at
		// +60 s while it is in flight.
		idp.SetFault("/p", testidp.Fault{Delay: 40 * time.Second})
		i6SleepUntil(st.ExpiresAt.Add(time.Second))
		if got := mtStatus(t, m, "acme", "p"); len(got.Keys) != 0 {
			t.Fatalf("keys still served 1 s after ExpiresAt with no stale window (state %v)", got.State)
		}
		idp.ClearFault("/p")
		// The operator moves the provider to issuer B.
		reg.Issuer = issB
		if err := m.Register(t.Context(), reg); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Minute) // the 304 arrives
		synctest.Wait()
		if got := mtStatus(t, m, "acme", "p"); len(got.Keys) == 0 {
			t.Fatalf("no keys after the revalidation (state %v, %q)", got.State, got.LastError)
		}
		tok := func(iss string) *jwt.Token {
			return &jwt.Token{Header: map[string]any{"kid": k.KID, "alg": "ES256"}, Claims: jwt.MapClaims{"iss": iss}}
		}
		if _, err := m.Keyfunc("acme", "p")(tok(issA)); err == nil {
			t.Errorf("Keyfunc accepted a token of the old issuer %s after Register moved the provider to %s", issA, issB)
		}
		if _, err := m.TenantKeyfunc("acme")(tok(issB)); err != nil {
			t.Errorf("TenantKeyfunc refused a token of the registered issuer %s: %v", issB, err)
		}
	})
}

// Fairness bypass. p.slow is set only by apply() for the current
// registration generation: a fetch superseded by Register (gen changed)
// returns errSuperseded before p.slow is updated, and the flight then loops
// to fetch again on the same worker. A provider that was fast and is
// re-registered with a changed source (URL toggled by a config sync or a
// hostile tenant admin) before each fetch ends therefore never becomes
// slow, whatever its fetches take: with 2 workers (at most 1 slow), two
// such providers hold both workers for good and a healthy provider of
// another tenant is never refreshed in the background: its keys expire.
// (Related: the first load of a new source is not counted as slow either,
// contrary to "first loads included".)
var atkToggleOnce = false // true: control run, one switch only (passes)

func TestAttack_SourceToggleKeepsHangingProviderFast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		g := testidp.NewKey("ES256", "g-1")
		i6Serve(idp, "/g", 60, g)
		for _, path := range []string{"/h", "/hang-a", "/hang-b"} {
			i6Serve(idp, path, 3600, testidp.NewKey("ES256", "h-1"))
		}
		idp.SetFault("/hang-a", testidp.Fault{Delay: time.Hour})
		idp.SetFault("/hang-b", testidp.Fault{Delay: time.Hour})
		m := mtManager(t, idp, Options{RefreshWorkers: 2})
		hostile := func(i int, path string) {
			if err := m.Register(t.Context(), Registration{TenantID: "evil", ProviderID: "h" + itoa(i), JWKSURL: mtHost + path}); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.Register(t.Context(), Registration{TenantID: "good", ProviderID: "g", JWKSURL: mtHost + "/g", StaleWhileError: -1}); err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			hostile(i, "/h")
		}
		synctest.Wait() // both hostile providers loaded fast: not slow
		before := idp.Requests("/g")
		start := time.Now()
		for n := 0; time.Since(start) < 5*time.Minute; n++ {
			if atkToggleOnce && n > 0 {
				i6Step(5 * time.Second)
				continue
			}
			path := "/hang-a"
			if n%2 == 1 {
				path = "/hang-b"
			}
			for i := range 2 {
				hostile(i, path)
			}
			i6Step(5 * time.Second)
		}
		if n := idp.Requests("/g") - before; n == 0 {
			st := mtStatus(t, m, "good", "g")
			t.Errorf("the healthy provider was not refreshed once in 5 virtual minutes (max-age 60 s) while two "+
				"providers that re-register to hanging URLs held both workers; its state is %v", st.State)
		}
	})
}

// The same hole without any timing: an update that counts as a source
// change (here: MaxResponseBytes changes together with the Issuer; or a
// discovery issuer whose document names the same jwks_uri) keeps the old
// snapshot, still bound to the old issuer (update's source-change branch
// does not rebind it), and the reload fetches the same URL with the old
// validators. The 304 (or the identical body) renews the old snapshot,
// issuer included, and every later refresh renews it again: the provider
// accepts the removed issuer and refuses the registered one until the IdP
// publishes a different document.
func TestAttack_SourceChangeSameURLKeepsOldIssuer(t *testing.T) {
	const issA, issB = "https://a.example", "https://b.example"
	for _, etag := range []bool{true, false} {
		name := "304"
		if !etag {
			name = "identical 200"
		}
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				idp := testidp.New()
				k := testidp.NewKey("ES256", "k-1")
				idp.SetKeys("/p", k)
				idp.SetHeader("/p", "Cache-Control", "max-age=60")
				idp.SetETag("/p", etag)
				m := mtManager(t, idp, Options{})
				reg := Registration{TenantID: "acme", ProviderID: "p", JWKSURL: mtHost + "/p", Issuer: issA}
				if err := m.Register(t.Context(), reg); err != nil {
					t.Fatal(err)
				}
				synctest.Wait()
				reg.Issuer, reg.MaxResponseBytes = issB, 512<<10
				if err := m.Register(t.Context(), reg); err != nil {
					t.Fatal(err)
				}
				time.Sleep(10 * time.Minute) // the reload and many refreshes
				synctest.Wait()
				tok := func(iss string) *jwt.Token {
					return &jwt.Token{Header: map[string]any{"kid": k.KID, "alg": "ES256"}, Claims: jwt.MapClaims{"iss": iss}}
				}
				if _, err := m.Keyfunc("acme", "p")(tok(issA)); err == nil {
					t.Errorf("10 min after Register moved the provider to %s, Keyfunc still accepts tokens of %s", issB, issA)
				}
				if _, err := m.Keyfunc("acme", "p")(tok(issB)); err != nil {
					t.Errorf("Keyfunc refuses tokens of the registered issuer %s: %v", issB, err)
				}
			})
		})
	}
}

// capKIDs caps each kid at 64 bytes and keeps 20 of them, but the "kids"
// attribute as a whole is then up to ~1.7 KiB of upstream data, over the
// 1 KiB cap of issue 6 item 4.
func TestAttack_KidsLogAttributeOverCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		var keys []*testidp.Key
		for i := range 25 {
			keys = append(keys, testidp.NewKey("ES256", strings.Repeat("k", 200)+itoa(i)))
		}
		idp.SetKeys("/p", keys...)
		h := &atkRecHandler{longest: map[string]int{}}
		m := mtManager(t, idp, Options{Logger: slog.New(h)})
		mtLoad(t, m, "acme", "p", mtHost+"/p")
		synctest.Wait()
		h.mu.Lock()
		defer h.mu.Unlock()
		if n := h.longest["kids"]; n == 0 || n > maxErrorText+64 {
			t.Errorf(`log attribute "kids" of %d bytes (cap %d)`, n, maxErrorText)
		}
	})
}

// The panic recovery of flight() (and of visit()) reschedules the provider
// at now + failureBackoffMax without regard to its stale window:
// schedule() overwrites p.due, moving the heap entry that expire() had
// set at StaleUntil. Readers never check the clock, so the keys are served
// up to 5 minutes past the end of their stale window.
func TestAttack_PanicRecoveryPostponesWithdrawal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		k := testidp.NewKey("ES256", "k-1")
		idp.SetKeys("/p", k)
		idp.SetHeader("/p", "Cache-Control", "max-age=60")
		rt := &atkPanicRT{next: idp.Client().Transport}
		m, err := New(Options{HTTPClient: &http.Client{Transport: rt}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close() })
		if err := m.Register(t.Context(), Registration{TenantID: "acme", ProviderID: "p", JWKSURL: mtHost + "/p", StaleWhileError: -1}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		st := mtStatus(t, m, "acme", "p")
		rt.armed.Store(1) // the refresh before expiry panics
		i6SleepUntil(st.StaleUntil.Add(time.Second))
		if rt.armed.Load() == 1 {
			t.Fatal("the refresh did not run before StaleUntil")
		}
		if _, err := m.Key(t.Context(), "acme", "p", k.KID); err == nil {
			t.Errorf("Key served 1 s after StaleUntil (no stale window): a recovered panic postponed the withdrawal")
		}
	})
}

package jwkscache

// The Manager API the control plane serves from: JWKS, Revalidate,
// RefreshAsync, TenantStatuses, RegisterIfVersion and ProviderMetrics.

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

type servedDoc struct {
	Keys []struct {
		KID string `json:"kid"`
		D   string `json:"d"`
		X5U string `json:"x5u"`
	} `json:"keys"`
	Stale     bool      `json:"stale"`
	ExpiresAt time.Time `json:"expiresAt"`
}

func decodeServed(t *testing.T, sj *ServedJWKS) servedDoc {
	t.Helper()
	var d servedDoc
	if err := json.Unmarshal(sj.Body, &d); err != nil {
		t.Fatalf("served body is not JSON: %v\n%s", err, sj.Body)
	}
	return d
}

func TestJWKS_ServedDocument(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		k1, k2 := testidp.NewKey("ES256", "k1"), testidp.NewKey("RS256", "k2")
		i6Serve(idp, mtPath, 60, k1, k2)
		m := mtManager(t, idp, Options{})
		if err := m.Register(t.Context(), Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: mtURL, StaleWhileError: time.Hour}); err != nil {
			t.Fatal(err)
		}
		sj, err := m.JWKS(t.Context(), mtTenant, mtProvider) // loads the cold provider
		if err != nil {
			t.Fatal(err)
		}
		d := decodeServed(t, sj)
		if len(d.Keys) != 2 || d.Keys[0].KID != "k1" || d.Keys[1].KID != "k2" || d.Stale || !d.ExpiresAt.Equal(sj.ExpiresAt.Truncate(time.Second)) {
			t.Fatalf("served document %s", sj.Body)
		}
		if !slices.Equal(sj.KIDs, []string{"k1", "k2"}) || sj.Source != "network" {
			t.Fatalf("KIDs %v, source %q", sj.KIDs, sj.Source)
		}
		again, _ := m.JWKS(t.Context(), mtTenant, mtProvider)
		if again != sj {
			t.Fatal("the served document was rebuilt though nothing changed")
		}
		// A denial changes the document and its ETag at once.
		if err := m.DenyKey(mtTenant, mtProvider, "k1"); err != nil {
			t.Fatal(err)
		}
		denied, _ := m.JWKS(t.Context(), mtTenant, mtProvider)
		if d := decodeServed(t, denied); len(d.Keys) != 1 || d.Keys[0].KID != "k2" || denied.ETag == sj.ETag {
			t.Fatalf("after DenyKey(k1): %s, ETag %s (was %s)", denied.Body, denied.ETag, sj.ETag)
		}
		if _, ok := denied.Only("k1"); ok {
			t.Fatal("Only found a denied kid")
		}
		only, ok := sj.Only("k2")
		if d := decodeServed(t, only); !ok || len(d.Keys) != 1 || only.ETag == sj.ETag || only.ETag != denied.ETag {
			t.Fatalf("Only(k2) = %s, %v; want the document of k2 alone, tagged as such", only.Body, ok)
		}
		// Past the expiry, with the IdP down, the document says stale.
		idp.SetFault(mtPath, testidp.Fault{Status: 503})
		i6Step(61 * time.Second)
		stale, err := m.JWKS(t.Context(), mtTenant, mtProvider)
		if err != nil || !decodeServed(t, stale).Stale || !stale.Stale || stale.ETag == denied.ETag {
			t.Fatalf("past expiry: %v, %s", err, stale.Body)
		}
	})
}

// Revalidate fetches at once, shares the unknown-kid budget, and answers
// ErrRateLimited when it is spent, without calling the IdP.
func TestRevalidate_SpendsTheUnknownKIDBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		k1, k2 := testidp.NewKey("ES256", "k1"), testidp.NewKey("ES256", "k2")
		i6Serve(idp, mtPath, 3600, k1)
		m := mtManager(t, idp, Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		i6Serve(idp, mtPath, 3600, k2)
		if err := m.Revalidate(t.Context(), mtTenant, mtProvider); err != nil {
			t.Fatal(err)
		}
		if sj, _ := m.JWKS(t.Context(), mtTenant, mtProvider); !slices.Equal(sj.KIDs, []string{"k2"}) {
			t.Fatalf("after Revalidate: %v", sj.KIDs)
		}
		if err := m.Revalidate(t.Context(), mtTenant, mtProvider); err != nil {
			t.Fatal(err) // the burst is 2
		}
		before := idp.Requests(mtPath)
		err := m.Revalidate(t.Context(), mtTenant, mtProvider)
		if !errors.Is(err, ErrRateLimited) {
			t.Fatalf("third Revalidate = %v, want ErrRateLimited", err)
		}
		mtErrNames(t, err, mtTenant, mtProvider)
		if idp.Requests(mtPath) != before {
			t.Fatal("a rate-limited Revalidate called the IdP")
		}
		// A token refills after NegativeCacheTTL, shared with unknown kids.
		i6Step(DefaultNegativeCacheTTL)
		if _, err := m.Key(t.Context(), mtTenant, mtProvider, "nope"); !errors.Is(err, ErrKeyNotFound) {
			t.Fatal(err)
		}
		if err := m.Revalidate(t.Context(), mtTenant, mtProvider); !errors.Is(err, ErrRateLimited) {
			t.Fatalf("Revalidate after an unknown kid spent the token = %v, want ErrRateLimited", err)
		}
	})
}

// gateRT holds the IdP's answers while closed: a fetch in flight stays in
// flight until the test opens it.
type gateRT struct {
	next   http.RoundTripper
	closed atomic.Bool
	gate   chan struct{}
	seen   atomic.Int32
	// late: the IdP answers at once and the answer is held, so that a
	// held fetch carries the IdP's state from before any later change.
	late bool
}

func (g *gateRT) RoundTrip(r *http.Request) (*http.Response, error) {
	g.seen.Add(1)
	var (
		resp *http.Response
		err  error
	)
	if g.late {
		resp, err = g.next.RoundTrip(r)
	}
	if g.closed.Load() {
		select {
		case <-g.gate:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	if g.late {
		return resp, err
	}
	return g.next.RoundTrip(r)
}

// RefreshAsync returns at once and never joins a fetch that began before
// it: with one in flight, another follows.
func TestRefreshAsync_NeverJoinsAnEarlierFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 3600, testidp.NewKey("ES256", "k1"))
		g := &gateRT{next: idp.Client().Transport, gate: make(chan struct{})}
		m, err := New(Options{HTTPClient: &http.Client{Transport: g}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close() })
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		g.closed.Store(true)
		go func() { _ = m.Refresh(t.Context(), mtTenant, mtProvider) }()
		synctest.Wait() // that fetch waits at the gate
		if g.seen.Load() != 2 {
			t.Fatalf("%d requests, want the first load and the blocked refresh", g.seen.Load())
		}
		start := time.Now()
		for range 3 { // calls made while one waits to begin share it
			if err := m.RefreshAsync(mtTenant, mtProvider); err != nil {
				t.Fatal(err)
			}
		}
		if time.Since(start) != 0 {
			t.Fatal("RefreshAsync waited")
		}
		g.closed.Store(false)
		close(g.gate)
		synctest.Wait()
		if got := g.seen.Load(); got != 3 {
			t.Fatalf("%d requests; want one more after the blocked one (RefreshAsync must not join it, and its calls share one)", got)
		}
		if err := m.RefreshAsync(mtTenant, "nope"); !errors.Is(err, ErrNotRegistered) {
			t.Fatalf("RefreshAsync of an unknown provider = %v", err)
		}
	})
}

func TestTenantStatuses_OneTenantSorted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 60, testidp.NewKey("ES256", "k1"))
		m := mtManager(t, idp, Options{})
		for _, pr := range [][2]string{{"b", "z"}, {"a", "y"}, {"b", "x"}, {"c", "x"}, {"b-2", "x"}} {
			mtRegister(t, m, pr[0], pr[1], mtURL)
		}
		var got []string
		for _, st := range m.TenantStatuses("b") {
			got = append(got, st.TenantID+"/"+st.ProviderID)
		}
		if !slices.Equal(got, []string{"b/x", "b/z"}) {
			t.Fatalf("TenantStatuses(b) = %v", got)
		}
		if err := m.Unregister(t.Context(), "b", "x"); err != nil {
			t.Fatal(err)
		}
		if sts := m.TenantStatuses("b"); len(sts) != 1 || sts[0].ProviderID != "z" {
			t.Fatalf("after Unregister: %+v", sts)
		}
		if sts := m.TenantStatuses("none"); sts == nil || len(sts) != 0 {
			t.Fatalf("TenantStatuses of an unknown tenant = %#v, want empty", sts)
		}
	})
}

func TestRegisterIfVersion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 60, testidp.NewKey("ES256", "k1"))
		m := mtManager(t, idp, Options{})
		reg := Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: mtURL}
		if err := m.RegisterIfVersion(t.Context(), reg, "*"); !errors.Is(err, ErrNotRegistered) {
			t.Fatalf("If-Match * on a missing provider = %v", err)
		}
		mtRegister(t, m, mtTenant, mtProvider, mtURL)
		v1 := mtStatus(t, m, mtTenant, mtProvider).RegistrationVersion
		if len(v1) != 16 {
			t.Fatalf("RegistrationVersion %q", v1)
		}
		mtRegister(t, m, mtTenant, mtProvider, mtURL)
		if v := mtStatus(t, m, mtTenant, mtProvider).RegistrationVersion; v != v1 {
			t.Fatalf("the same registration changed version: %s, %s", v1, v)
		}
		reg.Issuer = "https://a.test"
		if err := m.RegisterIfVersion(t.Context(), reg, v1); err != nil {
			t.Fatal(err)
		}
		v2 := mtStatus(t, m, mtTenant, mtProvider).RegistrationVersion
		reg.Issuer = "https://b.test"
		err := m.RegisterIfVersion(t.Context(), reg, v1)
		if !errors.Is(err, ErrVersionMismatch) {
			t.Fatalf("stale version = %v, want ErrVersionMismatch", err)
		}
		if st := mtStatus(t, m, mtTenant, mtProvider); st.Issuer != "https://a.test" || st.RegistrationVersion != v2 {
			t.Fatalf("a refused RegisterIfVersion changed the registration: %q", st.Issuer)
		}
		if err := m.RegisterIfVersion(t.Context(), reg, "*"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestProviderMetrics_OwnSeriesOnly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		k1 := testidp.NewKey("ES256", "k1")
		i6Serve(idp, mtPath, 60, k1)
		m := mtManager(t, idp, Options{})
		mtLoad(t, m, "t1", "p1", mtURL)
		mtLoad(t, m, "t2", "p1", mtURL)
		for range 3 {
			mtMustKey(t, m, "t1", "p1", k1)
		}
		ms, err := m.ProviderMetrics("t1", "p1")
		if err != nil {
			t.Fatal(err)
		}
		var hits float64
		var names []string
		for _, s := range ms {
			if s.Labels["tenant"] != "t1" || s.Labels["provider"] != "p1" {
				t.Fatalf("series of another provider: %+v", s)
			}
			if s.Name == metricLookups && s.Labels["result"] == "hit" {
				hits = s.Value
			}
			names = append(names, s.Name)
		}
		if hits != 3 {
			t.Fatalf("lookups hit = %v, want 3", hits)
		}
		for _, want := range []string{metricKeys, metricRefreshes, metricRefreshDuration + "_count", metricRefreshDuration + "_bucket"} {
			if !slices.Contains(names, want) {
				t.Errorf("no %s in %v", want, names)
			}
		}
		if _, err := m.ProviderMetrics("t1", "nope"); !errors.Is(err, ErrNotRegistered) {
			t.Fatal(err)
		}
	})
}

// Last-Modified never goes back (a client holding a newer document would
// get 304 for an older one), and a document with every key denied is no
// document.
func TestJWKS_LastModifiedMonotonicAndAllDenied(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 3600, testidp.NewKey("ES256", "k1"))
		m := mtManager(t, idp, Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		first, _ := m.JWKS(t.Context(), mtTenant, mtProvider)
		i6Step(time.Minute)
		if err := m.DenyKey(mtTenant, mtProvider, "k1"); err != nil {
			t.Fatal(err)
		}
		_, err := m.JWKS(t.Context(), mtTenant, mtProvider)
		if !errors.Is(err, ErrNoKeys) || !errors.Is(err, ErrKeyDenied) {
			t.Fatalf("JWKS with every key denied = %v, want ErrNoKeys and ErrKeyDenied", err)
		}
		i6Step(time.Minute)
		if err := m.AllowKey(mtTenant, mtProvider, "k1"); err != nil {
			t.Fatal(err)
		}
		again, err := m.JWKS(t.Context(), mtTenant, mtProvider)
		if err != nil || !again.LastModified.After(first.LastModified) {
			t.Fatalf("after AllowKey: Last-Modified %v, was %v (%v)", again.LastModified, first.LastModified, err)
		}
	})
}

// Revalidate on a cold provider is its first load, which spends no budget.
func TestRevalidate_ColdProviderSpendsNoBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 3600, testidp.NewKey("ES256", "k1"))
		m := mtManager(t, idp, Options{})
		mtRegister(t, m, mtTenant, mtProvider, mtURL)
		if err := m.Revalidate(t.Context(), mtTenant, mtProvider); err != nil {
			t.Fatal(err)
		}
		for i := range 2 { // the whole burst is left
			if err := m.Revalidate(t.Context(), mtTenant, mtProvider); err != nil {
				t.Fatalf("revalidation %d after a cold one: %v", i+1, err)
			}
		}
	})
}

// Revalidate answers from a fetch begun after the call: joining one that
// was in flight before would miss the rotation the client met.
func TestRevalidate_NeverAnswersFromAnEarlierFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 3600, testidp.NewKey("ES256", "k1"))
		g := &gateRT{next: idp.Client().Transport, gate: make(chan struct{}), late: true}
		m, err := New(Options{HTTPClient: &http.Client{Transport: g}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close() })
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		g.closed.Store(true)
		go func() { _ = m.Refresh(t.Context(), mtTenant, mtProvider) }()
		synctest.Wait() // a fetch in flight, answered before the rotation
		i6Serve(idp, mtPath, 3600, testidp.NewKey("ES256", "k2"))
		done := make(chan error, 1)
		go func() { done <- m.Revalidate(t.Context(), mtTenant, mtProvider) }()
		synctest.Wait()
		g.closed.Store(false)
		close(g.gate)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		sj, _ := m.JWKS(t.Context(), mtTenant, mtProvider)
		if !slices.Equal(sj.KIDs, []string{"k2"}) || g.seen.Load() != 3 {
			t.Fatalf("after Revalidate: kids %v, %d requests; want k2 from a third request", sj.KIDs, g.seen.Load())
		}
	})
}

package jwkscache

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

const mtBase = "https://idp.test"

// series returns the metrics of family name whose labels include want.
func series(t *testing.T, reg prometheus.Gatherer, name string, want map[string]string) []*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	var out []*dto.Metric
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			out = append(out, m)
		}
	}
	return out
}

// value returns the value of the one counter or gauge of family name with
// labels want; ok is false when there is none.
func value(t *testing.T, reg prometheus.Gatherer, name string, want map[string]string) (v float64, ok bool) {
	t.Helper()
	ms := series(t, reg, name, want)
	switch len(ms) {
	case 0:
		return 0, false
	case 1:
	default:
		t.Fatalf("%s%v: %d series, want 1", name, want, len(ms))
	}
	m := ms[0]
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue(), true
	case m.Gauge != nil:
		return m.Gauge.GetValue(), true
	}
	t.Fatalf("%s%v is neither a counter nor a gauge", name, want)
	return 0, false
}

func mustValue(t *testing.T, reg prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	v, ok := value(t, reg, name, want)
	if !ok {
		t.Fatalf("no series %s%v", name, want)
	}
	return v
}

func prov(tenant, provider string, kv ...string) map[string]string {
	m := map[string]string{"tenant": tenant, "provider": provider}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// TestMetricsTwoTenants runs scripted traffic against two tenants and
// checks names, types, help, labels and values, and that nothing counted
// for one tenant shows under the other.
func TestMetricsTwoTenants(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		idp.SetKeys("/globex/jwks.json", testidp.NewKey("ES256", "g-1"))
		idp.SetHeader("/globex/jwks.json", "Cache-Control", "max-age=300")
		reg := prometheus.NewPedanticRegistry()
		m, err := New(Options{HTTPClient: idp.Client(), Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		ctx := context.Background()
		if err := m.Register(ctx, Registration{TenantID: "acme", ProviderID: "auth0", JWKSURL: mtBase + testidp.DefaultPath}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // acme's first load runs in the background
		// globex: a lookup at once waits for the cold load (a miss), then a
		// hit. The IdP answers after a second, so the background load cannot
		// finish before the first lookup.
		idp.SetFault("/globex/jwks.json", testidp.Fault{Delay: time.Second, Count: 1})
		if err := m.Register(ctx, Registration{TenantID: "globex", ProviderID: "okta", JWKSURL: mtBase + "/globex/jwks.json"}); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if _, err := m.Key(ctx, "globex", "okta", "g-1"); err != nil {
				t.Fatal(err)
			}
		}
		// acme: three hits, an unknown kid that refreshes, the same kid
		// again (negative cache).
		for _, k := range keys {
			if _, err := m.Key(ctx, "acme", "auth0", k.KID); err != nil {
				t.Fatal(err)
			}
		}
		for range 2 {
			if _, err := m.Key(ctx, "acme", "auth0", "nope"); !errors.Is(err, ErrKeyNotFound) {
				t.Fatalf("unknown kid: %v", err)
			}
		}
		synctest.Wait()

		want := `
# HELP jwks_cache_lookups_total Key lookups (Key, Keyfunc, Resolve): hit when answered from keys in memory, miss otherwise (waited for a fetch, no keys, unknown or denied kid).
# TYPE jwks_cache_lookups_total counter
jwks_cache_lookups_total{provider="auth0",result="hit",tenant="acme"} 3
jwks_cache_lookups_total{provider="auth0",result="miss",tenant="acme"} 2
jwks_cache_lookups_total{provider="okta",result="hit",tenant="globex"} 1
jwks_cache_lookups_total{provider="okta",result="miss",tenant="globex"} 1
# HELP jwks_cache_unknown_kid_total Lookups of a kid missing from the key set, by what happened: refreshed (a refresh was allowed), rate_limited, negative_hit (missing from a recent fetch).
# TYPE jwks_cache_unknown_kid_total counter
jwks_cache_unknown_kid_total{outcome="negative_hit",provider="auth0",tenant="acme"} 1
jwks_cache_unknown_kid_total{outcome="rate_limited",provider="auth0",tenant="acme"} 0
jwks_cache_unknown_kid_total{outcome="refreshed",provider="auth0",tenant="acme"} 1
# HELP jwks_cache_refreshes_total Refreshes (fetches of the key set) by result and by why they started.
# TYPE jwks_cache_refreshes_total counter
jwks_cache_refreshes_total{provider="auth0",reason="first_load",result="updated",tenant="acme"} 1
jwks_cache_refreshes_total{provider="auth0",reason="unknown_kid",result="not_modified",tenant="acme"} 1
jwks_cache_refreshes_total{provider="okta",reason="first_load",result="updated",tenant="globex"} 1
# HELP jwks_cache_keys Usable keys in the key set served (0 when none).
# TYPE jwks_cache_keys gauge
jwks_cache_keys{provider="auth0",tenant="acme"} 3
jwks_cache_keys{provider="okta",tenant="globex"} 1
# HELP jwks_cache_state 1 for the provider's current state, 0 for the others; per tenant: the number of providers in each state.
# TYPE jwks_cache_state gauge
jwks_cache_state{provider="auth0",state="Empty",tenant="acme"} 0
jwks_cache_state{provider="auth0",state="Loading",tenant="acme"} 0
jwks_cache_state{provider="auth0",state="Ready",tenant="acme"} 1
jwks_cache_state{provider="auth0",state="Refreshing",tenant="acme"} 0
jwks_cache_state{provider="okta",state="Empty",tenant="globex"} 0
jwks_cache_state{provider="okta",state="Loading",tenant="globex"} 0
jwks_cache_state{provider="okta",state="Ready",tenant="globex"} 1
jwks_cache_state{provider="okta",state="Refreshing",tenant="globex"} 0
# HELP jwks_cache_providers Registered providers by state.
# TYPE jwks_cache_providers gauge
jwks_cache_providers{state="Empty"} 0
jwks_cache_providers{state="Loading"} 0
jwks_cache_providers{state="Ready"} 2
jwks_cache_providers{state="Refreshing"} 0
# HELP jwks_cache_stale 1 while the keys served are past their expiry (stale-while-error), else 0; per tenant: the number of such providers.
# TYPE jwks_cache_stale gauge
jwks_cache_stale{provider="auth0",tenant="acme"} 0
jwks_cache_stale{provider="okta",tenant="globex"} 0
# HELP jwks_cache_scheduler_busy_workers Refresh workers busy with a provider.
# TYPE jwks_cache_scheduler_busy_workers gauge
jwks_cache_scheduler_busy_workers 0
# HELP jwks_cache_scheduler_queue_depth Providers due for a background refresh that wait for a worker, slow ones in line for a slow slot included.
# TYPE jwks_cache_scheduler_queue_depth gauge
jwks_cache_scheduler_queue_depth 0
`
		names := []string{"jwks_cache_lookups_total", "jwks_cache_unknown_kid_total", "jwks_cache_refreshes_total",
			"jwks_cache_keys", "jwks_cache_state", "jwks_cache_providers", "jwks_cache_stale",
			"jwks_cache_scheduler_busy_workers", "jwks_cache_scheduler_queue_depth"}
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
			t.Error(err)
		}
		// No error yet: no error series for anyone.
		if ms := series(t, reg, metricFetchErrors, nil); len(ms) != 0 {
			t.Errorf("fetch errors before any failure: %v", ms)
		}
		// Lookup waits: globex's cold lookup and acme's unknown kid, one each.
		for _, tp := range [][2]string{{"acme", "auth0"}, {"globex", "okta"}} {
			ms := series(t, reg, metricLookupWait, prov(tp[0], tp[1]))
			if len(ms) != 1 || ms[0].Histogram.GetSampleCount() != 1 {
				t.Errorf("%s wait histogram = %v, want one observation", tp[0], ms)
			}
			ms = series(t, reg, metricRefreshDuration, prov(tp[0], tp[1]))
			want := uint64(1)
			if tp[0] == "acme" {
				want = 2
			}
			if len(ms) != 1 || ms[0].Histogram.GetSampleCount() != want {
				t.Errorf("%s refresh duration histogram = %v, want %d observations", tp[0], ms, want)
			}
		}
		// Status agrees with the scrape.
		st, _ := m.Status("acme", "auth0")
		if st.HitRate != 0.6 || st.StaleServeRatio != 0 || st.Source != "network" || st.LastSuccess.IsZero() {
			t.Errorf("acme status: HitRate %v StaleServeRatio %v Source %q LastSuccess %v", st.HitRate, st.StaleServeRatio, st.Source, st.LastSuccess)
		}
	})
}

// TestMetricsOutage scripts an IdP outage in virtual time: the scrape after
// the first failed refresh, within two minutes of its start, shows the
// error class; the time since the last success grows; stale serving shows.
func TestMetricsOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		idp.SetHeader(testidp.DefaultPath, "Cache-Control", "max-age=60")
		reg := prometheus.NewPedanticRegistry()
		m, err := New(Options{HTTPClient: idp.Client(), Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		ctx := context.Background()
		if err := m.Register(ctx, Registration{TenantID: "acme", ProviderID: "auth0", JWKSURL: mtBase + testidp.DefaultPath, PrefetchJitter: -1,
			// One attempt per refresh: a refresh waiting between attempts
			// would still be in flight when the manual Refresh below
			// starts, which would then join it (reason scheduled).
			Retry: RetryPolicy{MaxRetries: -1}}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		start := time.Now()
		idp.SetFault(testidp.DefaultPath, testidp.Fault{Status: 503})
		id := prov("acme", "auth0")
		if v := mustValue(t, reg, metricSinceSuccess, id); v != 0 {
			t.Errorf("since last success right after the load = %v, want 0", v)
		}

		// The refresh at 30 s (half the 60 s TTL) fails.
		time.Sleep(31 * time.Second)
		synctest.Wait()
		if got := mustValue(t, reg, metricFetchErrors, prov("acme", "auth0", "class", "status")); got != 1 {
			t.Errorf("fetch errors{class=status} = %v, want 1", got)
		}
		if got := mustValue(t, reg, metricRefreshes, prov("acme", "auth0", "result", "error", "reason", "scheduled")); got != 1 {
			t.Errorf("refreshes{error,scheduled} = %v, want 1", got)
		}
		since1 := mustValue(t, reg, metricSinceSuccess, id)
		if since1 < 31 {
			t.Errorf("since last success = %v, want >= 31", since1)
		}
		if v := mustValue(t, reg, metricStale, id); v != 0 {
			t.Errorf("stale = %v before expiry", v)
		}
		// Past the expiry at 60 s: stale, keys still served.
		time.Sleep(time.Until(start.Add(90 * time.Second)))
		synctest.Wait()
		for _, k := range keys[:2] {
			if _, err := m.Key(ctx, "acme", "auth0", k.KID); err != nil {
				t.Fatalf("stale key: %v", err)
			}
		}
		since2 := mustValue(t, reg, metricSinceSuccess, id)
		if since2 < since1+59 {
			t.Errorf("since last success did not grow: %v then %v", since1, since2)
		}
		if v := mustValue(t, reg, metricStale, id); v != 1 {
			t.Errorf("stale = %v past expiry, want 1", v)
		}
		if v := mustValue(t, reg, metricExpiry, id); v > -29 {
			t.Errorf("expiry seconds = %v, want <= -29 (expired 30 s ago)", v)
		}
		if v := mustValue(t, reg, metricStaleLookups, id); v != 2 {
			t.Errorf("stale lookups = %v, want 2", v)
		}
		if v := mustValue(t, reg, metricFetchErrors, prov("acme", "auth0", "class", "status")); v < 2 {
			t.Errorf("fetch errors after 90 s of outage = %v, want the retries counted too", v)
		}
		if time.Since(start) > 2*time.Minute {
			t.Fatalf("took %v of virtual time", time.Since(start))
		}
		st, _ := m.Status("acme", "auth0")
		if st.StaleServeRatio != 1 || st.LastSuccess.After(start) || !st.Stale {
			t.Errorf("status: StaleServeRatio %v (want 1: both lookups stale), LastSuccess %v, Stale %v", st.StaleServeRatio, st.LastSuccess, st.Stale)
		}

		// Recovery: a successful refresh ends the stale count.
		idp.ClearFault(testidp.DefaultPath)
		if err := m.Refresh(ctx, "acme", "auth0"); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Key(ctx, "acme", "auth0", keys[0].KID); err != nil {
			t.Fatal(err)
		}
		if v := mustValue(t, reg, metricStaleLookups, id); v != 2 {
			t.Errorf("stale lookups after recovery = %v, want still 2", v)
		}
		if v := mustValue(t, reg, metricSinceSuccess, id); v != 0 {
			t.Errorf("since last success after recovery = %v, want 0", v)
		}
		if v := mustValue(t, reg, metricRefreshes, prov("acme", "auth0", "result", "not_modified", "reason", "manual")); v != 1 {
			t.Errorf("refreshes{not_modified,manual} = %v, want 1", v)
		}
	})
}

// TestMetricsWithdrawnKeepsLastSuccess: once the stale window runs out and
// the keys are withdrawn, the time since the last success still shows.
func TestMetricsWithdrawnKeepsLastSuccess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := testidp.NewDefault()
		idp.SetHeader(testidp.DefaultPath, "Cache-Control", "max-age=60")
		reg := prometheus.NewPedanticRegistry()
		m, err := New(Options{HTTPClient: idp.Client(), Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.Register(context.Background(), Registration{TenantID: "acme", ProviderID: "auth0",
			JWKSURL: mtBase + testidp.DefaultPath, StaleWhileError: time.Minute}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		loaded := time.Now()
		idp.SetFault(testidp.DefaultPath, testidp.Fault{Refuse: true})
		time.Sleep(3 * time.Minute)
		synctest.Wait()
		id := prov("acme", "auth0")
		if v := mustValue(t, reg, metricState, prov("acme", "auth0", "state", "Empty")); v != 1 {
			t.Fatalf("state Empty = %v after the stale window, want 1", v)
		}
		if _, ok := value(t, reg, metricExpiry, id); ok {
			t.Error("expiry shown without keys")
		}
		if v := mustValue(t, reg, metricKeys, id); v != 0 {
			t.Errorf("keys = %v, want 0", v)
		}
		since := mustValue(t, reg, metricSinceSuccess, id)
		if want := time.Since(loaded).Seconds(); since != want {
			t.Errorf("since last success = %v, want %v", since, want)
		}
		if v := mustValue(t, reg, metricFetchErrors, prov("acme", "auth0", "class", "network")); v < 1 {
			t.Errorf("network errors = %v", v)
		}
		st, _ := m.Status("acme", "auth0")
		if !st.LastSuccess.Equal(loaded) || st.Source != "" {
			t.Errorf("status: LastSuccess %v (want %v), Source %q", st.LastSuccess, loaded, st.Source)
		}
	})
}

// TestMetricsRotation counts the kids added and removed by a key rotation.
func TestMetricsRotation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		reg := prometheus.NewPedanticRegistry()
		m, err := New(Options{HTTPClient: idp.Client(), Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		ctx := context.Background()
		if err := m.Register(ctx, Registration{TenantID: "acme", ProviderID: "auth0", JWKSURL: mtBase + testidp.DefaultPath}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		id := prov("acme", "auth0")
		if v := mustValue(t, reg, metricKIDsAdded, id); v != 0 {
			t.Errorf("kids added by the first load = %v, want 0 (it replaces nothing)", v)
		}
		nk := idp.Rotate(testidp.DefaultPath, "ES256") // adds one key, keeps the last two
		if err := m.Refresh(ctx, "acme", "auth0"); err != nil {
			t.Fatal(err)
		}
		var after []string
		for _, k := range idp.Keys(testidp.DefaultPath) {
			after = append(after, k.KID)
		}
		removed := 0
		for _, k := range keys {
			if !slices.Contains(after, k.KID) {
				removed++
			}
		}
		if !slices.Contains(after, nk.KID) || removed == 0 {
			t.Fatalf("test IdP rotation: %v", after)
		}
		if v := mustValue(t, reg, metricKIDsAdded, id); v != 1 {
			t.Errorf("kids added = %v, want 1", v)
		}
		if v := mustValue(t, reg, metricKIDsRemoved, id); v != float64(removed) {
			t.Errorf("kids removed = %v, want %d", v, removed)
		}
		if v := mustValue(t, reg, metricRefreshes, prov("acme", "auth0", "result", "updated", "reason", "manual")); v != 1 {
			t.Errorf("refreshes{updated,manual} = %v, want 1", v)
		}
	})
}

// TestMetricsCollapse registers 20,000 providers: above
// MetricsProviderLimit no series is per provider, and the series count is
// bounded by the tenants; above it in tenants too, by a constant.
func TestMetricsCollapse(t *testing.T) {
	if testing.Short() {
		t.Skip("20,000 providers")
	}
	const n, tenants = 20_000, 200
	idp := testidp.New()
	idp.SetKeys(testidp.DefaultPath, testidp.NewKey("ES256", "ec-1"))
	idp.SetHeader(testidp.DefaultPath, "Cache-Control", "max-age=86400")
	reg := prometheus.NewPedanticRegistry()
	regGlobal := prometheus.NewPedanticRegistry()
	m, err := New(Options{HTTPClient: idp.Client(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// A second Manager whose limit is below the tenant count.
	m2, err := New(Options{HTTPClient: idp.Client(), Registerer: regGlobal, MetricsProviderLimit: tenants / 2})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	ctx := context.Background()
	for i := range n {
		r := Registration{TenantID: "t" + strconv.Itoa(i%tenants), ProviderID: "p" + strconv.Itoa(i), JWKSURL: mtBase + testidp.DefaultPath}
		if err := m.Register(ctx, r); err != nil {
			t.Fatal(err)
		}
		if i < 300 {
			if err := m2.Register(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
	}
	// One lookup per provider (a miss or a hit): the sums must survive
	// the collapse.
	for i := range n {
		_, _ = m.Key(ctx, "t"+strconv.Itoa(i%tenants), "p"+strconv.Itoa(i), "ec-1")
	}
	count := func(reg prometheus.Gatherer) (total int, tenantSet map[string]bool) {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatalf("Gather: %v", err)
		}
		tenantSet = map[string]bool{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				total++
				if h := m.GetHistogram(); h != nil {
					total += len(h.GetBucket()) + 2 // as exposed: the buckets, +Inf, sum and count
				}
				for _, lp := range m.GetLabel() {
					if lp.GetName() == "provider" && lp.GetValue() != "" {
						t.Fatalf("per-provider series above the limit: %v", m)
					}
					if lp.GetName() == "tenant" {
						tenantSet[lp.GetValue()] = true
					}
				}
			}
		}
		return total, tenantSet
	}
	total, ts := count(reg)
	t.Logf("%d providers in %d tenants: %d series", n, tenants, total)
	if len(ts) != tenants {
		t.Errorf("tenants in the series = %d, want %d", len(ts), tenants)
	}
	// Per tenant at most: 2 lookups, stale lookups, stale, 3 unknown-kid,
	// 15 refreshes, 12 error classes, two histograms (10 and 14 series),
	// keys, expiry, since success, 4 states, 2 rotation counters, events
	// dropped = 68; and 7 global series.
	if limit := tenants*68 + 7; total > limit {
		t.Errorf("%d series, above the bound %d", total, limit)
	}
	var hits, misses float64
	for _, mt := range series(t, reg, metricLookups, map[string]string{"result": "hit"}) {
		hits += mt.GetCounter().GetValue()
	}
	for _, mt := range series(t, reg, metricLookups, map[string]string{"result": "miss"}) {
		misses += mt.GetCounter().GetValue()
	}
	if hits+misses != n {
		t.Errorf("lookups summed over tenants = %v, want %d", hits+misses, n)
	}
	states := 0.0
	for _, mt := range series(t, reg, metricState, map[string]string{"tenant": "t7"}) {
		states += mt.GetGauge().GetValue()
	}
	if states != n/tenants {
		t.Errorf("tenant t7's state gauges sum to %v, want its %d providers", states, n/tenants)
	}

	total2, ts2 := count(regGlobal)
	t.Logf("300 providers in 200 tenants, limit 100: %d series", total2)
	if len(ts2) != 1 || !ts2[""] {
		t.Errorf("tenants above the limit: series tenants %v, want only \"\"", ts2)
	}
	if total2 > 68+7 {
		t.Errorf("%d series, want at most 75", total2)
	}
}

// TestMetricsBelowLimit: at the limit, series stay per provider.
func TestMetricsBelowLimit(t *testing.T) {
	idp, _ := testidp.NewDefault()
	reg := prometheus.NewPedanticRegistry()
	m, err := New(Options{HTTPClient: idp.Client(), Registerer: reg, MetricsProviderLimit: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for i := range 3 {
		if err := m.Register(context.Background(), Registration{TenantID: "t", ProviderID: "p" + strconv.Itoa(i), JWKSURL: mtBase + testidp.DefaultPath}); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(series(t, reg, metricKeys, nil)); got != 3 {
		t.Errorf("keys series = %d, want 3 (one per provider)", got)
	}
	if err := m.Register(context.Background(), Registration{TenantID: "t", ProviderID: "p3", JWKSURL: mtBase + testidp.DefaultPath}); err != nil {
		t.Fatal(err)
	}
	ms := series(t, reg, metricKeys, nil)
	if len(ms) != 1 || mustValue(t, reg, metricKeys, prov("t", "")) > 4*3 {
		t.Errorf("keys series above the limit = %v, want one for tenant t", ms)
	}
}

// TestMetricsRegisterer: New registers on the Registerer given, Close
// unregisters; a second Manager on the same registry is refused unless
// wrapped with its own labels; the Collector passes the linter.
func TestMetricsRegisterer(t *testing.T) {
	idp, _ := testidp.NewDefault()
	reg := prometheus.NewPedanticRegistry()
	wrap := func(name string) prometheus.Registerer {
		return prometheus.WrapRegistererWith(prometheus.Labels{"cache": name}, reg)
	}
	m, err := New(Options{HTTPClient: idp.Client(), Registerer: wrap("a")})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Register(context.Background(), Registration{TenantID: "t", ProviderID: "p", JWKSURL: mtBase + testidp.DefaultPath}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{HTTPClient: idp.Client(), Registerer: wrap("a")}); err == nil {
		t.Error("a second Manager with the same labels on the same registry was accepted")
	}
	m2, err := New(Options{HTTPClient: idp.Client(), Registerer: wrap("b")})
	if err != nil {
		t.Fatalf("wrapped registerer: %v", err)
	}
	m2.Close()
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
	if n, err := testutil.GatherAndCount(reg, metricPanics); err != nil || n != 1 {
		t.Errorf("panics series = %d (%v), want 1", n, err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Errorf("series after Close = %d (%v), want 0", n, err)
	}
	if _, err := New(Options{Registerer: reg, MetricsProviderLimit: -1}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("negative MetricsProviderLimit: %v", err)
	}
}

// TestMetricsCollectHoldsNoLock blocks Collect on its channel and checks
// that no engine lock is held meanwhile. In a synctest bubble,
// synctest.Wait returns once Collect is blocked on its next send (a
// goroutine waiting for a mutex is not durably blocked).
func TestMetricsCollectHoldsNoLock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		m, err := New(Options{HTTPClient: idp.Client()})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		for _, id := range []string{"a", "b"} {
			if err := m.Register(context.Background(), Registration{TenantID: "t", ProviderID: id, JWKSURL: mtBase + testidp.DefaultPath}); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Key(context.Background(), "t", id, keys[0].KID); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		ch := make(chan prometheus.Metric) // unbuffered: Collect blocks on each send
		done := make(chan struct{})
		go func() {
			defer close(done)
			(&collector{m: m}).Collect(ch)
		}()
		sent := 0
		for {
			synctest.Wait() // Collect is blocked on a send, or done
			for _, p := range m.providers.all() {
				if !p.mu.TryLock() {
					t.Fatalf("p.mu held during a send (after %d metrics)", sent)
				}
				p.mu.Unlock()
			}
			if !m.sched.mu.TryLock() {
				t.Fatalf("scheduler.mu held during a send (after %d metrics)", sent)
			}
			m.sched.mu.Unlock()
			if !m.providers.mu.TryLock() {
				t.Fatalf("registry.mu held during a send (after %d metrics)", sent)
			}
			m.providers.mu.Unlock()
			select {
			case <-ch:
				sent++
			case <-done:
				if sent < 2*20 {
					t.Fatalf("collected %d metrics, want two providers' worth", sent)
				}
				return
			}
		}
	})
}

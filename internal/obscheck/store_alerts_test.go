package obscheck

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
)

// alertRule returns the alert named name from the rules file.
func alertRule(t *testing.T, name string) rulefmt.Rule {
	t.Helper()
	rgs, errs := parseRules(readFile(t, alertsPath))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	for _, g := range rgs.Groups {
		for _, r := range g.Rules {
			if r.Alert == name {
				return r
			}
		}
	}
	t.Fatalf("no alert %s in %s", name, alertsPath)
	return rulefmt.Rule{}
}

// evalAt evaluates expr over q at offset at from the epoch and returns, for
// each sample, its labels (given names only, in order, joined by "/") and
// value.
func evalAt(t *testing.T, q storage.Queryable, expr string, at time.Duration, names ...string) map[string]float64 {
	t.Helper()
	engine := promql.NewEngine(promql.EngineOpts{
		MaxSamples: 1_000_000, Timeout: time.Minute, LookbackDelta: 5 * time.Minute, Parser: promqlParser,
	})
	defer engine.Close()
	iq, err := engine.NewInstantQuery(context.Background(), q, nil, expr, time.Unix(0, 0).Add(at))
	if err != nil {
		t.Fatal(err)
	}
	defer iq.Close()
	res := iq.Exec(context.Background())
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	vec, err := res.Vector()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, s := range vec {
		var key []string
		for _, n := range names {
			key = append(key, s.Metric.Get(n))
		}
		out[fmt.Sprint(key)] = s.F
	}
	return out
}

func keysOf(m map[string]float64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// JWKSCacheStoreRecordsRefused fires at the first scrape that shows a
// refused record whose reason points at tampering or corruption (mac,
// owner, checksum), whether the instance's counter existed before at 0
// (a long-running instance), appears with the refusal (a new instance,
// which reads its records at start), or restarted under the same instance
// label; never for the benign reasons (expired).
func TestStoreRecordsRefusedFiresOnFirstRefusal(t *testing.T) {
	rule := alertRule(t, "JWKSCacheStoreRecordsRefused")
	if rule.Labels["severity"] != "critical" {
		t.Errorf("severity %q, want critical", rule.Labels["severity"])
	}
	refused := func(instance, reason string) labels.Labels {
		return labels.FromStrings("__name__", "jwks_cache_store_refused_total", "job", "jwks", "instance", instance, "reason", reason)
	}
	// Samples every 30s; the refusals are scraped at 5m30s (sample 11).
	q := memQueryable([]scrapeSeries{
		{labels: refused("old", "mac"), values: slices.Concat(rep(0, 11), rep(1, 11))},
		{labels: refused("old", "expired"), values: slices.Concat(rep(0, 11), rep(5, 11))},
		{labels: refused("new", "owner"), first: 11, values: rep(1, 11)},
		{labels: refused("new", "mac"), first: 11, values: rep(0, 11)},
		// Restarted at 5m30s: the counter had been 3 for long (an old
		// refusal), and the new process refused one record at start.
		{labels: refused("restarted", "checksum"), first: -20, values: slices.Concat(rep(3, 31), rep(1, 11))},
		{labels: refused("long-ago", "mac"), first: -40, values: rep(2, 62)},
		{labels: refused("quiet", "mac"), values: rep(0, 22)},
	})
	first := 5*time.Minute + 30*time.Second
	for _, tc := range []struct {
		at   time.Duration
		want []string
	}{
		{first - 30*time.Second, nil},
		{first, []string{"[new owner]", "[old mac]", "[restarted checksum]"}},
		{first + 9*time.Minute, []string{"[new owner]", "[old mac]", "[restarted checksum]"}},
		{first + 11*time.Minute, nil}, // resolved once out of the window
	} {
		got := keysOf(evalAt(t, q, rule.Expr, tc.at, "instance", "reason"))
		if !slices.Equal(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
			t.Errorf("at %v: firing for %v, want %v", tc.at, got, tc.want)
		}
	}
}

// JWKSCacheStoreWritesBacklog fires for a queue that grows without ever
// emptying, with the growth as its value, and not for a queue that
// empties now and then, nor for a flat one (a store down altogether, which
// JWKSCacheStoreDown reports).
func TestStoreWritesBacklog(t *testing.T) {
	rule := alertRule(t, "JWKSCacheStoreWritesBacklog")
	pending := func(instance string) labels.Labels {
		return labels.FromStrings("__name__", "jwks_cache_store_pending_writes", "job", "jwks", "instance", instance)
	}
	busy := make([]float64, 40)
	for i := range busy {
		busy[i] = float64(i % 3) // writes come and go: 0, 1, 2, 0, ...
	}
	q := memQueryable([]scrapeSeries{
		{labels: pending("growing"), values: ramp(1, 1, 40)},
		{labels: pending("busy"), values: busy},
		{labels: pending("flat"), values: rep(50, 40)},
	})
	got := evalAt(t, q, rule.Expr, 19*time.Minute, "instance")
	if keys := keysOf(got); !slices.Equal(keys, []string{"[growing]"}) {
		t.Fatalf("firing for %v, want growing only", keys)
	}
	if v := got["[growing]"]; v < 19 || v > 21 {
		t.Errorf("value %v, want the growth over 10 minutes (about 20)", v)
	}
}

// JWKSCacheStoreDown waits 5 minutes of store_up == 0 before firing.
func TestStoreDownWaits(t *testing.T) {
	rule := alertRule(t, "JWKSCacheStoreDown")
	if got := time.Duration(rule.For); got != 5*time.Minute {
		t.Errorf("for %v, want 5m", got)
	}
	if rule.Labels["severity"] != "warning" {
		t.Errorf("severity %q, want warning", rule.Labels["severity"])
	}
	up := func(instance string) labels.Labels {
		return labels.FromStrings("__name__", "jwks_cache_store_up", "job", "jwks", "instance", instance)
	}
	q := memQueryable([]scrapeSeries{
		{labels: up("down"), values: slices.Concat(rep(1, 5), rep(0, 20))},
		{labels: up("up"), values: rep(1, 25)},
	})
	if keys := keysOf(evalAt(t, q, rule.Expr, 10*time.Minute, "instance")); !slices.Equal(keys, []string{"[down]"}) {
		t.Errorf("firing for %v, want down only", keys)
	}
}

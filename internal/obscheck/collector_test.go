package obscheck

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/jwkscache/jwkscache"
)

// captureRegisterer keeps the collector a Manager registers.
type captureRegisterer struct{ cs []prometheus.Collector }

func (r *captureRegisterer) Register(c prometheus.Collector) error {
	r.cs = append(r.cs, c)
	return nil
}
func (r *captureRegisterer) MustRegister(cs ...prometheus.Collector) { r.cs = append(r.cs, cs...) }
func (r *captureRegisterer) Unregister(prometheus.Collector) bool    { return true }

var (
	descName   = regexp.MustCompile(`fqName: "([^"]+)"`)
	descLabels = regexp.MustCompile(`variableLabels: \{([^}]*)\}`)
)

// exportedMetrics, the list the dashboard and alert checks use, is exactly
// what the library's Collector describes: every family, its per-provider
// labels and its other label names. A metric renamed in metrics.go fails
// here until the list (and so the dashboard and alerts) follow.
func TestExportedMetricsMatchCollector(t *testing.T) {
	reg := &captureRegisterer{}
	m, err := jwkscache.New(jwkscache.Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if len(reg.cs) != 1 {
		t.Fatalf("the Manager registered %d collectors, want 1", len(reg.cs))
	}
	ch := make(chan *prometheus.Desc, 100)
	reg.cs[0].Describe(ch)
	close(ch)
	described := map[string][]string{}
	for d := range ch {
		s := d.String()
		n := descName.FindStringSubmatch(s)
		if n == nil {
			t.Fatalf("cannot read the name of %s", s)
		}
		var labels []string
		if l := descLabels.FindStringSubmatch(s); l != nil && l[1] != "" {
			labels = strings.Split(l[1], ",")
		}
		slices.Sort(labels)
		described[n[1]] = labels
	}
	listed := map[string]bool{}
	for _, spec := range exportedMetrics {
		listed[spec.name] = true
		got, ok := described[spec.name]
		if !ok {
			t.Errorf("%s is in exportedMetrics but the Collector does not export it", spec.name)
			continue
		}
		var want []string
		if spec.perProvider {
			want = append(want, "tenant", "provider")
		}
		for l := range spec.labels {
			want = append(want, l)
		}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: the Collector's labels are %v, exportedMetrics says %v", spec.name, got, want)
		}
	}
	for name := range described {
		if !listed[name] {
			t.Errorf("the Collector exports %s, which exportedMetrics lacks", name)
		}
	}
}

// fleetStub is a FleetStore that holds nothing: enough for a Manager to
// export the store and fleet families.
type fleetStub struct{}

func (fleetStub) LoadSnapshot(context.Context, string, string) ([]byte, error) {
	return nil, jwkscache.ErrStoreNotFound
}
func (fleetStub) SaveSnapshot(context.Context, string, string, []byte, time.Time) error { return nil }
func (fleetStub) SaveRegistration(context.Context, string, string, []byte) error        { return nil }
func (fleetStub) LoadRegistrations(context.Context) ([][]byte, error)                   { return nil, nil }
func (fleetStub) Delete(context.Context, string, string) error                          { return nil }
func (fleetStub) TryLease(context.Context, string, string, time.Duration) (jwkscache.Lease, []byte, error) {
	return nil, nil, nil
}
func (fleetStub) Subscribe(context.Context, func(string, string, []byte)) error { return nil }

// The types and label values of exportedMetrics are those a real Manager
// exports: gathered from one with a FleetStore (so that the store and
// fleet families are there), every family it sends has the type the list
// says, and every label with listed values takes exactly those values, no
// more and no fewer.
func TestExportedMetricTypesAndValues(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := jwkscache.New(jwkscache.Options{Registerer: reg, Store: fleetStub{}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	idx := newMetricIndex(exportedMetrics)
	seen := map[string]bool{}
	for _, mf := range mfs {
		name := mf.GetName()
		seen[name] = true
		spec, ok := idx[name]
		if !ok {
			t.Errorf("the Collector sends %s, which exportedMetrics lacks", name)
			continue
		}
		if got := strings.ToLower(mf.GetType().String()); got != string(spec.typ) {
			t.Errorf("%s: the Collector sends a %s, exportedMetrics says %s", name, got, spec.typ)
		}
		values := map[string][]string{}
		for _, metric := range mf.GetMetric() {
			for _, lp := range metric.GetLabel() {
				values[lp.GetName()] = append(values[lp.GetName()], lp.GetValue())
			}
		}
		for label, want := range spec.labels {
			if want == nil {
				continue
			}
			got := slices.Sorted(slices.Values(values[label]))
			got = slices.Compact(got)
			if w := slices.Sorted(slices.Values(want)); !slices.Equal(got, w) {
				t.Errorf("%s: label %s takes %v, exportedMetrics says %v", name, label, got, w)
			}
		}
	}
	// Without a provider the Collector sends no per-provider family; every
	// other one must be there.
	for _, spec := range exportedMetrics {
		if !spec.perProvider && !seen[spec.name] {
			t.Errorf("a Manager with a FleetStore does not send %s", spec.name)
		}
	}
}

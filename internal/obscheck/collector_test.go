package obscheck

import (
	"regexp"
	"slices"
	"strings"
	"testing"

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

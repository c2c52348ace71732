package jwkscache

import (
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// MetricSample is one sample of one Prometheus series of a provider (see
// ProviderMetrics).
type MetricSample struct {
	Name   string            `json:"name"`
	Value  float64           `json:"value"`
	Labels map[string]string `json:"labels"`
}

// descNames maps the per-provider descriptors to their metric names.
var descNames = map[*prometheus.Desc]string{
	descLookups: metricLookups, descStaleLookups: metricStaleLookups, descStale: metricStale,
	descUnknownKID: metricUnknownKID, descRefreshes: metricRefreshes, descFetchErrors: metricFetchErrors,
	descRefreshDuration: metricRefreshDuration, descLookupWait: metricLookupWait, descKeys: metricKeys,
	descExpiry: metricExpiry, descSinceSuccess: metricSinceSuccess, descState: metricState,
	descKIDsAdded: metricKIDsAdded, descKIDsRemoved: metricKIDsRemoved, descEventsDropped: metricEventsDropped,
}

// ProviderMetrics returns the provider's own series of the Manager's
// metrics (those labelled tenant and provider; see docs/operations.md), as
// the Collector would export them with no MetricsProviderLimit, whether or
// not a Registerer is set. Histograms come as their _bucket, _sum and
// _count series. Nothing of another provider is included.
func (m *Manager) ProviderMetrics(tenant, providerID string) ([]MetricSample, error) {
	p, err := m.provider(tenant, providerID)
	if err != nil {
		return nil, err
	}
	s := provSample{tenant: tenant, provider: providerID}
	p.sample(&s, time.Now())
	ch := make(chan prometheus.Metric, 256)
	go func() {
		emitProvider(ch, &s)
		close(ch)
	}()
	var out []MetricSample
	for metric := range ch {
		name := descNames[metric.Desc()]
		var pb dto.Metric
		if name == "" || metric.Write(&pb) != nil {
			continue
		}
		labels := make(map[string]string, len(pb.Label))
		for _, l := range pb.Label {
			labels[l.GetName()] = l.GetValue()
		}
		add := func(name string, v float64, extra ...string) {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return
			}
			ls := labels
			if len(extra) == 2 {
				ls = make(map[string]string, len(labels)+1)
				for k, v := range labels {
					ls[k] = v
				}
				ls[extra[0]] = extra[1]
			}
			out = append(out, MetricSample{Name: name, Value: v, Labels: ls})
		}
		switch {
		case pb.Counter != nil:
			add(name, pb.Counter.GetValue())
		case pb.Gauge != nil:
			add(name, pb.Gauge.GetValue())
		case pb.Histogram != nil:
			h := pb.Histogram
			for _, b := range h.Bucket {
				add(name+"_bucket", float64(b.GetCumulativeCount()), "le", strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64))
			}
			add(name+"_bucket", float64(h.GetSampleCount()), "le", "+Inf")
			add(name+"_sum", h.GetSampleSum())
			add(name+"_count", float64(h.GetSampleCount()))
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

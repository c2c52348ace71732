package obscheck

import (
	"slices"
	"time"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"
)

// A tiny in-memory storage for evaluating alert expressions with
// Prometheus's engine. promqltest's storage would do, but it drags in the
// TSDB, service discovery and the remote-write clients (AWS, Azure, Google,
// Kubernetes): twice the packages to download and compile.

// scrapeSeries is one series scraped every scrapeInterval, its first sample
// at first*scrapeInterval.
type scrapeSeries struct {
	labels labels.Labels
	first  int
	values []float64
}

const scrapeInterval = 30 * time.Second

// rep returns v n times.
func rep(v float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = v
	}
	return out
}

// ramp returns n values from start, each step more than the last.
func ramp(start, step float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = start + step*float64(i)
	}
	return out
}

type floatSample struct {
	t int64
	f float64
}

func (s floatSample) T() int64                    { return s.t }
func (floatSample) ST() int64                     { return 0 }
func (s floatSample) F() float64                  { return s.f }
func (floatSample) H() *histogram.Histogram       { return nil }
func (floatSample) FH() *histogram.FloatHistogram { return nil }
func (floatSample) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (s floatSample) Copy() chunks.Sample         { return s }
func (s scrapeSeries) sample(i int) floatSample {
	return floatSample{t: (time.Duration(s.first+i) * scrapeInterval).Milliseconds(), f: s.values[i]}
}

type seriesSlice struct {
	series []storage.Series
	i      int
}

func (s *seriesSlice) Next() bool                      { s.i++; return s.i <= len(s.series) }
func (s *seriesSlice) At() storage.Series              { return s.series[s.i-1] }
func (*seriesSlice) Err() error                        { return nil }
func (*seriesSlice) Warnings() annotations.Annotations { return nil }

// memQueryable serves the series, sorted by labels, to a query.
func memQueryable(series []scrapeSeries) storage.Queryable {
	slices.SortFunc(series, func(a, b scrapeSeries) int { return labels.Compare(a.labels, b.labels) })
	return &storage.MockQueryable{MockQuerier: &storage.MockQuerier{
		SelectMockFunction: func(_ bool, hints *storage.SelectHints, matchers ...*labels.Matcher) storage.SeriesSet {
			set := &seriesSlice{}
		next:
			for _, s := range series {
				for _, m := range matchers {
					if !m.Matches(s.labels.Get(m.Name)) {
						continue next
					}
				}
				var samples []chunks.Sample
				for i := range s.values {
					smp := s.sample(i)
					if hints == nil || (smp.t >= hints.Start && smp.t <= hints.End) {
						samples = append(samples, smp)
					}
				}
				set.series = append(set.series, storage.NewListSeries(s.labels, samples))
			}
			return set
		},
	}}
}

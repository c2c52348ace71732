package obscheck

// This file is the one place that says which metrics the Collector exports.
//
// TODO(issue 8): the Collector (metrics.go) is being written on another
// branch. When it lands, replace exportedMetrics by what a real Manager
// exports: build a jwkscache.Manager with Options.Registerer set to a fresh
// prometheus.NewRegistry(), register a provider (internal/testidp), let it
// load, Gather, and turn each MetricFamily into a metricSpec (name, type,
// label names from its metrics). A histogram family's _bucket, _sum and
// _count series map to its base name, as here. Until then, this list is
// copied from issue 8: correct it here, and only here.

type metricType string

const (
	counter       metricType = "counter"
	gauge         metricType = "gauge"
	histogramType metricType = "histogram"
)

// metricSpec is one exported metric family. perProvider families carry the
// labels tenant and provider besides those in labels; labels maps each
// further label to its values, nil meaning any value.
type metricSpec struct {
	name        string
	typ         metricType
	perProvider bool
	labels      map[string][]string
}

var (
	stateValues      = []string{"Empty", "Loading", "Ready", "Refreshing"}
	errorClassValues = []string{"timeout", "tls", "pin", "blocked_address", "redirect", "too_large", "parse", "no_keys", "status", "network", "panic", "closed"}
)

var exportedMetrics = []metricSpec{
	// Per provider.
	{name: "jwks_cache_lookups_total", typ: counter, perProvider: true, labels: map[string][]string{"result": {"hit", "miss"}}},
	{name: "jwks_cache_stale_lookups_total", typ: counter, perProvider: true},
	{name: "jwks_cache_unknown_kid_total", typ: counter, perProvider: true, labels: map[string][]string{"outcome": {"refreshed", "rate_limited", "negative_hit"}}},
	{name: "jwks_cache_refreshes_total", typ: counter, perProvider: true, labels: map[string][]string{
		"result": {"updated", "not_modified", "error"},
		"reason": {"first_load", "scheduled", "unknown_kid", "manual", "revalidate"},
	}},
	{name: "jwks_cache_fetch_errors_total", typ: counter, perProvider: true, labels: map[string][]string{"class": errorClassValues}},
	{name: "jwks_cache_refresh_duration_seconds", typ: histogramType, perProvider: true},
	{name: "jwks_cache_lookup_wait_seconds", typ: histogramType, perProvider: true},
	{name: "jwks_cache_keys", typ: gauge, perProvider: true},
	{name: "jwks_cache_seconds_until_expiry", typ: gauge, perProvider: true},
	{name: "jwks_cache_seconds_since_success", typ: gauge, perProvider: true},
	{name: "jwks_cache_state", typ: gauge, perProvider: true, labels: map[string][]string{"state": stateValues}},
	{name: "jwks_cache_stale", typ: gauge, perProvider: true},
	{name: "jwks_cache_kids_added_total", typ: counter, perProvider: true},
	{name: "jwks_cache_kids_removed_total", typ: counter, perProvider: true},
	{name: "jwks_cache_events_dropped_total", typ: counter, perProvider: true},

	// Global.
	{name: "jwks_cache_scheduler_queue_depth", typ: gauge},
	{name: "jwks_cache_workers_busy", typ: gauge},
	{name: "jwks_cache_providers", typ: gauge, labels: map[string][]string{"state": stateValues}},
	{name: "jwks_cache_panics_total", typ: counter},
}

package obscheck

// This file is the one place that says which metrics the Collector exports.
//
// exportedMetrics is the metric families the library's Collector exports,
// with their labels: the dashboard and alert checks read it, and
// TestExportedMetricsMatchCollector proves it equals what a real Manager's
// Collector describes, so a rename in metrics.go fails until the list, the
// dashboard and the alerts follow.

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

	// Store operations (load, save, delete and load_registrations for
	// every Store; lease, commit and subscribe for a FleetStore), reasons a
	// stored record is refused, and fleet lease outcomes.
	storeOpValues       = []string{"load", "save", "delete", "load_registrations", "lease", "commit", "subscribe"}
	refusedReasonValues = []string{"format", "size", "checksum", "mac", "owner", "superseded", "content", "expired"}
	leaseResultValues   = []string{"acquired", "held", "error"}
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
	{name: "jwks_cache_expiry_seconds", typ: gauge, perProvider: true},
	{name: "jwks_cache_since_last_success_seconds", typ: gauge, perProvider: true},
	{name: "jwks_cache_state", typ: gauge, perProvider: true, labels: map[string][]string{"state": stateValues}},
	{name: "jwks_cache_stale", typ: gauge, perProvider: true},
	{name: "jwks_cache_kids_added_total", typ: counter, perProvider: true},
	{name: "jwks_cache_kids_removed_total", typ: counter, perProvider: true},
	{name: "jwks_cache_events_dropped_total", typ: counter, perProvider: true},

	// Global.
	{name: "jwks_cache_scheduler_queue_depth", typ: gauge},
	{name: "jwks_cache_scheduler_busy_workers", typ: gauge},
	{name: "jwks_cache_providers", typ: gauge, labels: map[string][]string{"state": stateValues}},
	{name: "jwks_cache_panics_recovered_total", typ: counter},

	// Store and fleet: exported only by a Manager with Options.Store; the
	// fleet families only when that Store is a FleetStore.
	{name: "jwks_cache_store_up", typ: gauge},
	{name: "jwks_cache_store_errors_total", typ: counter, labels: map[string][]string{"op": storeOpValues}},
	{name: "jwks_cache_store_refused_total", typ: counter, labels: map[string][]string{"reason": refusedReasonValues}},
	{name: "jwks_cache_store_pending_writes", typ: gauge},
	{name: "jwks_cache_store_restored_total", typ: counter},
	{name: "jwks_cache_fleet_leases_total", typ: counter, labels: map[string][]string{"result": leaseResultValues}},
	{name: "jwks_cache_fleet_commits_total", typ: counter},
	{name: "jwks_cache_fleet_adopted_total", typ: counter},
}

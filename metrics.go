package jwkscache

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics. The engine keeps its counters where it needs them anyway (the
// hit counter, atomics on the slow path, state under p.mu); the Collector
// registered on Options.Registerer reads them at scrape time, so a lookup
// never touches a metric. Counters the engine would not otherwise keep
// (refreshes by reason, errors by class, durations, rotations, waits) live
// in provMetrics, allocated on a provider's first refresh outcome, and its
// rarer parts in provRare, allocated on first use: a provider that has
// only ever refreshed on schedule pays for provMetrics alone (128 bytes).

// Metric names.
const (
	metricLookups         = "jwks_cache_lookups_total"
	metricStaleLookups    = "jwks_cache_stale_lookups_total"
	metricStale           = "jwks_cache_stale"
	metricUnknownKID      = "jwks_cache_unknown_kid_total"
	metricRefreshes       = "jwks_cache_refreshes_total"
	metricFetchErrors     = "jwks_cache_fetch_errors_total"
	metricRefreshDuration = "jwks_cache_refresh_duration_seconds"
	metricLookupWait      = "jwks_cache_lookup_wait_seconds"
	metricKeys            = "jwks_cache_keys"
	metricExpiry          = "jwks_cache_expiry_seconds"
	metricSinceSuccess    = "jwks_cache_since_last_success_seconds"
	metricState           = "jwks_cache_state"
	metricKIDsAdded       = "jwks_cache_kids_added_total"
	metricKIDsRemoved     = "jwks_cache_kids_removed_total"
	metricEventsDropped   = "jwks_cache_events_dropped_total"
	metricQueueDepth      = "jwks_cache_scheduler_queue_depth"
	metricBusyWorkers     = "jwks_cache_scheduler_busy_workers"
	metricProviders       = "jwks_cache_providers"
	metricPanics          = "jwks_cache_panics_recovered_total"
	metricStoreUp         = "jwks_cache_store_up"
	metricStoreErrors     = "jwks_cache_store_errors_total"
	metricStoreRefused    = "jwks_cache_store_refused_total"
	metricStorePending    = "jwks_cache_store_pending_writes"
	metricStoreRestored   = "jwks_cache_store_restored_total"
	metricFleetLeases     = "jwks_cache_fleet_leases_total"
	metricFleetCommits    = "jwks_cache_fleet_commits_total"
	metricFleetAdopted    = "jwks_cache_fleet_adopted_total"
)

// DefaultMetricsProviderLimit is the default of Options.MetricsProviderLimit.
const DefaultMetricsProviderLimit = 10_000

var provLabels = []string{"tenant", "provider"}

func withProv(extra ...string) []string {
	return append(append([]string(nil), provLabels...), extra...)
}

// Descriptors, one per metric.
var (
	descLookups = prometheus.NewDesc(metricLookups,
		"Key lookups (Key, Keyfunc, Resolve): hit when answered from keys in memory, miss otherwise (waited for a fetch, no keys, unknown or denied kid).",
		withProv("result"), nil)
	descStaleLookups = prometheus.NewDesc(metricStaleLookups,
		"Lookups answered from keys past their expiry (stale-while-error).",
		provLabels, nil)
	descStale = prometheus.NewDesc(metricStale,
		"1 while the keys served are past their expiry (stale-while-error), else 0; per tenant: the number of such providers.",
		provLabels, nil)
	descUnknownKID = prometheus.NewDesc(metricUnknownKID,
		"Lookups of a kid missing from the key set, by what happened: refreshed (a refresh was allowed), rate_limited, negative_hit (missing from a recent fetch).",
		withProv("outcome"), nil)
	descRefreshes = prometheus.NewDesc(metricRefreshes,
		"Refreshes (fetches of the key set) by result and by why they started.",
		withProv("result", "reason"), nil)
	descFetchErrors = prometheus.NewDesc(metricFetchErrors,
		"Failed refreshes by error class.",
		withProv("class"), nil)
	descRefreshDuration = prometheus.NewDesc(metricRefreshDuration,
		"Duration of refreshes that completed (discovery, attempts and backoff included).",
		provLabels, nil)
	descLookupWait = prometheus.NewDesc(metricLookupWait,
		"How long lookups waited for a fetch (cold loads and unknown-kid refreshes); lookups answered from memory are not timed.",
		provLabels, nil)
	descKeys = prometheus.NewDesc(metricKeys,
		"Usable keys in the key set served (0 when none).",
		provLabels, nil)
	descExpiry = prometheus.NewDesc(metricExpiry,
		"Seconds until the keys served expire; negative while stale; absent when no keys are served. Per tenant: the soonest.",
		provLabels, nil)
	descSinceSuccess = prometheus.NewDesc(metricSinceSuccess,
		"Seconds since the last successful fetch (200 or 304); absent before the first. Per tenant: the longest.",
		provLabels, nil)
	descState = prometheus.NewDesc(metricState,
		"1 for the provider's current state, 0 for the others; per tenant: the number of providers in each state.",
		withProv("state"), nil)
	descKIDsAdded = prometheus.NewDesc(metricKIDsAdded,
		"Kids that appeared when a new key set replaced another (key rotations).",
		provLabels, nil)
	descKIDsRemoved = prometheus.NewDesc(metricKIDsRemoved,
		"Kids that disappeared when a new key set replaced another (key rotations).",
		provLabels, nil)
	descEventsDropped = prometheus.NewDesc(metricEventsDropped,
		"Events and log records dropped because the delivery queue was full (a slow OnEvent or log handler).",
		provLabels, nil)
	descQueueDepth = prometheus.NewDesc(metricQueueDepth,
		"Providers due for a background refresh that wait for a worker, slow ones in line for a slow slot included.",
		nil, nil)
	descBusyWorkers = prometheus.NewDesc(metricBusyWorkers,
		"Refresh workers busy with a provider.",
		nil, nil)
	descProviders = prometheus.NewDesc(metricProviders,
		"Registered providers by state.",
		[]string{"state"}, nil)
	descPanics = prometheus.NewDesc(metricPanics,
		"Panics recovered in refreshes, refresh workers and OnEvent or log handlers.",
		nil, nil)

	// Store and fleet (Options.Store); exported only with a Store.
	descStoreUp = prometheus.NewDesc(metricStoreUp,
		"1 while the Store answers, 0 after a failed call until one succeeds (the Manager serves from memory meanwhile).",
		nil, nil)
	descStoreErrors = prometheus.NewDesc(metricStoreErrors,
		"Failed Store calls by operation.",
		[]string{"op"}, nil)
	descStoreRefused = prometheus.NewDesc(metricStoreRefused,
		"Stored records refused on reading, by reason (checksum, mac, owner, superseded, size, format, content, expired); never served.",
		[]string{"reason"}, nil)
	descStorePending = prometheus.NewDesc(metricStorePending,
		"Providers with writes waiting for the Store (registrations, deletions, snapshots), coalesced per provider.",
		nil, nil)
	descStoreRestored = prometheus.NewDesc(metricStoreRestored,
		"Snapshots restored from the Store at a first load (a restart that needed no upstream call).",
		nil, nil)
	descFleetLeases = prometheus.NewDesc(metricFleetLeases,
		"Fleet refresh leases asked for, by result: acquired (this instance fetches), held (another does), error (fetched without one).",
		[]string{"result"}, nil)
	descFleetCommits = prometheus.NewDesc(metricFleetCommits,
		"Snapshots this instance saved and published to the fleet under a lease.",
		nil, nil)
	descFleetAdopted = prometheus.NewDesc(metricFleetAdopted,
		"Snapshots adopted from another instance of the fleet instead of fetching.",
		nil, nil)

	allDescs = []*prometheus.Desc{
		descLookups, descStaleLookups, descStale, descUnknownKID, descRefreshes, descFetchErrors,
		descRefreshDuration, descLookupWait, descKeys, descExpiry, descSinceSuccess, descState,
		descKIDsAdded, descKIDsRemoved, descEventsDropped, descQueueDepth, descBusyWorkers,
		descProviders, descPanics,
		descStoreUp, descStoreErrors, descStoreRefused, descStorePending, descStoreRestored,
		descFleetLeases, descFleetCommits, descFleetAdopted,
	}
)

// Histogram buckets, upper bounds in seconds. Refreshes are bounded by the
// retry Deadline (8 s by default).
var (
	refreshBuckets = [...]float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
	waitBuckets    = [...]float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
)

// errorClasses lists every ErrorClass, indexing provRare.errors.
var errorClasses = [...]ErrorClass{
	ClassTimeout, ClassTLS, ClassPin, ClassBlockedAddress, ClassRedirect, ClassTooLarge,
	ClassParse, ClassNoKeys, ClassStatus, ClassNetwork, ClassPanic, ClassClosed,
}

func classIndex(c ErrorClass) int {
	for i, x := range errorClasses {
		if x == c {
			return i
		}
	}
	return len(errorClasses) - 1
}

const (
	numReasons = len(reasonNames)
	numResults = len(resultNames)
	// commonReasons are the reasons every provider sees (first load,
	// schedule), counted in provMetrics; the others in provRare.
	commonReasons = 2
)

// provMetrics is a provider's refresh counters, allocated on its first
// refresh outcome. p.mu guards it. 128 bytes.
type provMetrics struct {
	refreshes [commonReasons][numResults]uint64
	dur       [len(refreshBuckets) + 1]uint64 // per bucket, not cumulative; the last is +Inf
	durSum    float64
	rare      *provRare
}

// provRare is the part of a provider's counters most providers never use:
// allocated on first use, under p.mu.
type provRare struct {
	refreshes               [numReasons - commonReasons][numResults]uint64
	errors                  [len(errorClasses)]uint64
	kidsAdded, kidsRemoved  uint64
	lastSuccess             time.Time // of the last snapshot withdrawn
	staleLookups, staleBase uint64    // see markStaleLocked
	staleOn                 bool
	wait                    [len(waitBuckets) + 1]uint64
	waitSum                 float64
}

// metricsLocked returns p's counters, allocating them. p.mu must be held.
func (p *provider) metricsLocked() *provMetrics {
	if p.met == nil {
		p.met = new(provMetrics)
	}
	return p.met
}

// rareLocked returns p's rare counters, allocating them. p.mu must be held.
func (p *provider) rareLocked() *provRare {
	pm := p.metricsLocked()
	if pm.rare == nil {
		pm.rare = new(provRare)
	}
	return pm.rare
}

// recordOutcomeLocked counts an applied refresh outcome. p.mu must be held.
func (p *provider) recordOutcomeLocked(o *outcome) {
	pm := p.metricsLocked()
	if int(o.reason) < commonReasons {
		pm.refreshes[o.reason][o.result]++
	} else {
		p.rareLocked().refreshes[int(o.reason)-commonReasons][o.result]++
	}
	if o.result == resultError {
		p.rareLocked().errors[classIndex(errorClass(o.err))]++
	}
	if o.took > 0 || o.result != resultError {
		sec := o.took.Seconds()
		pm.dur[bucketOf(refreshBuckets[:], sec)]++
		pm.durSum += sec
	}
}

// recordRotationLocked counts the kids added and removed when a fetched
// key set replaced another (see diffKIDs). p.mu must be held.
func (p *provider) recordRotationLocked(added, removed int) {
	if added == 0 && removed == 0 {
		return
	}
	r := p.rareLocked()
	r.kidsAdded += uint64(added)
	r.kidsRemoved += uint64(removed)
}

// recordWait counts a lookup that waited d for a fetch.
func (p *provider) recordWait(d time.Duration) {
	sec := d.Seconds()
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.rareLocked()
	r.wait[bucketOf(waitBuckets[:], sec)]++
	r.waitSum += sec
}

// withdrawLocked stores no snapshot in place of s, remembering when s last
// succeeded. p.mu must be held.
func (p *provider) withdrawLocked(s *snapshot) {
	p.snap.Store(nil)
	p.endStaleLocked()
	if s != nil {
		p.rareLocked().lastSuccess = s.fetchedAt
	}
}

// bucketOf returns the index of the first bound v fits under, or
// len(bounds) for +Inf.
func bucketOf(bounds []float64, v float64) int {
	for i, b := range bounds {
		if v <= b {
			return i
		}
	}
	return len(bounds)
}

// markStaleLocked starts counting the lookups answered from p's keys now
// that they are past their expiry: the scheduler calls it when it visits
// p at the end of their freshness. Lookups answered while stale are the
// hits counted between that visit and the keys' replacement or
// withdrawal, so the lookup path itself does no extra work. p.mu must be
// held.
func (p *provider) markStaleLocked() {
	r := p.rareLocked()
	if !r.staleOn {
		r.staleOn = true
		r.staleBase = p.m.hits.load(p.slot)
	}
}

// endStaleLocked ends the count begun by markStaleLocked, when the stale
// keys are replaced or withdrawn. p.mu must be held.
func (p *provider) endStaleLocked() {
	if p.met == nil || p.met.rare == nil || !p.met.rare.staleOn {
		return
	}
	r := p.met.rare
	r.staleLookups += p.m.hits.load(p.slot) - r.staleBase
	r.staleOn = false
}

// staleMarkedLocked reports whether stale lookups are being counted.
// p.mu must be held.
func (p *provider) staleMarkedLocked() bool {
	return p.met != nil && p.met.rare != nil && p.met.rare.staleOn
}

// staleLookupsLocked returns the lookups answered from stale keys so far,
// given the provider's hit count. p.mu must be held.
func (p *provider) staleLookupsLocked(hits uint64) uint64 {
	if p.met == nil || p.met.rare == nil {
		return 0
	}
	r := p.met.rare
	n := r.staleLookups
	if r.staleOn && hits >= r.staleBase {
		n += hits - r.staleBase
	}
	return n
}

// collector is the prometheus.Collector of a Manager (Options.Registerer).
type collector struct{ m *Manager }

// Describe sends every descriptor.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// provSample is one provider's values, copied under p.mu, or the sum of
// several (a collapsed tenant).
type provSample struct {
	tenant, provider                  string
	hits, misses, staleLookups, stale uint64
	hasKID                            bool
	kid                               [3]uint64 // refreshed, rate_limited, negative_hit
	refreshes                         [numReasons][numResults]uint64
	errors                            [len(errorClasses)]uint64
	dur                               [len(refreshBuckets) + 1]uint64
	durSum                            float64
	wait                              [len(waitBuckets) + 1]uint64
	waitSum                           float64
	keys                              uint64
	hasExpiry, hasSuccess             bool
	expiry, since                     float64 // seconds
	states                            [len(stateNames)]uint64
	kidsAdded, kidsRemoved            uint64
	eventsDropped                     uint64
}

var kidOutcomes = [3]string{"refreshed", "rate_limited", "negative_hit"}

// sample copies p's values into s. It takes p.mu and nothing else; it
// sends nothing.
func (p *provider) sample(s *provSample, now time.Time) {
	*s = provSample{tenant: p.key.tenant, provider: p.key.provider}
	var lastSuccess time.Time
	p.mu.Lock()
	s.hits = p.m.hits.load(p.slot)
	state := p.state
	sn := p.snap.Load()
	if ks := p.kid; ks != nil {
		s.hasKID = true
		s.kid = [3]uint64{ks.refreshed, ks.rateLimited, ks.negativeHits}
	}
	if pm := p.met; pm != nil {
		copy(s.refreshes[:commonReasons], pm.refreshes[:])
		s.dur, s.durSum = pm.dur, pm.durSum
		if r := pm.rare; r != nil {
			copy(s.refreshes[commonReasons:], r.refreshes[:])
			s.errors = r.errors
			s.kidsAdded, s.kidsRemoved = r.kidsAdded, r.kidsRemoved
			s.wait, s.waitSum = r.wait, r.waitSum
			lastSuccess = r.lastSuccess
		}
		s.staleLookups = p.staleLookupsLocked(s.hits)
	}
	p.mu.Unlock()
	s.misses = p.misses.Load()
	s.eventsDropped = p.eventsDropped.Load()
	if int(state) < len(s.states) {
		s.states[state] = 1
	}
	if sn != nil {
		s.keys = uint64(len(sn.keys.keys))
		s.hasExpiry, s.expiry = true, sn.expiresAt.Sub(now).Seconds()
		if !now.Before(sn.expiresAt) {
			s.stale = 1
		}
		lastSuccess = sn.fetchedAt
	}
	if !lastSuccess.IsZero() {
		s.hasSuccess, s.since = true, now.Sub(lastSuccess).Seconds()
	}
}

// add sums o into s (a collapsed tenant): counters, histograms, keys and
// states add up; the expiry is the soonest, the time since success the
// longest.
func (s *provSample) add(o *provSample) {
	s.hits += o.hits
	s.misses += o.misses
	s.staleLookups += o.staleLookups
	s.stale += o.stale
	if o.hasKID {
		s.hasKID = true
		for i := range s.kid {
			s.kid[i] += o.kid[i]
		}
	}
	for r := range s.refreshes {
		for x := range s.refreshes[r] {
			s.refreshes[r][x] += o.refreshes[r][x]
		}
	}
	for i := range s.errors {
		s.errors[i] += o.errors[i]
	}
	for i := range s.dur {
		s.dur[i] += o.dur[i]
	}
	s.durSum += o.durSum
	for i := range s.wait {
		s.wait[i] += o.wait[i]
	}
	s.waitSum += o.waitSum
	s.keys += o.keys
	if o.hasExpiry && (!s.hasExpiry || o.expiry < s.expiry) {
		s.hasExpiry, s.expiry = true, o.expiry
	}
	if o.hasSuccess && (!s.hasSuccess || o.since > s.since) {
		s.hasSuccess, s.since = true, o.since
	}
	for i := range s.states {
		s.states[i] += o.states[i]
	}
	s.kidsAdded += o.kidsAdded
	s.kidsRemoved += o.kidsRemoved
	s.eventsDropped += o.eventsDropped
}

// Collect sends the Manager's metrics. Each provider's values are copied
// under its lock, which is released before anything is sent.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	now := time.Now()
	ps := m.providers.all()
	var byState [len(stateNames)]uint64
	var s provSample
	if limit := m.opts.MetricsProviderLimit; len(ps) <= limit {
		for _, p := range ps {
			p.sample(&s, now)
			for i, n := range s.states {
				byState[i] += n
			}
			emitProvider(ch, &s)
		}
	} else {
		// Collapse: one series per tenant, or one for all when the
		// tenants alone pass the limit.
		tenants := make(map[string]*provSample)
		for _, p := range ps {
			if _, ok := tenants[p.key.tenant]; !ok {
				tenants[p.key.tenant] = nil
			}
		}
		perTenant := len(tenants) <= limit
		if !perTenant {
			clear(tenants)
		}
		for _, p := range ps {
			p.sample(&s, now)
			t := ""
			if perTenant {
				t = s.tenant
			}
			agg := tenants[t]
			if agg == nil {
				agg = &provSample{tenant: t}
				tenants[t] = agg
			}
			agg.add(&s)
		}
		for _, agg := range tenants {
			for i, n := range agg.states {
				byState[i] += n
			}
			emitProvider(ch, agg)
		}
	}
	ch <- prometheus.MustNewConstMetric(descQueueDepth, prometheus.GaugeValue, float64(m.sched.waiting()))
	ch <- prometheus.MustNewConstMetric(descBusyWorkers, prometheus.GaugeValue, float64(m.sched.busy.Load()))
	for i, n := range byState {
		ch <- prometheus.MustNewConstMetric(descProviders, prometheus.GaugeValue, float64(n), stateNames[i])
	}
	ch <- prometheus.MustNewConstMetric(descPanics, prometheus.CounterValue, float64(m.panics.Load()))
	if ps := m.persist; ps != nil {
		ps.collect(ch)
	}
}

// collect sends the store and fleet metrics.
func (ps *persister) collect(ch chan<- prometheus.Metric) {
	up := 1.0
	if ps.downUntil.Load() != 0 {
		up = 0
	}
	ch <- prometheus.MustNewConstMetric(descStoreUp, prometheus.GaugeValue, up)
	for i, name := range storeOpNames[:numStoreOps] {
		if i >= int(opLease) && ps.fleet == nil {
			break // lease, commit, subscribe: fleet stores only
		}
		ch <- prometheus.MustNewConstMetric(descStoreErrors, prometheus.CounterValue, float64(ps.opErrors[i].Load()), name)
	}
	for i, reason := range refusedReasons {
		ch <- prometheus.MustNewConstMetric(descStoreRefused, prometheus.CounterValue, float64(ps.refused[i].Load()), reason)
	}
	ch <- prometheus.MustNewConstMetric(descStorePending, prometheus.GaugeValue, float64(ps.pending.Load()))
	ch <- prometheus.MustNewConstMetric(descStoreRestored, prometheus.CounterValue, float64(ps.restored.Load()))
	if ps.fleet == nil {
		return
	}
	for i, name := range leaseNames {
		ch <- prometheus.MustNewConstMetric(descFleetLeases, prometheus.CounterValue, float64(ps.leases[i].Load()), name)
	}
	ch <- prometheus.MustNewConstMetric(descFleetCommits, prometheus.CounterValue, float64(ps.committed.Load()))
	ch <- prometheus.MustNewConstMetric(descFleetAdopted, prometheus.CounterValue, float64(ps.adopted.Load()))
}

// emitProvider sends the series of one provider or collapsed tenant. Series
// whose value would be a zero that says nothing (a refresh reason never
// seen, an error class never met, a histogram without observations) are
// left out.
func emitProvider(ch chan<- prometheus.Metric, s *provSample) {
	lv := func(extra ...string) []string { return append([]string{s.tenant, s.provider}, extra...) }
	counter := func(d *prometheus.Desc, v uint64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), lv(extra...)...)
	}
	gauge := func(d *prometheus.Desc, v float64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv(extra...)...)
	}
	counter(descLookups, s.hits, "hit")
	counter(descLookups, s.misses, "miss")
	counter(descStaleLookups, s.staleLookups)
	gauge(descStale, float64(s.stale))
	if s.hasKID {
		for i, o := range kidOutcomes {
			counter(descUnknownKID, s.kid[i], o)
		}
	}
	for r := range s.refreshes {
		for x, n := range s.refreshes[r] {
			if n > 0 {
				counter(descRefreshes, n, resultNames[x], reasonNames[r])
			}
		}
	}
	for i, n := range s.errors {
		if n > 0 {
			counter(descFetchErrors, n, string(errorClasses[i]))
		}
	}
	histogram(ch, descRefreshDuration, refreshBuckets[:], s.dur[:], s.durSum, lv())
	histogram(ch, descLookupWait, waitBuckets[:], s.wait[:], s.waitSum, lv())
	gauge(descKeys, float64(s.keys))
	if s.hasExpiry {
		gauge(descExpiry, s.expiry)
	}
	if s.hasSuccess {
		gauge(descSinceSuccess, s.since)
	}
	for i, n := range s.states {
		gauge(descState, float64(n), stateNames[i])
	}
	counter(descKIDsAdded, s.kidsAdded)
	counter(descKIDsRemoved, s.kidsRemoved)
	counter(descEventsDropped, s.eventsDropped)
}

// histogram sends a histogram from per-bucket counts (the last for +Inf),
// unless it has no observation.
func histogram(ch chan<- prometheus.Metric, d *prometheus.Desc, bounds []float64, counts []uint64, sum float64, lv []string) {
	var total uint64
	for _, n := range counts {
		total += n
	}
	if total == 0 {
		return
	}
	cum := make(map[float64]uint64, len(bounds))
	var below uint64
	for i, b := range bounds {
		below += counts[i]
		cum[b] = below
	}
	ch <- prometheus.MustNewConstHistogram(d, total, sum, cum, lv...)
}

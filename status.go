package jwkscache

import (
	"cmp"
	"slices"
	"time"
)

// ProviderStatus is a point-in-time view of one provider. It is a value:
// later changes do not show in it.
type ProviderStatus struct {
	TenantID   string `json:"tenantId"`
	ProviderID string `json:"providerId"`
	// JWKSURL is the URL keys come from: the registered one, or for an
	// Issuer-only registration the discovered one (the discovery
	// document's own URL until discovery has succeeded).
	JWKSURL string `json:"jwksUrl"`
	Issuer  string `json:"issuer,omitempty"`
	State   State  `json:"state"`
	// Stale is true while keys are served past their expiry because
	// refreshes fail (stale-while-error).
	Stale bool `json:"stale"`
	// ErrorCount counts consecutive failed fetches; 0 after a success.
	ErrorCount int `json:"errorCount"`
	// LastError is the last fetch error, "" when the last fetch succeeded.
	LastError string `json:"lastError"`
	// LastErrorClass is the ErrorClass of LastError, "" when none.
	LastErrorClass string       `json:"lastErrorClass"`
	LastRefresh    time.Time    `json:"lastRefresh,omitzero"` // last successful exchange (200 or 304); zero (omitted in JSON) if none
	NextRefresh    time.Time    `json:"nextRefresh,omitzero"` // when the next background fetch is scheduled
	ExpiresAt      time.Time    `json:"expiresAt,omitzero"`   // end of freshness of the keys served; zero (omitted) if none
	StaleUntil     time.Time    `json:"staleUntil,omitzero"`  // end of the stale-while-error window; zero (omitted) if none
	TTLSource      string       `json:"ttlSource,omitempty"`
	ETag           string       `json:"etag,omitempty"`
	LastModified   string       `json:"lastModified,omitempty"`
	Keys           []KeyInfo    `json:"keys"`
	SkippedKeys    []SkippedKey `json:"skippedKeys"`
	// SkippedKeysOmitted counts the skipped keys of the document beyond
	// the first 100 recorded in SkippedKeys.
	SkippedKeysOmitted int      `json:"skippedKeysOmitted,omitempty"`
	DeniedKIDs         []string `json:"deniedKids,omitempty"`
	// Hits and Misses count lookups answered from memory and not.
	Hits   uint64 `json:"hits"`
	Misses uint64 `json:"misses"`
	// HitRate is Hits / (Hits + Misses); 0 before the first lookup.
	HitRate float64 `json:"hitRate"`
	// StaleServeRatio is the share of lookups answered from keys past
	// their expiry (stale-while-error); 0 before the first lookup.
	StaleServeRatio float64 `json:"staleServeRatio"`
	// LastSuccess is the last successful fetch (200 or 304), kept after
	// the keys are withdrawn; zero (omitted in JSON) if none.
	LastSuccess time.Time `json:"lastSuccess,omitzero"`
	// Source is where the keys served came from: "network" (the IdP),
	// "store" or "fleet"; "" when none are served.
	Source string `json:"source,omitempty"`
	// EventsDropped counts this provider's events and log records that
	// were dropped because the delivery queue was full (a slow OnEvent or
	// log handler); see Options.OnEvent.
	EventsDropped uint64 `json:"eventsDropped"`
	// RegistrationVersion identifies the registration's content (a hash
	// of its JSON form, defaults applied): RegisterIfVersion takes it, and
	// the control plane sends it as the ETag of a provider for If-Match.
	RegistrationVersion string `json:"registrationVersion"`
	// StoreError is the latest failed Store call about this provider
	// (Options.Store), "" once a later one succeeded. The provider is
	// served from memory meanwhile.
	StoreError string `json:"storeError,omitempty"`
	// StoreRefused counts the stored records of this provider refused on
	// reading (checksum, MAC, owner, size, age); they are never served.
	StoreRefused uint64 `json:"storeRefused,omitempty"`
}

// Status returns the status of one provider.
func (m *Manager) Status(tenant, providerID string) (ProviderStatus, error) {
	p, err := m.provider(tenant, providerID)
	if err != nil {
		return ProviderStatus{}, err
	}
	return p.status(), nil
}

// Statuses returns the status of every provider, sorted by tenant, then
// provider. It is empty after Close.
func (m *Manager) Statuses() []ProviderStatus {
	return statusesOf(m.providers.all())
}

// TenantStatuses returns the status of every provider of tenant, sorted by
// provider; empty when the tenant has none. Its cost is the tenant's size,
// whatever the number of other tenants.
func (m *Manager) TenantStatuses(tenant string) []ProviderStatus {
	return statusesOf(m.providers.tenant(tenant))
}

func statusesOf(ps []*provider) []ProviderStatus {
	out := make([]ProviderStatus, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.status())
	}
	slices.SortFunc(out, func(a, b ProviderStatus) int {
		return cmp.Or(cmp.Compare(a.TenantID, b.TenantID), cmp.Compare(a.ProviderID, b.ProviderID))
	})
	return out
}

func (p *provider) status() ProviderStatus {
	now := time.Now()
	p.mu.Lock()
	reg := p.registration()
	st := ProviderStatus{
		TenantID:    p.key.tenant,
		ProviderID:  p.key.provider,
		JWKSURL:     p.jwksURL,
		Issuer:      reg.Issuer,
		State:       p.state,
		ErrorCount:  int(p.errorCount),
		NextRefresh: p.nextRefresh,
	}
	if p.lastErr != nil {
		st.LastError = p.lastErr.Error()
		st.LastErrorClass = string(errorClass(p.lastErr))
	}
	s := p.snap.Load()
	hits := p.m.hits.load(p.slot)
	stale := p.staleLookupsLocked(hits)
	if p.met != nil && p.met.rare != nil {
		st.LastSuccess = p.met.rare.lastSuccess
	}
	p.mu.Unlock()
	st.RegistrationVersion = registrationVersion(reg)
	if ps := p.m.persist; ps != nil {
		st.StoreError, st.StoreRefused = ps.status(p.key)
	}
	if st.JWKSURL == "" && reg.usesDiscovery() {
		st.JWKSURL = reg.discoveryURL()
	}
	st.Keys = []KeyInfo{}
	st.SkippedKeys = []SkippedKey{}
	if s != nil {
		st.Stale = !now.Before(s.expiresAt)
		st.LastRefresh = s.fetchedAt
		st.LastSuccess = s.fetchedAt
		st.Source = s.source.String()
		st.ExpiresAt = s.expiresAt
		st.StaleUntil = s.staleUntil
		st.TTLSource = s.ttlSource
		st.ETag = s.validators.ETag
		st.LastModified = s.validators.LastModified
		for _, k := range s.keys.keys {
			info := k.info
			info.Algs = k.algs.names()
			st.Keys = append(st.Keys, info)
		}
		st.SkippedKeys = append(st.SkippedKeys, s.keys.skipped...)
		st.SkippedKeysOmitted = s.keys.skippedMore
	}
	st.DeniedKIDs = p.deniedKIDs()
	st.Hits = hits
	st.Misses = p.misses.Load()
	if n := st.Hits + st.Misses; n > 0 {
		st.HitRate = float64(st.Hits) / float64(n)
		st.StaleServeRatio = float64(stale) / float64(n)
	}
	st.EventsDropped = p.eventsDropped.Load()
	return st
}

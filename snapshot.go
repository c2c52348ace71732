package jwkscache

import "time"

// snapshot is what a provider serves: a parsed key set with the raw
// document and the times that govern it. It is immutable: a refresh
// publishes a new snapshot, and readers that loaded the old one keep a
// consistent view. A 304 or an identical body produces a new snapshot that
// shares keys and raw with the old one, so the key set keeps its identity.
//
// All times are absolute, so a snapshot saved and restored later keeps its
// remaining lifetime rather than gaining a fresh TTL.
type snapshot struct {
	keys       *keySet   // doc.keys, on the lookup path without an indirection
	doc        *document // the JWKS as served, shared with providers serving the same bytes
	url        string    // the JWKS URL it was fetched from
	issuer     string    // the Issuer tokens verified with these keys must carry ("" = any)
	validators validators
	fetchedAt  time.Time // last successful exchange (200 or 304)
	expiresAt  time.Time // end of freshness
	staleUntil time.Time // end of the stale-while-error window
	ttlSource  string    // how the TTL was derived: max-age, no-cache, expires, default, ...
	source     snapshotSource
}

// snapshotSource says where a snapshot's latest exchange came from. The
// values are stable: they show in ProviderStatus.Source and label metrics.
type snapshotSource uint8

const (
	sourceNetwork snapshotSource = iota // fetched from the identity provider
	sourceStore                         // restored from the Store
	sourceFleet                         // adopted from another instance of the fleet
)

var sourceNames = [...]string{"network", "store", "fleet"}

func (s snapshotSource) String() string {
	if int(s) < len(sourceNames) {
		return sourceNames[s]
	}
	return "unknown"
}

// renewed returns a copy of s with the freshness of a new exchange that
// confirmed its content.
func (s *snapshot) renewed(val validators, fresh freshness, at time.Time, stale time.Duration, src snapshotSource) *snapshot {
	n := *s
	n.validators = val
	n.source = src
	n.setTimes(fresh, at, stale)
	return &n
}

func (s *snapshot) setTimes(fresh freshness, at time.Time, stale time.Duration) {
	s.fetchedAt = at
	s.expiresAt = at.Add(fresh.TTL)
	s.staleUntil = s.expiresAt.Add(stale)
	s.ttlSource = fresh.Source
}

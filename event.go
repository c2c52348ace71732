package jwkscache

import "time"

// EventKind says what an Event reports.
type EventKind string

// Event kinds.
const (
	EventKeysChanged   EventKind = "keys_changed"   // a fetch brought a different key set
	EventStateChanged  EventKind = "state_changed"  // the provider's State changed
	EventRefreshFailed EventKind = "refresh_failed" // a fetch failed; Err says why
)

// Event is passed to Options.OnEvent. It never carries key material.
type Event struct {
	Kind       EventKind
	TenantID   string
	ProviderID string
	Time       time.Time
	From, To   State    // for EventStateChanged
	KIDs       []string // for EventKeysChanged: the kids now served
	Err        error    // for EventRefreshFailed
}

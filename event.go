package jwkscache

import "time"

// EventKind says what an Event reports. The values are stable.
type EventKind string

// Event kinds.
const (
	// EventKeysChanged: a fetch brought a different key set. KIDs lists the
	// kids now served, Added and Removed the rotation against the set
	// served before (both empty for a first load's Removed).
	EventKeysChanged EventKind = "keys_changed"
	// EventStateChanged: the provider's State changed, From -> To.
	EventStateChanged EventKind = "state_changed"
	// EventRefreshFailed: a fetch failed; Err says why and Class is its
	// class. The keys served, if any, stay.
	EventRefreshFailed EventKind = "refresh_failed"
	// EventRecovered: a fetch succeeded after Failures consecutive
	// failures.
	EventRecovered EventKind = "recovered"
	// EventStaleBegan: the keys passed their expiry while refreshes fail;
	// they are served stale until the stale window ends.
	EventStaleBegan EventKind = "stale_began"
	// EventStaleEnded: stale serving ended, because a refresh succeeded or
	// because the keys were withdrawn (Withdrawn): the stale window ran
	// out, or the provider was unregistered.
	EventStaleEnded EventKind = "stale_ended"
	// EventKeyDenied and EventKeyAllowed: DenyKey or AllowKey changed the
	// denial of KID.
	EventKeyDenied  EventKind = "key_denied"
	EventKeyAllowed EventKind = "key_allowed"
)

// Event is passed to Options.OnEvent. It never carries key material,
// tokens or URL query strings. Kids come from the identity provider's
// document and are not capped here: treat them as untrusted text.
type Event struct {
	Kind       EventKind
	TenantID   string
	ProviderID string
	Time       time.Time
	From, To   State      // for EventStateChanged
	KIDs       []string   // for EventKeysChanged: the kids now served
	Added      []string   // for EventKeysChanged: kids served now and not before
	Removed    []string   // for EventKeysChanged: kids served before and not now
	KID        string     // for EventKeyDenied and EventKeyAllowed
	Err        error      // for EventRefreshFailed
	Class      ErrorClass // for EventRefreshFailed: the class of Err
	Failures   int        // for EventRecovered: the consecutive failures that ended
	Withdrawn  bool       // for EventStaleEnded: the keys were withdrawn, not refreshed
}

// newEvent returns an event of p.
func (p *provider) newEvent(kind EventKind, at time.Time) Event {
	return Event{Kind: kind, TenantID: p.key.tenant, ProviderID: p.key.provider, Time: at}
}

// diffKIDs returns the kids of now that were not in before, and the reverse.
func diffKIDs(before, now []string) (added, removed []string) {
	in := func(list []string, k string) bool {
		for _, x := range list {
			if x == k {
				return true
			}
		}
		return false
	}
	for _, k := range now {
		if !in(before, k) && !in(added, k) {
			added = append(added, k)
		}
	}
	for _, k := range before {
		if !in(now, k) && !in(removed, k) {
			removed = append(removed, k)
		}
	}
	return added, removed
}

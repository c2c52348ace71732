package jwkscache

import "time"

// SetTTLFloorForTest lowers the hard floor of MinTTL (30s) to d until the
// returned function restores it, so that tests against real stores (which
// run on real time) can run many refresh cycles in seconds. It exists only
// in the package's test binary.
func SetTTLFloorForTest(d time.Duration) (restore func()) {
	old := ttlFloor.Swap(int64(d))
	return func() { ttlFloor.Store(old) }
}

// RefreshScheduledForTest runs (or joins) the provider's refresh as the
// scheduler would, in the calling goroutine: in a fleet, with the lease.
// For benchmarks of a refresh's store round trips.
func (m *Manager) RefreshScheduledForTest(tenant, providerID string) error {
	p, err := m.provider(tenant, providerID)
	if err != nil {
		return err
	}
	return p.refreshNow(anyFetch, reasonScheduled)
}

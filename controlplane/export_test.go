package controlplane

import (
	"slices"
	"time"
)

// SetWaits sets how long GET .../jwks waits for a first load and for a
// revalidation, so that tests of the timeouts need not wait 2 s.
func SetWaits(h *Handler, cold, revalidate time.Duration) {
	h.coldWait, h.revalidateWait = cold, revalidate
}

// Routes returns "METHOD pattern" of every operation h serves.
func Routes(h *Handler) []string { return slices.Clone(h.routes) }

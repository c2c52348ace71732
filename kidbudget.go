package jwkscache

import (
	"sync"
	"time"
)

// The unknown-kid budget. A token whose kid the set lacks may trigger one
// refresh (a key rotation is caught on first sight), within three limits:
//
//   - a negative cache: a kid that a fetch begun after its miss did not
//     contain is refused for NegativeCacheTTL;
//   - a token bucket per provider: burst kidBurst, one token per
//     NegativeCacheTTL;
//   - a global cap across all tenants (Options.MaxUnknownKIDRefreshes per
//     second, burst the same), with a reserve of the same size that only
//     quiet providers may draw on: those whose own bucket is full, that is
//     that have not spent it within its refill time. Junk kids spread over
//     many tenants empty the shared part, but a quiet provider's first
//     refresh (a real rotation) still goes ahead. The reserve bounds the
//     total at twice the cap, and only quiet providers reach it, so junk
//     kids must come through more than MaxUnknownKIDRefreshes quiet
//     providers a second to delay a rotation elsewhere.

const (
	// kidBurst is the burst of the per-provider unknown-kid bucket.
	kidBurst = 2
	// maxNegativeKIDs bounds the per-provider negative cache.
	maxNegativeKIDs = 256
	// maxKIDLen bounds the kids that may trigger a refresh or enter the
	// negative cache; real kids are far shorter.
	maxKIDLen = 256
)

// Reasons allowKIDRefresh refuses a refresh (in error texts).
const (
	kidNegative    = "missing from a recent fetch"
	kidRateLimited = "refresh rate-limited"
)

// kidState is a provider's unknown-kid budget and its counters, allocated
// on the first unknown kid (most providers never see one). p.mu guards it.
type kidState struct {
	tokens   float64              // the provider's bucket
	tokensAt time.Time            // last bucket update
	negative map[string]time.Time // kid -> until; lazily allocated
	// Outcomes, for Status and metrics.
	refreshed, rateLimited, negativeHits uint64
}

// kidStateLocked returns p's kid state, allocating it. p.mu must be held.
func (p *provider) kidStateLocked() *kidState {
	if p.kid == nil {
		p.kid = &kidState{tokens: kidBurst}
	}
	return p.kid
}

// allowKIDRefresh decides whether an unknown kid may trigger a refresh. It
// returns "" when the refresh may go ahead, else why not.
func (p *provider) allowKIDRefresh(kid string) string {
	now := time.Now()
	reg := p.registration()
	p.mu.Lock()
	defer p.mu.Unlock()
	ks := p.kidStateLocked()
	if until, ok := ks.negative[kid]; ok {
		if now.Before(until) {
			ks.negativeHits++
			return kidNegative
		}
		delete(ks.negative, kid)
	}
	// Refill the bucket: one token per NegativeCacheTTL, burst kidBurst.
	if !ks.tokensAt.IsZero() {
		ks.tokens = min(kidBurst, ks.tokens+float64(now.Sub(ks.tokensAt))/float64(reg.NegativeCacheTTL))
	}
	ks.tokensAt = now
	quiet := ks.tokens >= kidBurst
	if ks.tokens < 1 || !p.m.kidBudget.take(now, quiet) {
		ks.rateLimited++
		return kidRateLimited
	}
	ks.tokens--
	ks.refreshed++
	return ""
}

// rememberMissing records that a fresh fetch did not contain kid.
func (p *provider) rememberMissing(kid string) {
	now := time.Now()
	until := now.Add(p.registration().NegativeCacheTTL)
	p.mu.Lock()
	defer p.mu.Unlock()
	ks := p.kidStateLocked()
	if ks.negative == nil {
		ks.negative = make(map[string]time.Time)
	}
	if len(ks.negative) >= maxNegativeKIDs {
		for k, t := range ks.negative {
			if !t.After(now) {
				delete(ks.negative, k) // expired
			}
		}
	}
	if len(ks.negative) >= maxNegativeKIDs {
		// Evict the entry closest to expiry.
		var victim string
		var first time.Time
		for k, t := range ks.negative {
			if victim == "" || t.Before(first) {
				victim, first = k, t
			}
		}
		delete(ks.negative, victim)
	}
	ks.negative[kid] = until
}

// kidBudget is the global cap of kid-driven refreshes: a shared token
// bucket and a reserve for quiet providers, both refilled at rate per
// second up to rate.
type kidBudget struct {
	mu      sync.Mutex // guards the fields below; a leaf lock
	rate    float64
	shared  float64
	reserve float64
	at      time.Time
}

// take spends one token: from the shared bucket, else, for a quiet
// provider, from the reserve.
func (b *kidBudget) take(now time.Time, quiet bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.at.IsZero() {
		b.shared, b.reserve = b.rate, b.rate
	} else if d := now.Sub(b.at).Seconds(); d > 0 {
		b.shared = min(b.rate, b.shared+d*b.rate)
		b.reserve = min(b.rate, b.reserve+d*b.rate)
	}
	b.at = now
	switch {
	case b.shared >= 1:
		b.shared--
	case quiet && b.reserve >= 1:
		b.reserve--
	default:
		return false
	}
	return true
}

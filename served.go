package jwkscache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ServedJWKS is a provider's usable key set as a JWK Set document, ready
// to serve over HTTP (the jwks-cache daemon's GET .../jwks): denied kids
// are left out, and beside "keys" the document carries "stale" and
// "expiresAt" (RFC 7517 lets a JWK Set carry members its readers ignore).
// It is built once per key set, denial list and staleness, and shared: treat
// it as read-only.
type ServedJWKS struct {
	// Body is the document: {"keys":[...],"stale":false,"expiresAt":"..."}.
	// Each key is its public JWK as go-jose writes it; x5u is never
	// included (the cache does not follow it, and neither should clients).
	Body []byte
	// ETag is a strong entity tag of Body (a SHA-256 content hash), quoted.
	ETag string
	// LastModified is when Body last changed: the fetch its keys came from,
	// or the last denial that changed it.
	LastModified time.Time
	// FetchedAt is the last successful exchange with the IdP (200 or 304);
	// now minus FetchedAt is the document's HTTP Age.
	FetchedAt time.Time
	// ExpiresAt is the end of the keys' freshness; until then clients may
	// cache the document (Cache-Control: max-age).
	ExpiresAt time.Time
	// Stale is true when the keys are served past ExpiresAt
	// (stale-while-error).
	Stale bool
	// Source is where the keys came from: network, store or fleet.
	Source string
	// KIDs are the kids of the keys in Body, in document order.
	KIDs []string

	snap   *snapshot
	denied *map[string]struct{}
	keys   []json.RawMessage // each key's JSON, in document order
}

// servedDoc caches a provider's ServedJWKS. It is rebuilt when the
// snapshot, the denial list or the staleness changes.
func (p *provider) served(now time.Time) (*ServedJWKS, error) {
	s := p.snap.Load()
	if s == nil {
		return nil, errNoSnapshot
	}
	denied := p.denied.Load()
	stale := !now.Before(s.expiresAt)
	if c := p.servedCache.Load(); c != nil && c.snap == s && c.denied == denied && c.Stale == stale {
		return c, nil
	}
	// Last-Modified never goes back: a denial, a lifted one or the turn
	// to stale changes the document of the same fetch, now.
	lastMod := s.fetchedAt
	if c := p.servedCache.Load(); c != nil && (c.snap == s || !c.LastModified.Before(lastMod)) {
		lastMod = now
	}
	out := &ServedJWKS{FetchedAt: s.fetchedAt, ExpiresAt: s.expiresAt, Stale: stale, Source: s.source.String(), snap: s, denied: denied, LastModified: lastMod}
	for _, k := range s.keys.keys {
		if denied != nil {
			if _, ok := (*denied)[k.jwk.KeyID]; ok {
				continue
			}
		}
		raw, err := json.Marshal(k.jwk)
		if err != nil {
			return nil, fmt.Errorf("jwkscache: encoding key %s: %w", showID(k.jwk.KeyID), err)
		}
		out.keys = append(out.keys, raw)
		out.KIDs = append(out.KIDs, k.jwk.KeyID)
	}
	out.encode()
	p.servedCache.Store(out)
	return out, nil
}

var errNoSnapshot = errors.New("no keys")

// encode builds Body and ETag from keys.
func (sj *ServedJWKS) encode() {
	var b bytes.Buffer
	b.WriteString(`{"keys":[`)
	for i, k := range sj.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(k)
	}
	fmt.Fprintf(&b, `],"stale":%t,"expiresAt":"%s"}`, sj.Stale, sj.ExpiresAt.UTC().Format(time.RFC3339))
	sj.Body = b.Bytes()
	sum := sha256.Sum256(sj.Body)
	sj.ETag = `"` + base64.RawURLEncoding.EncodeToString(sum[:18]) + `"`
}

// Only returns the document narrowed to the keys of kid, and false when
// the set has none (or only denied ones).
func (sj *ServedJWKS) Only(kid string) (*ServedJWKS, bool) {
	out := *sj
	out.keys, out.KIDs = nil, nil
	for i, k := range sj.KIDs {
		if k == kid {
			out.keys = append(out.keys, sj.keys[i])
			out.KIDs = append(out.KIDs, k)
		}
	}
	if len(out.keys) == 0 {
		return nil, false
	}
	out.encode()
	return &out, true
}

// JWKS returns the provider's usable keys as a document to serve (see
// ServedJWKS), loading them first if the provider is cold, as Resolve
// does. Errors are Resolve's: ErrNotRegistered, or ErrNoKeys with the
// cause when no usable keys are served.
func (m *Manager) JWKS(ctx context.Context, tenant, providerID string) (*ServedJWKS, error) {
	p, err := m.provider(tenant, providerID)
	if err != nil {
		return nil, err
	}
	if sj, err := p.served(time.Now()); err == nil {
		if len(sj.KIDs) == 0 {
			return nil, p.opError("jwks", &noKeysError{cause: fmt.Errorf("every key is denied: %w", ErrKeyDenied)})
		}
		return sj, nil
	}
	if _, err := m.Resolve(ctx, tenant, providerID); err != nil {
		return nil, err
	}
	sj, err := p.served(time.Now())
	if err != nil {
		return nil, p.opError("jwks", &noKeysError{cause: p.lastError()})
	}
	if len(sj.KIDs) == 0 {
		return nil, p.opError("jwks", &noKeysError{cause: fmt.Errorf("every key is denied: %w", ErrKeyDenied)})
	}
	return sj, nil
}

// Revalidate makes one conditional fetch of the provider's keys now, for a
// client that asked to revalidate (HTTP Cache-Control: no-cache, or a kid
// the set lacks), and waits for it under ctx. Its answer comes from a
// fetch begun after the call, shared with other callers; it spends the provider's unknown-kid budget (see
// Registration.NegativeCacheTTL and Options.MaxUnknownKIDRefreshes): with
// the budget spent it fetches nothing and returns an error matching
// ErrRateLimited, and the caller answers from the cache.
func (m *Manager) Revalidate(ctx context.Context, tenant, providerID string) error {
	p, err := m.provider(tenant, providerID)
	if err != nil {
		return err
	}
	if p.snap.Load() == nil {
		// A cold provider: its first load is the revalidation, and does
		// not spend the budget.
		_, err := m.Resolve(ctx, tenant, providerID)
		return err
	}
	if why := p.allowKIDRefresh("\x00revalidate"); why != "" {
		return p.opError("revalidate", fmt.Errorf("%w (%s)", ErrRateLimited, why))
	}
	// The answer must come from a fetch begun after this call: one in
	// flight may predate the rotation the client met, so after joining
	// it, join (or start) the next.
	before := p.fetchSeq.Load()
	for range maxSupersededTries {
		if err := p.await(ctx, p.applied.Load(), reasonRevalidate); err != nil {
			if p.removed.Load() {
				return m.notRegistered(tenant, providerID)
			}
			return p.opError("revalidate", err)
		}
		if p.okSeq.Load() > before {
			return nil
		}
	}
	return nil
}

// RefreshAsync starts a conditional fetch of the provider's keys and
// returns at once. The fetch begins after the call: if one is in flight,
// another follows it. Calls made while one is waiting to begin share it.
func (m *Manager) RefreshAsync(tenant, providerID string) error {
	p, err := m.provider(tenant, providerID)
	if err != nil {
		return err
	}
	if !p.refreshQueued.CompareAndSwap(false, true) {
		return nil // one is waiting to begin: it begins after this call
	}
	if !m.enter() {
		p.refreshQueued.Store(false)
		return ErrClosed
	}
	go func() {
		defer m.leave()
		for range maxSupersededTries {
			led := false
			_, _, _ = m.flights.Do(p.flightKey(), func() (any, error) {
				led = true
				p.refreshQueued.Store(false) // from here, a new call needs a new fetch
				return p.tracedFlight(anyFetch, reasonManual)
			})
			if led || p.removed.Load() {
				return
			}
			// Joined a fetch that began before the call: fetch again.
		}
		p.refreshQueued.Store(false)
	}()
	return nil
}

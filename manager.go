package jwkscache

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/sync/singleflight"
)

// closeTimeout bounds how long Close waits for background goroutines.
const closeTimeout = 2 * time.Second

// Manager keeps the signing keys of many identity providers in memory and
// refreshes them in the background. Create one with New and release it
// with Close. All methods are safe for concurrent use.
//
// Lock order. A goroutine holding one of these may take only those listed
// after it: registry.mu (Register and Unregister), provider.mu (one
// provider at a time), scheduler.mu; then the leaf locks kidBudget.mu,
// hitCounter.mu and the fetcher's. No lock is held across I/O (a fetch,
// later a store call) or user code (OnEvent, the Logger's handler, metric
// registries): events and log records are queued and delivered by the
// notifier's goroutine, which holds no engine lock.
type Manager struct {
	opts      Options
	notify    *notifier
	fetcher   *fetcher
	providers *registry
	hits      *hitCounter // its own allocation: runtime cleanups reach it, not the Manager
	sched     *scheduler

	kidBudget kidBudget
	docs      *documents // likewise
	panics    atomic.Uint64
	collector *collector // registered on opts.Registerer; nil without one
	persist   *persister // runs the Store's calls; nil without a Store
	// flights shares one fetch per provider among every caller: the
	// scheduler, lookups of a cold provider or an unknown kid, Refresh. One
	// group for all providers keeps its map small: entries live only while
	// a fetch runs.
	flights singleflight.Group
	seq     atomic.Uint64 // numbers providers for their flight keys

	ctx    context.Context // cancelled by Close; every fetch runs on it
	cancel context.CancelFunc

	mu     sync.Mutex // guards closed transitions and wg.Add
	closed atomic.Bool
	wg     sync.WaitGroup
}

// New returns a Manager configured by opts and starts its scheduler,
// refresh workers and (when OnEvent or Logger is set) the goroutine that
// delivers events and log records. It returns an error matching
// ErrInvalidOptions, naming every bad field, for invalid options.
func New(opts Options) (*Manager, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	m := &Manager{
		opts:      opts,
		fetcher:   newFetcher(opts),
		providers: newRegistry(),
		hits:      new(hitCounter),
		docs:      new(documents),
	}
	m.kidBudget.rate = float64(opts.MaxUnknownKIDRefreshes)
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.sched = newScheduler(m, opts.RefreshWorkers)
	if opts.Registerer != nil {
		// Before any goroutine starts, so that a refusal leaves nothing
		// to stop. A scrape may come at once: the Manager is complete
		// enough for Collect.
		c := &collector{m: m}
		if err := opts.Registerer.Register(c); err != nil {
			m.cancel()
			m.fetcher.close()
			return nil, fmt.Errorf("jwkscache: register metrics: %w", err)
		}
		m.collector = c
	}
	m.notify = newNotifier(opts.OnEvent, opts.Logger, &m.panics)
	if opts.Store != nil {
		m.persist = newPersister(m, &opts)
		m.persist.start(m.ctx)
	}
	m.wg.Add(1 + opts.RefreshWorkers)
	go func() {
		defer m.wg.Done()
		m.sched.run(m.ctx)
	}()
	for range opts.RefreshWorkers {
		go func() {
			defer m.wg.Done()
			m.sched.worker(m.ctx)
		}()
	}
	return m, nil
}

// enter registers a goroutine doing work for the Manager; it returns false
// once the Manager is closed. Each successful enter must be paired with leave.
func (m *Manager) enter() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed.Load() {
		return false
	}
	m.wg.Add(1)
	return true
}

func (m *Manager) leave() { m.wg.Done() }

// Close stops every background goroutine, cancelling fetches in flight, and
// returns within about 2 seconds even when an upstream is stuck. Events
// still queued for OnEvent are discarded; an OnEvent or log handler that
// does not return keeps the delivery goroutine until it does, but Close
// does not wait for it past the 2 seconds. Calls after Close, Close
// included, return ErrClosed.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed.Load() {
		m.mu.Unlock()
		return ErrClosed
	}
	m.closed.Store(true)
	m.mu.Unlock()
	if m.collector != nil {
		m.opts.Registerer.Unregister(m.collector) // user code; no lock held
	}
	m.cancel()
	for _, p := range m.providers.clear() {
		p.removed.Store(true)
	}
	done := make(chan struct{})
	go func() {
		m.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(closeTimeout)
	defer t.Stop()
	defer m.fetcher.close()
	select {
	case <-done:
	case <-t.C:
		m.notify.close(nil) // past the deadline: do not wait
		return fmt.Errorf("jwkscache: close: background fetches still running after %v", closeTimeout)
	}
	m.notify.close(t.C)
	return nil
}

// logf queues a log record for the Logger's handler; p's counter records
// a drop. It never blocks and runs no user code.
func (m *Manager) logf(p *provider, level slog.Level, msg string, attrs ...slog.Attr) {
	var dropped *atomic.Uint64
	if p != nil {
		dropped = &p.eventsDropped
	}
	m.notify.log(level, msg, dropped, attrs...)
}

// provider returns the registered provider or the error to return.
func (m *Manager) provider(tenant, providerID string) (*provider, error) {
	if p := m.providers.get(tenant, providerID); p != nil {
		return p, nil
	}
	return nil, m.notRegistered(tenant, providerID)
}

func (m *Manager) notRegistered(tenant, providerID string) error {
	if m.closed.Load() {
		return ErrClosed
	}
	return &ProviderError{TenantID: tenant, ProviderID: providerID, Err: ErrNotRegistered}
}

// Register adds a provider, or updates the registration of one already
// registered. The registration is validated against its own rules and the
// Manager's Options first; on error nothing changes. A new provider starts
// loading in the background at once.
//
// An update that changes where or how keys are fetched (URL, issuer for
// discovery, pins, allowlists, AllowHTTP, MaxRedirects, MaxResponseBytes)
// loads the new source at once and keeps serving the old keys until it has
// loaded, but no longer than their freshness: they are not served stale,
// and tokens verified with them keep the issuer they were registered with.
// Other updates take effect at the next fetch; a new Issuer applies to
// tokens at once, and a new StaleWhileError to the keys served now. An
// update keeps the provider's counters and its place in the scheduler's
// fairness (a slow provider stays slow).
//
// Register does not wait for the keys; a lookup waits for the first load.
// With a Store (Options.Store), the registration is saved there in the
// background, and a new provider's first load restores its stored
// snapshot before any fetch.
func (m *Manager) Register(ctx context.Context, reg Registration) error {
	return m.register(ctx, reg, true, "", 0)
}

// RegisterUnsaved is Register without saving the registration in the Store
// (its snapshots still are): for registrations the caller applies again at
// every start, from a configuration file, so that one removed from the
// file does not come back from the Store with Restore. Without a Store it
// is Register.
func (m *Manager) RegisterUnsaved(ctx context.Context, reg Registration) error {
	return m.register(ctx, reg, false, "", 0)
}

// RegisterIfVersion is Register for an update that must not overwrite a
// change made since the caller read the registration: it applies reg only
// if the provider is registered and its RegistrationVersion (see
// ProviderStatus) is version, or for version "*", if the provider is
// registered at all. Otherwise it changes nothing and returns an error
// matching ErrVersionMismatch. version must not be empty.
func (m *Manager) RegisterIfVersion(ctx context.Context, reg Registration, version string) error {
	if version == "" {
		return fmt.Errorf("%w: empty version", ErrVersionMismatch)
	}
	return m.register(ctx, reg, true, version, 0)
}

// ifAbsent, as register's ifVersion, registers only a pair not registered
// (Restore: a registration made meanwhile wins); errRegistered says it was.
const ifAbsent = "\x00absent"

var errRegistered = errors.New("jwkscache: registered already")

// registrationVersion is the RegistrationVersion of r (defaults applied).
func registrationVersion(r *Registration) string {
	b, err := json.Marshal(r)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// register is Register; save says whether to save the registration in the
// Store (not when Restore read it from there), and ifVersion, when not
// empty, is RegisterIfVersion's condition.
func (m *Manager) register(ctx context.Context, reg Registration, save bool, ifVersion string, since uint64) error {
	if m.closed.Load() {
		return ErrClosed
	}
	r := reg.WithDefaults()
	if err := r.validate(m.fetcher.policyFor(&r)); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	now := time.Now()
	m.providers.mu.Lock() // serialises Register and Unregister of every pair
	defer m.providers.mu.Unlock()
	if m.closed.Load() {
		return ErrClosed
	}
	if other := m.providers.issuerOwnerLocked(r.TenantID, r.Issuer, r.key()); other != nil {
		// Issuer routing (TenantKeyfunc) needs one provider per issuer.
		return &RegistrationError{TenantID: r.TenantID, ProviderID: r.ProviderID, Fields: []FieldError{{
			Field:   "issuer",
			Message: fmt.Sprintf("provider %q of tenant %q already has this issuer", other.key.provider, r.TenantID),
		}}}
	}
	if ifVersion == ifAbsent {
		if m.providers.get(r.TenantID, r.ProviderID) != nil {
			return errRegistered
		}
		if m.persist != nil && m.persist.deleting(r.key(), since) {
			return errRegistered // unregistered since: its record is stale
		}
	} else if ifVersion != "" {
		p := m.providers.get(r.TenantID, r.ProviderID)
		if p == nil {
			return m.notRegistered(r.TenantID, r.ProviderID)
		}
		if cur := registrationVersion(p.registration()); ifVersion != "*" && cur != ifVersion {
			return &ProviderError{TenantID: r.TenantID, ProviderID: r.ProviderID,
				Err: fmt.Errorf("%w: the registration is at version %s, not %s", ErrVersionMismatch, cur, showID(ifVersion))}
		}
	}
	if save && m.persist != nil {
		// Queued under registry.mu, so that the Store sees Register and
		// Unregister of a pair in the order they took effect.
		m.persist.write(r.key(), pendingWrite{reg: encodeRegistration(&reg, m.persist.keys)})
	}
	if p := m.providers.get(r.TenantID, r.ProviderID); p != nil {
		old := p.registration().Issuer
		m.update(p, &r, now)
		m.providers.setIssuerLocked(p, old, r.Issuer)
		return nil
	}
	p := &provider{m: m, key: r.key(), id: m.seq.Add(1), heapIdx: -1, jwksURL: r.JWKSURL, nextRefresh: now, slow: true}
	p.slot = m.hits.allocFor(p)
	p.cfg.Store(&r)
	m.fetcher.acquirePins(r.pins())
	m.providers.addLocked(p)
	m.providers.setIssuerLocked(p, "", r.Issuer)
	p.mu.Lock()
	defer p.mu.Unlock()
	m.sched.schedule(p, now)
	return nil
}

// update applies a new registration r to the registered provider p.
// m.providers.mu is held.
func (m *Manager) update(p *provider, r *Registration, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.registration()
	p.cfg.Store(r)
	s := p.snap.Load()
	switch {
	case sourceChanged(old, r):
		p.gen++ // a fetch in flight from the old source is void
		// The new source's first load counts as slow until it has shown
		// otherwise (fairness: first loads included).
		p.slow = true
		p.jwksURL = r.JWKSURL
		p.disc = nil
		p.nextRefresh = now
		p.errorCount = 0
		p.lastErr = nil
		if s != nil && s.staleUntil.After(s.expiresAt) {
			ns := *s
			ns.staleUntil = ns.expiresAt
			p.snap.Store(&ns)
		}
		if !slices.Equal(old.PinnedSPKI, r.PinnedSPKI) {
			m.fetcher.acquirePins(r.pins())
			m.fetcher.releasePins(old.pins())
		}
	case s != nil && (s.issuer != r.Issuer || old.staleWindow() != r.staleWindow()):
		// Same source: a new Issuer binds the keys at once, and a new
		// StaleWhileError applies to the keys served now (so that it can
		// be raised during an outage, or lowered to drop suspect keys).
		ns := *s
		ns.issuer = r.Issuer
		ns.staleUntil = ns.expiresAt.Add(r.staleWindow())
		p.snap.Store(&ns)
	}
	m.sched.schedule(p, p.nextDueLocked())
}

// sourceChanged reports whether an update changes where or how keys are
// fetched, so the current keys must be replaced by a new load.
func sourceChanged(a, b *Registration) bool {
	return a.JWKSURL != b.JWKSURL || a.usesDiscovery() != b.usesDiscovery() ||
		b.usesDiscovery() && a.Issuer != b.Issuer ||
		a.AllowHTTP != b.AllowHTTP || !slices.Equal(a.AllowedDomains, b.AllowedDomains) ||
		!slices.Equal(a.PinnedSPKI, b.PinnedSPKI) || a.MaxResponseBytes != b.MaxResponseBytes ||
		a.MaxRedirects != b.MaxRedirects
}

// Unregister removes a provider. Its keys stop being served at once and a
// fetch in flight is discarded. With a Store, its registration and
// snapshot records are deleted there in the background.
func (m *Manager) Unregister(ctx context.Context, tenant, providerID string) error {
	if m.closed.Load() {
		return ErrClosed
	}
	m.providers.mu.Lock()
	defer m.providers.mu.Unlock()
	p := m.providers.removeLocked(providerKey{tenant, providerID})
	if p == nil {
		return m.notRegistered(tenant, providerID)
	}
	var evs []Event
	func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.removed.Store(true)
		m.sched.remove(p)
		p.snap.Store(nil)
		// Whoever tracks stale providers from events sees this one end.
		evs = p.staleEndedLocked(time.Now(), evs)
		m.providers.setIssuerLocked(p, p.registration().Issuer, "")
		m.fetcher.releasePins(p.registration().pins())
	}()
	p.emit(evs)
	if m.persist != nil {
		m.persist.write(p.key, pendingWrite{del: true})
		m.persist.forget(p.key)
	}
	// A reader that found p just before may still count a hit into its
	// slot: the slot is reused only once p is unreachable (see hitCounter).
	return nil
}

// Key returns the key of kid from the provider's key set. A warm lookup
// takes no lock and allocates nothing. A cold provider is loaded first
// (one fetch shared by all callers, each waiting under its own ctx); an
// unknown kid triggers one shared, rate-limited refresh before the lookup
// fails with ErrKeyNotFound. A denied kid fails with ErrKeyDenied.
//
// An empty kid matches the set's only key, if it has exactly one. A kid
// that names keys of several algorithm families is ambiguous here: use
// Keyfunc, which tells them apart by the token's alg.
//
// The returned key shares its public key value (and certificates) with the
// cache, so that the lookup allocates nothing: treat it as read-only. The
// cache keeps one copy of a document that several providers serve (tenants
// of one IdP), so a caller that modified a returned key would corrupt it
// for every one of them. Resolve returns copies.
func (m *Manager) Key(ctx context.Context, tenant, providerID, kid string) (jose.JSONWebKey, error) {
	if p := m.providers.get(tenant, providerID); p != nil {
		if s := p.snap.Load(); s != nil {
			if k := s.keys.find(kid); k != nil && !p.isDenied(kid) {
				m.hits.inc(p.slot)
				runtime.KeepAlive(p) // the slot stays p's until the add is done
				return k.jwk, nil
			}
		}
	}
	return m.keyMiss(ctx, tenant, providerID, kid)
}

// keyMiss is Key after the fast path failed. It is a function of its own so
// that the fast path keeps a small frame.
//
//go:noinline
func (m *Manager) keyMiss(ctx context.Context, tenant, providerID, kid string) (jose.JSONWebKey, error) {
	p := m.providers.get(tenant, providerID)
	if p == nil {
		return jose.JSONWebKey{}, m.notRegistered(tenant, providerID)
	}
	k, _, err := m.keySlow(ctx, p, kid, "key", func(ks *keySet) (*typedKey, error) { return ks.lookup(kid) })
	if err != nil {
		return jose.JSONWebKey{}, err
	}
	return k.jwk, nil
}

// keySlow is the lookup path after a miss: deny check, cold load, or an
// unknown-kid refresh within the provider's budget. It returns the key and
// the snapshot it was found in (whose issuer binds the token), and counts
// the lookup once: a hit when the key was already in memory, else a miss.
func (m *Manager) keySlow(ctx context.Context, p *provider, kid, op string, find func(*keySet) (*typedKey, error)) (k *typedKey, found *snapshot, err error) {
	var (
		waited    bool
		waitStart time.Time
	)
	defer func() {
		if waited {
			p.recordWait(time.Since(waitStart))
		}
		if err == nil && !waited {
			m.hits.inc(p.slot)
			runtime.KeepAlive(p)
		} else {
			p.misses.Add(1)
		}
	}()
	fail := func(err error) (*typedKey, *snapshot, error) {
		if p.removed.Load() {
			return nil, nil, m.notRegistered(p.key.tenant, p.key.provider)
		}
		return nil, nil, p.opError(op, err)
	}
	if p.isDenied(kid) {
		return fail(fmt.Errorf("kid %s: %w", showID(kid), ErrKeyDenied))
	}
	var (
		seq      uint64 // fetches started before the refresh this lookup waits for
		fetchErr error  // that refresh's error
		kidFetch bool   // this lookup spent a token on a kid-driven refresh
		rejoined bool   // a second refresh was awaited
	)
	for pass := 0; ; pass++ {
		seen := p.applied.Load()
		s := p.snap.Load()
		why := reasonFirstLoad
		if s != nil {
			k, err := find(s.keys)
			if err == nil {
				// An empty kid may have matched a key that has one.
				if p.isDenied(k.jwk.KeyID) {
					return fail(fmt.Errorf("kid %s: %w", showID(k.jwk.KeyID), ErrKeyDenied))
				}
				return k, s, nil
			}
			missing := !s.keys.has(kid)
			switch {
			case pass == 0 && missing && len(kid) > maxKIDLen:
				// Kids come from token headers: an oversized one is refused
				// before it can spend the refresh budget or fill the
				// negative cache.
				return fail(fmt.Errorf("%w: kid of %d bytes (at most %d)", ErrKeyNotFound, len(kid), maxKIDLen))
			case pass == 0 && missing && kid != "":
				if why := p.allowKIDRefresh(kid); why != "" {
					return fail(fmt.Errorf("kid %s: %w (%s)", showID(kid), ErrKeyNotFound, why))
				}
				kidFetch = true
			case kidFetch && missing && fetchErr == nil && p.okSeq.Load() <= seq && !rejoined:
				// The refresh we joined began before this miss, so its
				// answer may predate the key: wait for one more, on the
				// same token.
				rejoined = true
			default:
				// Present but ambiguous or of another family, or still
				// missing after a refresh: refreshing again will not help.
				// Only a successful fetch begun after the miss shows that
				// the kid is missing.
				if pass > 0 && missing {
					if fetchErr != nil {
						return fail(fmt.Errorf("kid %s: %w (refresh failed: %w)", showID(kid), ErrKeyNotFound, fetchErr))
					}
					p.rememberMissing(kid)
				}
				return fail(fmt.Errorf("kid %s: %w", showID(kid), err))
			}
			why = reasonUnknownKID
		} else {
			if p.removed.Load() {
				return fail(ErrNotRegistered)
			}
			if pass > 0 {
				return fail(&noKeysError{cause: p.lastError()})
			}
			if err := p.recentFailure(); err != nil {
				return fail(&noKeysError{cause: err})
			}
		}
		seq, fetchErr = p.fetchSeq.Load(), nil
		if !waited {
			waited, waitStart = true, time.Now()
		}
		if err := p.await(ctx, seen, why); err != nil {
			if errors.Is(err, ErrClosed) || ctx.Err() != nil {
				return fail(err)
			}
			if p.snap.Load() == nil {
				return fail(&noKeysError{cause: err})
			}
			fetchErr = err
			// A failed refresh with stale keys still in place: look again.
		}
	}
}

// Resolve returns the provider's usable keys (denied kids excluded), loading
// them first if the provider is cold. The set is a copy the caller may keep.
// It counts as one lookup: a hit when the keys were in memory.
func (m *Manager) Resolve(ctx context.Context, tenant, providerID string) (_ *jose.JSONWebKeySet, err error) {
	p, err := m.provider(tenant, providerID)
	if err != nil {
		return nil, err
	}
	seen := p.applied.Load()
	s := p.snap.Load()
	hit := s != nil
	defer func() {
		if hit && err == nil {
			m.hits.inc(p.slot)
			runtime.KeepAlive(p)
		} else {
			p.misses.Add(1)
		}
	}()
	fail := func(err error) (*jose.JSONWebKeySet, error) {
		if p.removed.Load() {
			return nil, m.notRegistered(tenant, providerID)
		}
		return nil, p.opError("resolve", err)
	}
	if s == nil {
		if err := p.recentFailure(); err != nil {
			return fail(&noKeysError{cause: err})
		}
		start := time.Now()
		err := p.await(ctx, seen, reasonFirstLoad)
		p.recordWait(time.Since(start))
		if s = p.snap.Load(); s == nil {
			if err == nil {
				err = p.lastError()
			}
			return fail(&noKeysError{cause: err})
		}
	}
	set := &jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, 0, len(s.keys.keys))}
	for _, k := range s.keys.keys {
		if !p.isDenied(k.info.KID) {
			set.Keys = append(set.Keys, cloneJWK(k.jwk))
		}
	}
	if len(set.Keys) == 0 {
		return fail(fmt.Errorf("%w: every key is denied", ErrNoKeys))
	}
	return set, nil
}

// Refresh fetches the provider's keys now, conditionally (with its
// validators), even when they are fresh, and returns the fetch's error. A
// fetch already in flight is joined rather than repeated.
func (m *Manager) Refresh(ctx context.Context, tenant, providerID string) error {
	p, err := m.provider(tenant, providerID)
	if err != nil {
		return err
	}
	err = p.await(ctx, anyFetch, reasonManual)
	if errors.Is(err, ErrNotRegistered) || p.removed.Load() && err != nil {
		return m.notRegistered(tenant, providerID)
	}
	if err != nil {
		return p.opError("refresh", err)
	}
	return nil
}

// DenyKey refuses kid for the provider at once, even from a stale set and
// across refreshes, until AllowKey (for a key compromised during an
// outage). The kid need not be in the current set.
func (m *Manager) DenyKey(tenant, providerID, kid string) error {
	p, err := m.provider(tenant, providerID)
	if err != nil {
		return err
	}
	if p.setDenied(kid, true) {
		ev := p.newEvent(EventKeyDenied, time.Now())
		ev.KID = kid
		p.emit([]Event{ev})
	}
	return nil
}

// AllowKey lifts a denial made by DenyKey.
func (m *Manager) AllowKey(tenant, providerID, kid string) error {
	p, err := m.provider(tenant, providerID)
	if err != nil {
		return err
	}
	if p.setDenied(kid, false) {
		ev := p.newEvent(EventKeyAllowed, time.Now())
		ev.KID = kid
		p.emit([]Event{ev})
	}
	return nil
}

// cloneJWK returns a copy of k whose public key and slices are its own, so
// that a caller of Resolve may modify its set freely. The x509
// certificates themselves are shared: they are immutable by convention.
func cloneJWK(k jose.JSONWebKey) jose.JSONWebKey {
	switch pub := k.Key.(type) {
	case *rsa.PublicKey:
		k.Key = &rsa.PublicKey{N: new(big.Int).Set(pub.N), E: pub.E}
	case *ecdsa.PublicKey:
		// Through the encoding, since the coordinates are deprecated; a
		// key that parsed once always round-trips.
		if raw, err := pub.Bytes(); err == nil {
			if c, err := ecdsa.ParseUncompressedPublicKey(pub.Curve, raw); err == nil {
				k.Key = c
			}
		}
	case ed25519.PublicKey:
		k.Key = slices.Clone(pub)
	}
	k.Certificates = slices.Clone(k.Certificates)
	k.CertificateThumbprintSHA1 = slices.Clone(k.CertificateThumbprintSHA1)
	k.CertificateThumbprintSHA256 = slices.Clone(k.CertificateThumbprintSHA256)
	return k
}

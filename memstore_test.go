package jwkscache

import (
	"context"
	"errors"
	"sync"
	"time"
)

// memBackend is an in-memory FleetStore backend for the engine's tests:
// several memStores over one backend behave as instances of a fleet
// sharing one Redis. It runs in synctest bubbles (no sockets), can fail or
// hang every call, and counts the calls.
type memBackend struct {
	mu     sync.Mutex
	snaps  map[providerKey]memSnap
	regs   map[providerKey][]byte
	leases map[providerKey]memLease
	subs   []chan memNote
	token  int
	calls  map[string]int
	fail   error // every call fails with it (only failOp's, when set)
	failOp string
	hang   chan struct{} // every call blocks until it is closed or ctx is done
	// hold makes TryLease succeed without the lease ever being committed
	// or released by anyone (a holder that died).
}

type memSnap struct {
	rec  []byte
	dead time.Time
}

type memLease struct {
	token int
	until time.Time
}

type memNote struct {
	tenant, provider string
	note             []byte
}

func newMemBackend() *memBackend {
	return &memBackend{
		snaps:  make(map[providerKey]memSnap),
		regs:   make(map[providerKey][]byte),
		leases: make(map[providerKey]memLease),
		calls:  make(map[string]int),
	}
}

// enter counts a call and applies the fault, if any.
func (b *memBackend) enter(ctx context.Context, op string) error {
	b.mu.Lock()
	b.calls[op]++
	fail, hang := b.fail, b.hang
	if b.failOp != "" && b.failOp != op {
		fail = nil
	}
	b.mu.Unlock()
	if hang != nil {
		select {
		case <-hang:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fail
}

func (b *memBackend) setFail(err error) {
	b.mu.Lock()
	b.fail = err
	b.mu.Unlock()
}

func (b *memBackend) setHang(ch chan struct{}) {
	b.mu.Lock()
	b.hang = ch
	b.mu.Unlock()
}

func (b *memBackend) count(op string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls[op]
}

func (b *memBackend) snapshot(tenant, provider string) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.snaps[providerKey{tenant, provider}].rec
}

func (b *memBackend) putSnapshot(tenant, provider string, rec []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.snaps[providerKey{tenant, provider}] = memSnap{rec: rec, dead: time.Now().Add(time.Hour)}
}

// memStore is one instance's view of a memBackend.
type memStore struct{ b *memBackend }

var _ FleetStore = memStore{}

// plainStore hides the fleet methods: a Store that is not a FleetStore.
type plainStore struct{ Store }

func (s memStore) LoadSnapshot(ctx context.Context, tenant, provider string) ([]byte, error) {
	if err := s.b.enter(ctx, "load"); err != nil {
		return nil, err
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	r, ok := s.b.snaps[providerKey{tenant, provider}]
	if !ok || !time.Now().Before(r.dead) {
		return nil, ErrStoreNotFound
	}
	return append([]byte(nil), r.rec...), nil
}

func (s memStore) SaveSnapshot(ctx context.Context, tenant, provider string, rec []byte, dead time.Time) error {
	if err := s.b.enter(ctx, "save"); err != nil {
		return err
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.b.snaps[providerKey{tenant, provider}] = memSnap{rec: append([]byte(nil), rec...), dead: dead}
	return nil
}

func (s memStore) SaveRegistration(ctx context.Context, tenant, provider string, rec []byte) error {
	if err := s.b.enter(ctx, "saveRegistration"); err != nil {
		return err
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.b.regs[providerKey{tenant, provider}] = append([]byte(nil), rec...)
	return nil
}

func (s memStore) LoadRegistrations(ctx context.Context) ([][]byte, error) {
	if err := s.b.enter(ctx, "loadRegistrations"); err != nil {
		return nil, err
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	var out [][]byte
	for _, r := range s.b.regs {
		out = append(out, append([]byte(nil), r...))
	}
	return out, nil
}

func (s memStore) Delete(ctx context.Context, tenant, provider string) error {
	if err := s.b.enter(ctx, "delete"); err != nil {
		return err
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	delete(s.b.snaps, providerKey{tenant, provider})
	delete(s.b.regs, providerKey{tenant, provider})
	return nil
}

func (s memStore) TryLease(ctx context.Context, tenant, provider string, ttl time.Duration) (Lease, []byte, error) {
	if err := s.b.enter(ctx, "lease"); err != nil {
		return nil, nil, err
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	k := providerKey{tenant, provider}
	var rec []byte
	if r, ok := s.b.snaps[k]; ok && time.Now().Before(r.dead) {
		rec = append([]byte(nil), r.rec...)
	}
	if l, ok := s.b.leases[k]; ok && time.Now().Before(l.until) {
		return nil, rec, nil
	}
	s.b.token++
	s.b.leases[k] = memLease{token: s.b.token, until: time.Now().Add(ttl)}
	return &memHeld{b: s.b, key: k, token: s.b.token}, rec, nil
}

func (s memStore) Subscribe(ctx context.Context, fn func(tenant, provider string, note []byte)) error {
	if err := s.b.enter(ctx, "subscribe"); err != nil {
		return err
	}
	ch := make(chan memNote, 64)
	s.b.mu.Lock()
	s.b.subs = append(s.b.subs, ch)
	s.b.mu.Unlock()
	go func() {
		for {
			select {
			case n := <-ch:
				fn(n.tenant, n.provider, n.note)
			case <-ctx.Done():
				return
			}
		}
	}()
	return nil
}

// memHeld is a lease taken on a memBackend.
type memHeld struct {
	b     *memBackend
	key   providerKey
	token int
}

func (l *memHeld) Commit(ctx context.Context, rec []byte, dead time.Time, note []byte) error {
	if err := l.b.enter(ctx, "commit"); err != nil {
		return err
	}
	l.b.mu.Lock()
	defer l.b.mu.Unlock()
	l.b.snaps[l.key] = memSnap{rec: append([]byte(nil), rec...), dead: dead}
	for _, ch := range l.b.subs {
		select {
		case ch <- memNote{l.key.tenant, l.key.provider, append([]byte(nil), note...)}:
		default: // a subscriber that does not keep up loses notes, as on Redis
		}
	}
	if cur, ok := l.b.leases[l.key]; ok && cur.token == l.token {
		delete(l.b.leases, l.key)
	}
	return nil
}

func (l *memHeld) Release(ctx context.Context) error {
	if err := l.b.enter(ctx, "release"); err != nil {
		return err
	}
	l.b.mu.Lock()
	defer l.b.mu.Unlock()
	if cur, ok := l.b.leases[l.key]; ok && cur.token == l.token {
		delete(l.b.leases, l.key)
	}
	return nil
}

// errMemDown is the fault of a memBackend that is down.
var errMemDown = errors.New("memstore: connection refused")

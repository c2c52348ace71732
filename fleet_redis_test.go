package jwkscache_test

// Persistence and fleet mode against real stores: the Redis that .ci/run
// starts (JWKSCACHE_REDIS_ADDR; these tests skip without it), private
// redis-server processes and a 3-node Redis Cluster the tests start
// themselves, and bbolt files. Real Redis runs on real time, so the
// refresh cycles are shortened with SetTTLFloorForTest (the 30s floor of
// MinTTL, lowered for this test binary only) and max-age of seconds.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/internal/redistest"
	"github.com/jwkscache/jwkscache/jwkscachetest"
	"github.com/jwkscache/jwkscache/store/boltstore"
	"github.com/jwkscache/jwkscache/store/redisstore"
)

// realIdP starts a TLS test IdP serving n providers' keys at /p<i> with
// max-age maxAge seconds.
func realIdP(t *testing.T, n, maxAge int) (*jwkscachetest.IdP, []*jwkscachetest.Key) {
	t.Helper()
	idp := jwkscachetest.NewEmpty()
	if err := idp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	var keys []*jwkscachetest.Key
	for i := range n {
		k := jwkscachetest.NewKey("ES256", fmt.Sprintf("k-%d", i))
		idp.KeySet(providerPath(i)).Set(k)
		idp.SetMaxAge(providerPath(i), time.Duration(maxAge)*time.Second)
		keys = append(keys, k)
	}
	return idp, keys
}

func providerPath(i int) string { return fmt.Sprintf("/p%d", i) }

// realOptions are the Options of a Manager fetching from idp on loopback.
func realOptions(idp *jwkscachetest.IdP, store jwkscache.Store) jwkscache.Options {
	opts := jwkscache.Options{
		RootCAs:          idp.CertPool(),
		AllowedAddresses: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	}
	if store != nil {
		opts.Store = store
		opts.StoreKeys = [][]byte{[]byte("0123456789abcdef0123456789abcdef")}
	}
	return opts
}

func newReal(t *testing.T, opts jwkscache.Options) *jwkscache.Manager {
	t.Helper()
	m, err := jwkscache.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// shortCycles lowers the MinTTL floor for the test, so that refreshes come
// every second or so.
func shortCycles(t *testing.T) {
	t.Cleanup(jwkscache.SetTTLFloorForTest(time.Second))
}

func realReg(tenant, provider, url string) jwkscache.Registration {
	return jwkscache.Registration{
		TenantID: tenant, ProviderID: provider, JWKSURL: url,
		MinTTL: time.Second, RefreshEarly: time.Second, PrefetchJitter: -1,
		// A lease lapses Deadline + 2s after its holder died.
		Retry: jwkscache.RetryPolicy{Deadline: 3 * time.Second},
	}
}

// hasKID reports whether the provider serves kid, without a lookup.
func hasKID(m *jwkscache.Manager, tenant, provider, kid string) bool {
	st, err := m.Status(tenant, provider)
	return err == nil && slices.ContainsFunc(st.Keys, func(k jwkscache.KeyInfo) bool { return k.KID == kid })
}

// kidWatch reports, per Manager, when a kid first appeared in a key set.
type kidWatch struct {
	mu   sync.Mutex
	seen map[string]chan struct{} // tenant/provider/kid
}

func (w *kidWatch) ch(key string) chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen == nil {
		w.seen = make(map[string]chan struct{})
	}
	c, ok := w.seen[key]
	if !ok {
		c = make(chan struct{})
		w.seen[key] = c
	}
	return c
}

func (w *kidWatch) onEvent(ev jwkscache.Event) {
	if ev.Kind != jwkscache.EventKeysChanged {
		return
	}
	for _, kid := range ev.Added {
		c := w.ch(ev.TenantID + "/" + ev.ProviderID + "/" + kid)
		w.mu.Lock()
		select {
		case <-c:
		default:
			close(c)
		}
		w.mu.Unlock()
	}
}

// runFleet is the fleet acceptance test: 10 Managers sharing one Redis,
// each with the same 20 providers, over at least 10 refresh cycles of
// every provider. The IdP must see at most 1.2 fetches per provider per
// cycle, every Manager must serve the current keys, and a rotation one
// Manager catches must reach every other within a second.
func runFleet(t *testing.T, client func() redis.UniversalClient, prefix string) {
	shortCycles(t)
	const instances, providers, cycles = 10, 20, 10
	const maxAge = 2 // seconds: a refresh every second (RefreshEarly 1s)
	idp, keys := realIdP(t, providers, maxAge)
	// The rotation provider has a long max-age: only the fleet can carry
	// its rotation to the other instances within a second.
	rot := jwkscachetest.NewKey("ES256", "rot-1")
	idp.KeySet("/rot").Set(rot)
	idp.SetMaxAge("/rot", time.Hour)
	// The reference: a lone Manager without a store fetches once per
	// cycle of the same max-age, so its fetches count the cycles.
	idp.KeySet("/ref").Set(jwkscachetest.NewKey("ES256", "ref"))
	idp.SetMaxAge("/ref", maxAge*time.Second)
	lone := newReal(t, realOptions(idp, nil))

	ms := make([]*jwkscache.Manager, instances)
	watches := make([]*kidWatch, instances)
	ctx := t.Context()
	if err := lone.Register(ctx, realReg("acme", "ref", idp.URL()+"/ref")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range ms {
		s, err := redisstore.New(client(), redisstore.WithPrefix(prefix))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		watches[i] = new(kidWatch)
		opts := realOptions(idp, s)
		opts.OnEvent = watches[i].onEvent
		ms[i] = newReal(t, opts)
		for p := range providers {
			if err := ms[i].Register(ctx, realReg("acme", fmt.Sprintf("p%d", p), idp.URL()+providerPath(p))); err != nil {
				t.Fatal(err)
			}
		}
		if err := ms[i].Register(ctx, realReg("acme", "rot", idp.URL()+"/rot")); err != nil {
			t.Fatal(err)
		}
	}
	for i, m := range ms {
		for p := range providers {
			if _, err := m.Key(ctx, "acme", fmt.Sprintf("p%d", p), keys[p].KID); err != nil {
				t.Fatalf("instance %d, p%d: %v", i, p, err)
			}
		}
	}

	// The cycles run on real time: each refresh comes a second after the
	// last fetch. The reference Manager's fetches count them; on a loaded
	// machine (the race detector) a cycle runs a little longer than 1s.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for idp.Requests("/ref") < cycles+1 {
		if time.Since(start) > 4*cycles*time.Second {
			t.Fatalf("only %d refresh cycles in %v", idp.Requests("/ref"), time.Since(start))
		}
		<-tick.C
	}
	elapsed := time.Since(start)
	cyclesRun := idp.Requests("/ref") // the first load included
	worst := 0.0
	total := 0
	for p := range providers {
		n := idp.Requests(providerPath(p))
		total += n
		perCycle := float64(n) / float64(cyclesRun)
		worst = max(worst, perCycle)
		if perCycle > 1.2 {
			t.Errorf("p%d: %d fetches in %d cycles by %d instances: %.2f per cycle, want <= 1.2", p, n, cyclesRun, instances, perCycle)
		}
		for i, m := range ms {
			if !hasKID(m, "acme", fmt.Sprintf("p%d", p), keys[p].KID) {
				t.Errorf("instance %d does not serve p%d's key", i, p)
			}
		}
	}
	t.Logf("%d instances, %d providers, %d cycles in %.1fs: %d IdP fetches, %.2f per provider per cycle on average, %.2f at worst",
		instances, providers, cyclesRun, elapsed.Seconds(), total, float64(total)/float64(providers)/float64(cyclesRun), worst)

	// Rotation: one instance meets the new kid; the others have it within
	// a second, and their tokens with it then cost the IdP nothing.
	rot2 := jwkscachetest.NewKey("ES256", "rot-2")
	idp.KeySet("/rot").Set(rot2)
	before := idp.Requests("/rot")
	if _, err := ms[0].Key(ctx, "acme", "rot", rot2.KID); err != nil {
		t.Fatalf("the instance meeting the new kid: %v", err)
	}
	seen := time.Now()
	deadline := time.NewTimer(time.Second)
	defer deadline.Stop()
	for i, w := range watches[1:] {
		select {
		case <-w.ch("acme/rot/" + rot2.KID):
		case <-deadline.C:
			t.Fatalf("instance %d did not have the rotated kid within 1s of instance 0", i+1)
		}
	}
	t.Logf("rotation reached %d instances in %v", instances-1, time.Since(seen))
	for i, m := range ms[1:] {
		if _, err := m.Key(ctx, "acme", "rot", rot2.KID); err != nil {
			t.Fatalf("instance %d: %v", i+1, err)
		}
	}
	if got := idp.Requests("/rot") - before; got != 1 {
		t.Fatalf("the rotation cost the IdP %d fetches, want 1", got)
	}
}

func TestRedisFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("real-time fleet test: 12s")
	}
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	addr := redistest.Addr(t)
	runFleet(t, func() redis.UniversalClient {
		rc := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
		t.Cleanup(func() { _ = rc.Close() })
		return rc
	}, prefix)
}

func TestRedisFleetCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("real-time fleet test on a Redis Cluster: 16s")
	}
	addrs := redistest.StartCluster(t)
	c := redistest.ClusterClient(t, addrs)
	runFleet(t, func() redis.UniversalClient { return redistest.ClusterClient(t, addrs) }, redistest.Prefix(t, c))
}

// A new Manager starting while the IdP is down serves every provider from
// the store at once: Redis, and bbolt.
func TestRestartWithIdPDown(t *testing.T) {
	stores := map[string]func(t *testing.T) (open func() jwkscache.Store){
		"redis": func(t *testing.T) func() jwkscache.Store {
			c := redistest.Client(t)
			prefix := redistest.Prefix(t, c)
			return func() jwkscache.Store {
				s, err := redisstore.New(c, redisstore.WithPrefix(prefix))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = s.Close() })
				return s
			}
		},
		"bolt": func(t *testing.T) func() jwkscache.Store {
			path := filepath.Join(t.TempDir(), "jwks.db")
			return func() jwkscache.Store {
				s, err := boltstore.Open(path)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = s.Close() })
				return s
			}
		},
	}
	for name, mk := range stores {
		t.Run(name, func(t *testing.T) {
			open := mk(t)
			const providers = 5
			idp, keys := realIdP(t, providers, 600)
			ctx := t.Context()
			s1 := open()
			m1 := newReal(t, realOptions(idp, s1))
			for p := range providers {
				if err := m1.Register(ctx, jwkscache.Registration{TenantID: "acme", ProviderID: fmt.Sprintf("p%d", p), JWKSURL: idp.URL() + providerPath(p)}); err != nil {
					t.Fatal(err)
				}
				if _, err := m1.Key(ctx, "acme", fmt.Sprintf("p%d", p), keys[p].KID); err != nil {
					t.Fatal(err)
				}
			}
			if err := m1.Close(); err != nil { // flushes the pending writes
				t.Fatal(err)
			}
			if c, ok := s1.(interface{ Close() error }); ok && name == "bolt" {
				_ = c.Close() // one process holds a bolt file
			}
			idp.Close()

			m2 := newReal(t, realOptions(idp, open()))
			n, err := m2.Restore(ctx)
			if err != nil || n != providers {
				t.Fatalf("Restore = %d, %v; want %d", n, err, providers)
			}
			for p := range providers {
				id := fmt.Sprintf("p%d", p)
				if _, err := m2.Key(ctx, "acme", id, keys[p].KID); err != nil {
					t.Fatalf("%s with the IdP down: %v", id, err)
				}
				if st, _ := m2.Status("acme", id); st.Source != "store" || st.ErrorCount != 0 {
					t.Fatalf("%s: source %q, %d errors; want store and no fetch", id, st.Source, st.ErrorCount)
				}
			}
		})
	}
}

// Redis stopped and restarted mid-run: no lookup fails, the Manager shows
// the store's failure, and snapshots are saved again once Redis is back.
func TestRedisOutageMidRun(t *testing.T) {
	if testing.Short() {
		t.Skip("real-time Redis outage test")
	}
	shortCycles(t)
	addr, stop, restart := redistest.StartServer(t)
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	s, err := redisstore.New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	idp, keys := realIdP(t, 1, 2)
	opts := realOptions(idp, s)
	opts.StoreTimeout = 300 * time.Millisecond
	m := newReal(t, opts)
	ctx := t.Context()
	if err := m.Register(ctx, realReg("acme", "p0", idp.URL()+providerPath(0))); err != nil {
		t.Fatal(err)
	}
	var failures atomic.Int64
	lookups := func(d time.Duration) {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		end := time.NewTimer(d)
		defer end.Stop()
		for {
			if _, err := m.Key(ctx, "acme", "p0", keys[0].KID); err != nil {
				failures.Add(1)
				t.Errorf("lookup failed: %v", err)
			}
			select {
			case <-tick.C:
			case <-end.C:
				return
			}
		}
	}
	lookups(1500 * time.Millisecond)
	stop()
	lookups(3 * time.Second) // three refreshes with Redis gone
	if st, _ := m.Status("acme", "p0"); st.StoreError == "" {
		t.Error("no StoreError while Redis was down")
	}
	restart()
	// Snapshots resume: the next refresh commits under a lease, which
	// publishes a note on the fleet's channel.
	sub := c.Subscribe(ctx, redisstore.DefaultPrefix+"events")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		lookups(500 * time.Millisecond)
	}()
	select {
	case <-sub.Channel():
	case <-time.After(40 * time.Second):
		t.Fatal("no snapshot committed within 40s of Redis returning")
	}
	<-done
	if failures.Load() != 0 {
		t.Fatalf("%d lookups failed during the outage", failures.Load())
	}
}

// A record written with another HMAC key, or copied from another tenant's
// key, is refused, counted and never served.
func TestRedisForgedAndCopiedRecords(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	idp, keys := realIdP(t, 1, 600)
	ctx := t.Context()
	s, err := redisstore.New(c, redisstore.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	url := idp.URL() + providerPath(0)
	// Whoever writes with another key (here a Manager with its own key)
	// plants a record for "forged".
	otherKey := realOptions(idp, s)
	otherKey.StoreKeys = [][]byte{[]byte("attacker-key-attacker-key-attack")}
	writer := newReal(t, otherKey)
	good := newReal(t, realOptions(idp, s))
	for _, w := range []struct {
		m      *jwkscache.Manager
		tenant string
	}{{writer, "forged"}, {good, "other"}} {
		if err := w.m.Register(ctx, jwkscache.Registration{TenantID: w.tenant, ProviderID: "p", JWKSURL: url}); err != nil {
			t.Fatal(err)
		}
		if _, err := w.m.Key(ctx, w.tenant, "p", keys[0].KID); err != nil {
			t.Fatal(err)
		}
		if err := w.m.Close(); err != nil { // flushes the writes
			t.Fatal(err)
		}
	}
	// A good record of tenant "other" copied under tenant "copied".
	rec, err := s.LoadSnapshot(ctx, "other", "p")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SaveSnapshot(ctx, "copied", "p", rec, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}

	idp.Close() // only the store could answer now
	victim := newReal(t, realOptions(idp, s))
	for _, tenant := range []string{"forged", "copied"} {
		if err := victim.Register(ctx, jwkscache.Registration{TenantID: tenant, ProviderID: "p", JWKSURL: url}); err != nil {
			t.Fatal(err)
		}
		if _, err := victim.Key(ctx, tenant, "p", keys[0].KID); !errors.Is(err, jwkscache.ErrNoKeys) {
			t.Fatalf("%s: a refused record was served: %v", tenant, err)
		}
		if st, _ := victim.Status(tenant, "p"); st.StoreRefused != 1 {
			t.Fatalf("%s: StoreRefused = %d, want 1", tenant, st.StoreRefused)
		}
	}
	// The record of "other" itself is good.
	if err := victim.Register(ctx, jwkscache.Registration{TenantID: "other", ProviderID: "p", JWKSURL: url}); err != nil {
		t.Fatal(err)
	}
	if _, err := victim.Key(ctx, "other", "p", keys[0].KID); err != nil {
		t.Fatalf("the genuine record: %v", err)
	}
}

// cmdCounter counts the round trips a Redis client makes: each command
// sent alone, and each pipeline, is one.
type cmdCounter struct{ n atomic.Int64 }

func (c *cmdCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *cmdCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}
func (c *cmdCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmds)
	}
}

// BenchmarkFleetRefresh measures one scheduled refresh of a fleet
// instance: "holder" takes the lease, fetches and commits; "adopter" finds
// a newer snapshot another instance committed and adopts it instead of
// fetching. roundtrips/refresh counts the Redis round trips (commands and
// pipelines) each makes, the lease release after an adoption included.
func BenchmarkFleetRefresh(b *testing.B) {
	c := redistest.Client(b)
	prefix := redistest.Prefix(b, c)
	addr := redistest.Addr(b)
	idp := jwkscachetest.NewEmpty()
	if err := idp.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(idp.Close)
	idp.KeySet("/p").Set(jwkscachetest.NewKey("ES256", "k"))
	instance := func() (*jwkscache.Manager, *cmdCounter) {
		rc := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
		b.Cleanup(func() { _ = rc.Close() })
		count := new(cmdCounter)
		rc.AddHook(count)
		s, err := redisstore.New(rc, redisstore.WithPrefix(prefix))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = s.Close() })
		m, err := jwkscache.New(realOptions(idp, s))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = m.Close() })
		if err := m.Register(b.Context(), jwkscache.Registration{TenantID: "t", ProviderID: "p", JWKSURL: idp.URL() + "/p"}); err != nil {
			b.Fatal(err)
		}
		if _, err := m.Key(b.Context(), "t", "p", "k"); err != nil {
			b.Fatal(err)
		}
		return m, count
	}
	a, countA := instance()
	o, countO := instance()
	// quiet waits until the commits and releases queued on the store
	// goroutines have run, so they are counted with their refresh.
	quiet := func(c *cmdCounter) int64 {
		for last := c.n.Load(); ; {
			t := time.NewTimer(20 * time.Millisecond)
			<-t.C
			if n := c.n.Load(); n == last {
				return n
			} else {
				last = n
			}
		}
	}
	b.Run("holder", func(b *testing.B) {
		before := quiet(countA)
		for b.Loop() {
			if err := a.RefreshScheduledForTest("t", "p"); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(quiet(countA)-before)/float64(b.N), "roundtrips/refresh")
	})
	b.Run("adopter", func(b *testing.B) {
		var trips int64
		for b.Loop() {
			b.StopTimer()
			if err := a.RefreshScheduledForTest("t", "p"); err != nil { // another instance commits
				b.Fatal(err)
			}
			quiet(countA)
			before := quiet(countO)
			b.StartTimer()
			if err := o.RefreshScheduledForTest("t", "p"); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			trips += quiet(countO) - before
			b.StartTimer()
		}
		b.ReportMetric(float64(trips)/float64(b.N), "roundtrips/refresh")
	})
}

package redisstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/internal/redistest"
	"github.com/jwkscache/jwkscache/store/redisstore"
	"github.com/jwkscache/jwkscache/store/storetest"
)

// newStore returns a Store on c under prefix, closed when the test ends.
func newStore(t testing.TB, c redis.UniversalClient, prefix string) *redisstore.Store {
	t.Helper()
	s, err := redisstore.New(c, redisstore.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// fleetOpener returns a storetest.RunFleet open function: each call makes
// a Store on a new client from newClient (as separate instances would
// have), under one prefix per subtest, so that the Stores of one subtest
// form one fleet.
func fleetOpener(newClient func(t testing.TB) redis.UniversalClient) func(t *testing.T) jwkscache.FleetStore {
	var mu sync.Mutex
	prefixes := map[*testing.T]string{}
	return func(t *testing.T) jwkscache.FleetStore {
		c := newClient(t)
		mu.Lock()
		p, ok := prefixes[t]
		if !ok {
			p = redistest.Prefix(t, c)
			prefixes[t] = p
		}
		mu.Unlock()
		return newStore(t, c, p)
	}
}

func TestConformance(t *testing.T) {
	c := redistest.Client(t)
	storetest.Run(t, func(t *testing.T) jwkscache.Store {
		return newStore(t, c, redistest.Prefix(t, c))
	})
}

func TestFleetConformance(t *testing.T) {
	redistest.Client(t) // skips without JWKSCACHE_REDIS_ADDR
	storetest.RunFleet(t, fleetOpener(func(t testing.TB) redis.UniversalClient { return redistest.Client(t) }))
}

// TestCluster runs the conformance suites and the cluster-specific tests
// against a private three-node Redis Cluster.
func TestCluster(t *testing.T) {
	addrs := redistest.StartCluster(t)
	newClient := func(t testing.TB) redis.UniversalClient { return redistest.ClusterClient(t, addrs) }
	c := redistest.ClusterClient(t, addrs)
	ctx := context.Background()

	t.Run("Conformance", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) jwkscache.Store {
			return newStore(t, c, redistest.Prefix(t, c))
		})
	})
	t.Run("FleetConformance", func(t *testing.T) {
		storetest.RunFleet(t, fleetOpener(newClient))
	})

	t.Run("KeysOfAPairShareASlot", func(t *testing.T) {
		s := newStore(t, c, redistest.Prefix(t, c))
		slots := map[int64]bool{}
		for i, pr := range trickyPairs {
			snap, reg, lease := redisstore.Keys(s, pr[0], pr[1])
			var got []int64
			for _, k := range []string{snap, reg, lease} {
				slot, err := c.ClusterKeySlot(ctx, k).Result()
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, slot)
			}
			if got[0] != got[1] || got[1] != got[2] {
				t.Fatalf("pair %d: CLUSTER KEYSLOT of its keys = %v, want one slot", i, got)
			}
			slots[got[0]] = true

			// The keys are where the Store writes: all three exist after
			// a save, a registration and a lease, on one node.
			if err := s.SaveSnapshot(ctx, pr[0], pr[1], []byte("s"), time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			if err := s.SaveRegistration(ctx, pr[0], pr[1], []byte("r")); err != nil {
				t.Fatal(err)
			}
			l, _, err := s.TryLease(ctx, pr[0], pr[1], time.Minute)
			if err != nil || l == nil {
				t.Fatalf("TryLease = %v, %v", l, err)
			}
			if n, err := c.Exists(ctx, snap).Result(); err != nil || n != 1 {
				t.Fatalf("snapshot key %q: EXISTS = %d, %v", snap, n, err)
			}
			if n, err := c.Exists(ctx, reg).Result(); err != nil || n != 1 {
				t.Fatalf("registration key %q: EXISTS = %d, %v", reg, n, err)
			}
			if n, err := c.Exists(ctx, lease).Result(); err != nil || n != 1 {
				t.Fatalf("lease key %q: EXISTS = %d, %v", lease, n, err)
			}
			if err := l.Commit(ctx, []byte("s2"), time.Now().Add(time.Hour), []byte("n")); err != nil {
				t.Fatal(err)
			}
			if err := s.Delete(ctx, pr[0], pr[1]); err != nil {
				t.Fatal(err)
			}
		}
		if len(slots) < len(trickyPairs)/2 {
			t.Fatalf("%d pairs use only %d slots: the tags do not spread", len(trickyPairs), len(slots))
		}
	})

	t.Run("LoadRegistrationsScansEveryMaster", func(t *testing.T) {
		s := newStore(t, c, redistest.Prefix(t, c))
		masters := map[string]bool{}
		const n = 60
		for i := range n {
			tenant := fmt.Sprintf("tenant-%d", i)
			if err := s.SaveRegistration(ctx, tenant, "p", []byte(tenant)); err != nil {
				t.Fatal(err)
			}
			_, reg, _ := redisstore.Keys(s, tenant, "p")
			node, err := c.MasterForKey(ctx, reg)
			if err != nil {
				t.Fatal(err)
			}
			masters[node.Options().Addr] = true
		}
		if len(masters) != 3 {
			t.Fatalf("%d registrations landed on %d masters, want 3", n, len(masters))
		}
		regs, err := s.LoadRegistrations(ctx)
		if err != nil || len(regs) != n {
			t.Fatalf("LoadRegistrations = %d records, %v; want %d", len(regs), err, n)
		}
	})

	t.Run("NotesReachSubscribersOfEveryNode", func(t *testing.T) {
		prefix := redistest.Prefix(t, c)
		pub := newStore(t, c, prefix)
		// Subscribers through clients seeded with each node: go-redis
		// picks the channel's slot master, so also subscribe through
		// plain clients of every node to cover all three.
		got := make(chan string, 16)
		for _, a := range addrs {
			nc := redis.NewClient(&redis.Options{Addr: a, ContextTimeoutEnabled: true})
			t.Cleanup(func() { _ = nc.Close() })
			sub := newStore(t, nc, prefix)
			if err := sub.Subscribe(t.Context(), func(tenant, provider string, note []byte) {
				got <- a + " " + string(note)
			}); err != nil {
				t.Fatal(err)
			}
		}
		// Publish from pairs whose keys live on each master.
		for i := range 12 {
			l, _, err := pub.TryLease(ctx, fmt.Sprintf("t%d", i), "p", time.Minute)
			if err != nil || l == nil {
				t.Fatalf("TryLease = %v, %v", l, err)
			}
			if err := l.Commit(ctx, []byte("r"), time.Now().Add(time.Hour), []byte(fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
		count := map[string]int{}
		for range 3 * 12 {
			select {
			case m := <-got:
				count[m]++
			case <-time.After(10 * time.Second):
				t.Fatalf("notes received within 10s: %v", count)
			}
		}
		for _, a := range addrs {
			for i := range 12 {
				if count[fmt.Sprintf("%s %d", a, i)] != 1 {
					t.Fatalf("subscriber of %s: note %d received %d times", a, i, count[fmt.Sprintf("%s %d", a, i)])
				}
			}
		}
	})

	t.Run("CommitIsOneRoundTrip", func(t *testing.T) {
		cc := redistest.ClusterClient(t, addrs)
		h := &countHook{}
		cc.AddHook(h)
		s := newStore(t, cc, redistest.Prefix(t, cc))
		checkRoundTrips(t, s, h)
	})
}

// trickyPairs are pairs whose naive concatenations collide, or that
// carry Redis Cluster hash-tag braces.
var trickyPairs = [][2]string{
	{"a", "b:c"}, {"a:b", "c"}, {"{a}", "b"}, {"a", "{b}"}, {"{a", "}b"}, {"a}", "{b"}, {"a{b}", "c"},
	{"a", "b\x00c"}, {"a\x00b", "c"}, {"", "ab"}, {"ab", ""}, {strings.Repeat("x", 4096), "p"}, {"é", "ü"},
}

// countHook records the commands a client sends, and its pipelines,
// leaving out those that set up a new connection (HELLO, CLIENT SETINFO):
// a dial is a cost of the pool, not of the operation.
type countHook struct {
	mu        sync.Mutex
	cmds      []string
	pipelines int
}

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !isConnSetup(cmd) {
			h.mu.Lock()
			h.cmds = append(h.cmds, cmd.Name())
			h.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}

func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !slices.ContainsFunc(cmds, func(c redis.Cmder) bool { return !isConnSetup(c) }) {
			return next(ctx, cmds)
		}
		h.mu.Lock()
		h.pipelines++
		for _, c := range cmds {
			h.cmds = append(h.cmds, "pipelined "+c.Name())
		}
		h.mu.Unlock()
		return next(ctx, cmds)
	}
}

func isConnSetup(cmd redis.Cmder) bool {
	switch cmd.Name() {
	case "hello", "client", "auth", "select", "readonly":
		return true
	}
	return false
}

// take returns the commands and pipelines recorded since the last take.
func (h *countHook) take() (cmds []string, pipelines int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cmds, pipelines = h.cmds, h.pipelines
	h.cmds, h.pipelines = nil, 0
	return cmds, pipelines
}

// checkRoundTrips checks the commands each operation sends (the scripts
// of Release and Commit already in the server's cache).
func checkRoundTrips(t *testing.T, s *redisstore.Store, h *countHook) {
	t.Helper()
	ctx := context.Background()
	future := time.Now().Add(time.Hour)
	// Warm up: the scripts into the cache, the connections dialled.
	if l, _, err := s.TryLease(ctx, "warm", "up", time.Minute); err != nil || l == nil {
		t.Fatalf("TryLease = %v, %v", l, err)
	} else if err := l.Commit(ctx, []byte("x"), future, []byte("n")); err != nil {
		t.Fatal(err)
	}
	if l, _, _ := s.TryLease(ctx, "warm", "up", time.Minute); l != nil {
		_ = l.Release(ctx)
	}
	h.take()

	expect := func(what string, want ...string) {
		t.Helper()
		cmds, pipelines := h.take()
		if pipelines != 0 || !slices.Equal(cmds, want) {
			t.Fatalf("%s sent %q (and %d pipelines), want %q", what, cmds, pipelines, want)
		}
	}
	// TryLease: one pipeline (one round trip) of SET NX and GET.
	expectPipeline := func(what string) {
		t.Helper()
		cmds, pipelines := h.take()
		if want := []string{"pipelined set", "pipelined get"}; pipelines != 1 || !slices.Equal(cmds, want) {
			t.Fatalf("%s sent %q in %d pipelines, want %q in one", what, cmds, pipelines, want)
		}
	}
	l, _, err := s.TryLease(ctx, "t", "p", time.Minute)
	if err != nil || l == nil {
		t.Fatalf("TryLease = %v, %v", l, err)
	}
	expectPipeline("TryLease")
	if l2, _, err := s.TryLease(ctx, "t", "p", time.Minute); err != nil || l2 != nil {
		t.Fatalf("TryLease while held = %v, %v", l2, err)
	}
	expectPipeline("TryLease while held")
	if err := l.Commit(ctx, []byte("rec"), future, []byte("note")); err != nil {
		t.Fatal(err)
	}
	expect("Commit", "evalsha")
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	expect("Release (already released)", "evalsha")
	if _, err := s.LoadSnapshot(ctx, "t", "p"); err != nil {
		t.Fatal(err)
	}
	expect("LoadSnapshot", "get")
	if err := s.SaveSnapshot(ctx, "t", "p", []byte("rec"), future); err != nil {
		t.Fatal(err)
	}
	expect("SaveSnapshot", "set")
	if err := s.SaveSnapshot(ctx, "t", "p", []byte("rec"), time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	expect("SaveSnapshot of an expired record", "del")
	if err := s.SaveRegistration(ctx, "t", "p", []byte("reg")); err != nil {
		t.Fatal(err)
	}
	expect("SaveRegistration", "set")
	if err := s.Delete(ctx, "t", "p"); err != nil {
		t.Fatal(err)
	}
	expect("Delete", "del")
}

func TestRoundTrips(t *testing.T) {
	c := redistest.Client(t).(*redis.Client)
	h := &countHook{}
	c.AddHook(h)
	s := newStore(t, c, redistest.Prefix(t, c))
	checkRoundTrips(t, s, h)
}

// TestRoundTripsOnAPrivateServer checks what depends on the server's
// whole state: a script cache flush, and the SCAN of a small keyspace.
func TestRoundTripsOnAPrivateServer(t *testing.T) {
	addr, _, _ := redistest.StartServer(t)
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	defer c.Close()
	h := &countHook{}
	c.AddHook(h)
	s := newStore(t, c, "jwkscachetest:")
	ctx := context.Background()

	if err := c.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	l, _, err := s.TryLease(ctx, "t", "p", time.Minute)
	if err != nil || l == nil {
		t.Fatalf("TryLease = %v, %v", l, err)
	}
	h.take()
	if err := l.Commit(ctx, []byte("rec"), time.Now().Add(time.Hour), []byte("n")); err != nil {
		t.Fatal(err)
	}
	if cmds, p := h.take(); p != 0 || !slices.Equal(cmds, []string{"evalsha", "eval"}) {
		t.Fatalf("Commit after SCRIPT FLUSH sent %q, %d pipelines; want evalsha (NOSCRIPT) then eval", cmds, p)
	}

	for i := range 5 {
		if err := s.SaveRegistration(ctx, fmt.Sprint(i), "p", []byte("reg")); err != nil {
			t.Fatal(err)
		}
	}
	h.take()
	regs, err := s.LoadRegistrations(ctx)
	if err != nil || len(regs) != 5 {
		t.Fatalf("LoadRegistrations = %d, %v", len(regs), err)
	}
	want := []string{"scan", "pipelined get", "pipelined get", "pipelined get", "pipelined get", "pipelined get"}
	if cmds, p := h.take(); p != 1 || !slices.Equal(cmds, want) {
		t.Fatalf("LoadRegistrations sent %q in %d pipelines; want %q, one pipeline", cmds, p, want)
	}
}

func TestSnapshotTTLIsTheRemainingLife(t *testing.T) {
	c := redistest.Client(t)
	s := newStore(t, c, redistest.Prefix(t, c))
	ctx := context.Background()
	snap, _, _ := redisstore.Keys(s, "t", "p")
	const life = time.Hour

	check := func(what string, save func(expireAt time.Time) error) {
		t.Helper()
		start := time.Now()
		if err := save(start.Add(life)); err != nil {
			t.Fatal(err)
		}
		pttl, err := c.PTTL(ctx, snap).Result()
		if err != nil {
			t.Fatal(err)
		}
		// Between the life left when the call ended (rounded up to a
		// millisecond) and the whole life.
		if lo := life - time.Since(start) - time.Millisecond; pttl < lo || pttl > life+time.Millisecond {
			t.Fatalf("%s: PTTL = %v, want within [%v, %v]", what, pttl, lo, life)
		}
	}
	check("SaveSnapshot", func(at time.Time) error { return s.SaveSnapshot(ctx, "t", "p", []byte("r"), at) })
	check("Commit", func(at time.Time) error {
		l, _, err := s.TryLease(ctx, "t", "p", time.Minute)
		if err != nil || l == nil {
			return fmt.Errorf("TryLease = %v, %v", l, err)
		}
		return l.Commit(ctx, []byte("r"), at, []byte("n"))
	})

	// An expireAt in the past deletes the record, by SaveSnapshot and by
	// Commit alike; the registration has no expiry.
	if err := s.SaveSnapshot(ctx, "t", "p", []byte("old"), time.Now().Add(-time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.Exists(ctx, snap).Result(); n != 0 {
		t.Fatal("SaveSnapshot of an expired record left the key")
	}
	if err := s.SaveSnapshot(ctx, "t", "p", []byte("r"), time.Now().Add(life)); err != nil {
		t.Fatal(err)
	}
	l, _, err := s.TryLease(ctx, "t", "p", time.Minute)
	if err != nil || l == nil {
		t.Fatalf("TryLease = %v, %v", l, err)
	}
	if err := l.Commit(ctx, []byte("old"), time.Now().Add(-time.Millisecond), []byte("n")); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.Exists(ctx, snap).Result(); n != 0 {
		t.Fatal("Commit of an expired record left the key")
	}
	if err := s.SaveRegistration(ctx, "t", "p", []byte("reg")); err != nil {
		t.Fatal(err)
	}
	_, reg, _ := redisstore.Keys(s, "t", "p")
	if pttl, err := c.PTTL(ctx, reg).Result(); err != nil || pttl != -1 {
		t.Fatalf("registration PTTL = %v, %v; want none (-1)", pttl, err)
	}
}

func TestLeaseTTL(t *testing.T) {
	c := redistest.Client(t)
	s := newStore(t, c, redistest.Prefix(t, c))
	ctx := context.Background()
	_, _, leaseKey := redisstore.Keys(s, "t", "p")
	l, _, err := s.TryLease(ctx, "t", "p", 1500*time.Microsecond) // rounded up to 2ms
	if err != nil || l == nil {
		t.Fatalf("TryLease = %v, %v", l, err)
	}
	_ = l.Release(ctx)
	start := time.Now()
	if l, _, err = s.TryLease(ctx, "t", "p", 90*time.Second); err != nil || l == nil {
		t.Fatalf("TryLease = %v, %v", l, err)
	}
	pttl, err := c.PTTL(ctx, leaseKey).Result()
	if err != nil || pttl > 90*time.Second || pttl < 90*time.Second-time.Since(start)-time.Millisecond {
		t.Fatalf("lease PTTL = %v, %v; want about 90s", pttl, err)
	}
	for _, ttl := range []time.Duration{0, -time.Second} {
		if l, _, err := s.TryLease(ctx, "t", "q", ttl); err == nil || l != nil {
			t.Fatalf("TryLease with ttl %v = %v, %v; want an error", ttl, l, err)
		}
	}
}

func TestCommitAfterTheLeaseLapsedSavesAndPublishes(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	a, b := newStore(t, c, prefix), newStore(t, c, prefix)
	ctx := context.Background()
	_, _, leaseKey := redisstore.Keys(a, "t", "p")
	notes := make(chan string, 4)
	if err := b.Subscribe(t.Context(), func(_, _ string, n []byte) { notes <- string(n) }); err != nil {
		t.Fatal(err)
	}
	la, _, err := a.TryLease(ctx, "t", "p", time.Minute)
	if err != nil || la == nil {
		t.Fatalf("TryLease = %v, %v", la, err)
	}
	// The lease lapses (deleted here rather than waited for), and b takes it.
	if err := c.Del(ctx, leaseKey).Err(); err != nil {
		t.Fatal(err)
	}
	lb, _, err := b.TryLease(ctx, "t", "p", time.Minute)
	if err != nil || lb == nil {
		t.Fatalf("TryLease = %v, %v", lb, err)
	}
	if err := la.Commit(ctx, []byte("from a"), time.Now().Add(time.Hour), []byte("note a")); err != nil {
		t.Fatalf("Commit of a lapsed lease: %v, want nil", err)
	}
	if got, err := b.LoadSnapshot(ctx, "t", "p"); err != nil || string(got) != "from a" {
		t.Fatalf("LoadSnapshot = %q, %v; want the lapsed holder's record", got, err)
	}
	if n := <-notes; n != "note a" {
		t.Fatalf("note = %q", n)
	}
	if st := a.Stats(); st.LeasesLapsed != 1 {
		t.Fatalf("Stats.LeasesLapsed = %d, want 1", st.LeasesLapsed)
	}
	if held, err := c.Get(ctx, leaseKey).Result(); err != nil || held == "" {
		t.Fatalf("b's lease after a's Commit: %q, %v; want still held", held, err)
	}
	if err := lb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.Exists(ctx, leaseKey).Result(); n != 0 {
		t.Fatal("Release left the lease key")
	}
}

// TestPrefixScopesEverything: Stores with different prefixes on one Redis
// share no record, lease or note, even with prefixes that extend each
// other or hold glob characters.
func TestPrefixScopesEverything(t *testing.T) {
	c := redistest.Client(t)
	base := redistest.Prefix(t, c)
	ctx := context.Background()
	prefixes := []string{base, base + "r:", base + "s:", base + "a*:", base + "a?:", base + "ab:", base + "[ab]:", base + `\:`}
	var stores []*redisstore.Store
	notes := make([]chan string, len(prefixes))
	for i, p := range prefixes {
		s := newStore(t, c, p)
		stores = append(stores, s)
		notes[i] = make(chan string, 16)
		if err := s.Subscribe(t.Context(), func(tenant, provider string, n []byte) { notes[i] <- string(n) }); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range stores {
		if err := s.SaveSnapshot(ctx, "t", "p", []byte(fmt.Sprint("snap", i)), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if err := s.SaveRegistration(ctx, "t", "p", []byte(fmt.Sprint("reg", i))); err != nil {
			t.Fatal(err)
		}
	}
	var leases []jwkscache.Lease
	for i, s := range stores {
		got, err := s.LoadSnapshot(ctx, "t", "p")
		if err != nil || string(got) != fmt.Sprint("snap", i) {
			t.Fatalf("prefix %q: LoadSnapshot = %q, %v", prefixes[i], got, err)
		}
		regs, err := s.LoadRegistrations(ctx)
		if err != nil || len(regs) != 1 || string(regs[0]) != fmt.Sprint("reg", i) {
			t.Fatalf("prefix %q: LoadRegistrations = %q, %v; want only its own", prefixes[i], regs, err)
		}
		l, _, err := s.TryLease(ctx, "t", "p", time.Minute)
		if err != nil || l == nil {
			t.Fatalf("prefix %q: TryLease = %v, %v: another prefix's lease blocks it", prefixes[i], l, err)
		}
		leases = append(leases, l)
	}
	// Each store commits in turn; a subscriber's first note is its own
	// store's (Redis delivers one connection's messages in order, so a
	// note of an earlier prefix would come first).
	for i, l := range leases {
		if err := l.Commit(ctx, []byte("x"), time.Now().Add(time.Hour), []byte(fmt.Sprint("note", i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range stores {
		select {
		case n := <-notes[i]:
			if n != fmt.Sprint("note", i) {
				t.Fatalf("prefix %q: first note = %q, want note%d", prefixes[i], n, i)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("prefix %q: no note within 10s", prefixes[i])
		}
	}
	// Delete under one prefix leaves the others.
	if err := stores[0].Delete(ctx, "t", "p"); err != nil {
		t.Fatal(err)
	}
	if _, err := stores[0].LoadSnapshot(ctx, "t", "p"); !errors.Is(err, jwkscache.ErrStoreNotFound) {
		t.Fatalf("LoadSnapshot after Delete: %v", err)
	}
	for _, s := range stores[1:] {
		if got, err := s.LoadSnapshot(ctx, "t", "p"); err != nil || string(got) != "x" {
			t.Fatalf("after a Delete under another prefix: LoadSnapshot = %q, %v", got, err)
		}
		if regs, err := s.LoadRegistrations(ctx); err != nil || len(regs) != 1 {
			t.Fatalf("after a Delete under another prefix: LoadRegistrations = %q, %v", regs, err)
		}
	}
}

// verifyNoLeaks fails the test if goroutines other than those of opts
// are still running after a generous wait.
func verifyNoLeaks(t *testing.T, opts ...goleak.Option) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := goleak.Find(opts...) // retries for a while by itself
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
}

func TestSubscribeGoroutinesExitOnCancel(t *testing.T) {
	c := redistest.Client(t)
	s := newStore(t, c, redistest.Prefix(t, c))
	ctx := context.Background()
	before := goleak.IgnoreCurrent()

	sctx, cancel := context.WithCancel(ctx)
	got := make(chan string, 4)
	if err := s.Subscribe(sctx, func(_, _ string, n []byte) { got <- string(n) }); err != nil {
		t.Fatal(err)
	}
	commit(t, s, "before")
	if n := <-got; n != "before" {
		t.Fatalf("note = %q", n)
	}
	cancel()
	redisstore.WaitSubscriptions(s) // the Store's goroutine, and with it go-redis's receiver
	verifyNoLeaks(t, before)
	commit(t, s, "after") // no one to deliver to; no panic, no leak
	if len(got) != 0 {
		t.Fatalf("a note after cancel was delivered: %q", <-got)
	}
}

func TestSubscribeGoroutinesExitOnClose(t *testing.T) {
	c := redistest.Client(t)
	s := newStore(t, c, redistest.Prefix(t, c))
	before := goleak.IgnoreCurrent()
	for range 3 {
		if err := s.Subscribe(context.Background(), func(string, string, []byte) {}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil { // waits for the Store's goroutines
		t.Fatal(err)
	}
	verifyNoLeaks(t, before)
	if err := s.Subscribe(context.Background(), func(string, string, []byte) {}); !errors.Is(err, redisstore.ErrClosed) {
		t.Fatalf("Subscribe after Close = %v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	// The client is the caller's: still open.
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("Close closed the client: %v", err)
	}
}

func commit(t *testing.T, s *redisstore.Store, note string) {
	t.Helper()
	ctx := context.Background()
	l, _, err := s.TryLease(ctx, "t", "p", time.Minute)
	if err != nil || l == nil {
		t.Fatalf("TryLease = %v, %v", l, err)
	}
	if err := l.Commit(ctx, []byte("rec"), time.Now().Add(time.Hour), []byte(note)); err != nil {
		t.Fatal(err)
	}
}

func TestSubscribeIgnoresMalformedMessages(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	s := newStore(t, c, prefix)
	ctx := context.Background()
	type note struct{ tenant, provider, note string }
	got := make(chan note, 16)
	if err := s.Subscribe(t.Context(), func(tenant, provider string, n []byte) { got <- note{tenant, provider, string(n)} }); err != nil {
		t.Fatal(err)
	}
	bad := []string{
		"", "garbage", "\x00", "\x02\x01a\x01b", "\x01", "\x01\x05ab", "\x01\x80\x00", "\x01\x01a\x09b",
		"\x01\xff\xff\xff\xff", string(redisstore.Frame("t", "p", bytes.Repeat([]byte("n"), redisstore.MaxMessageSize))),
	}
	for _, m := range bad {
		if err := c.Publish(ctx, prefix+"events", m).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// A well-formed note published by hand, with IDs a naive encoding
	// would get wrong, then one by Commit: they arrive after every bad
	// message (one connection's messages stay in order).
	if err := c.Publish(ctx, prefix+"events", redisstore.Frame("a\x00{b}", ":c\n", []byte("\x00hand"))).Err(); err != nil {
		t.Fatal(err)
	}
	commit(t, s, "commit")
	for _, want := range []note{{"a\x00{b}", ":c\n", "\x00hand"}, {"t", "p", "commit"}} {
		select {
		case n := <-got:
			if n != want {
				t.Fatalf("delivered %q, want %q", n, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no note within 10s")
		}
	}
	st := s.Stats()
	if st.MessagesIgnored != uint64(len(bad)) || st.MessagesDelivered != 2 {
		t.Fatalf("Stats = %+v; want %d ignored, 2 delivered", st, len(bad))
	}
}

// TestSubscriptionSurvivesARestart: after the server restarts, go-redis
// subscribes again by itself and notes flow again.
func TestSubscriptionSurvivesARestart(t *testing.T) {
	addr, stop, restart := redistest.StartServer(t)
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	defer c.Close()
	s, err := redisstore.New(c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	resubscribed := make(chan struct{}, 8)
	redisstore.SetSubscribedHook(s, func() { resubscribed <- struct{}{} })
	got := make(chan string, 8)
	if err := s.Subscribe(t.Context(), func(_, _ string, n []byte) { got <- string(n) }); err != nil {
		t.Fatal(err)
	}
	commit(t, s, "one")
	if n := <-got; n != "one" {
		t.Fatalf("note = %q", n)
	}
	stop()
	restart()
	select {
	case <-resubscribed:
	case <-time.After(30 * time.Second):
		t.Fatal("not subscribed again within 30s of the restart")
	}
	commit(t, s, "two") // the script cache is empty: EVALSHA, then EVAL
	select {
	case n := <-got:
		if n != "two" {
			t.Fatalf("note = %q", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no note within 10s after the resubscription")
	}
	if st := s.Stats(); st.Resubscriptions < 1 {
		t.Fatalf("Stats.Resubscriptions = %d", st.Resubscriptions)
	}
}

func TestSubscribeFailures(t *testing.T) {
	s, err := redisstore.New(redisstore.DeadClient(t))
	if err != nil {
		t.Fatal(err)
	}
	before := goleak.IgnoreCurrent()
	if err := s.Subscribe(context.Background(), func(string, string, []byte) {}); err == nil {
		t.Fatal("Subscribe with no server answering succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Subscribe(ctx, func(string, string, []byte) {}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe with a cancelled context = %v", err)
	}
	if err := s.Subscribe(context.Background(), nil); err == nil {
		t.Fatal("Subscribe(nil fn) succeeded")
	}
	_ = s.Close()
	verifyNoLeaks(t, before)
}

func TestValuesCarryTheirPair(t *testing.T) {
	c := redistest.Client(t)
	s := newStore(t, c, redistest.Prefix(t, c))
	ctx := context.Background()
	snapP, regP, _ := redisstore.Keys(s, "t", "p")
	snapQ, regQ, _ := redisstore.Keys(s, "t", "q")

	// Pair p's record under pair q's keys (what a hash collision, or a
	// writer of the Redis, would do): q has no record, and p's is not
	// listed twice.
	if err := s.SaveSnapshot(ctx, "t", "p", []byte("p-snap"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveRegistration(ctx, "t", "p", []byte("p-reg")); err != nil {
		t.Fatal(err)
	}
	if err := c.Copy(ctx, snapP, snapQ, 0, false).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Copy(ctx, regP, regQ, 0, false).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := s.LoadSnapshot(ctx, "t", "q"); !errors.Is(err, jwkscache.ErrStoreNotFound) {
		t.Fatalf("LoadSnapshot of q with p's record under its key = %q, %v; want ErrStoreNotFound", got, err)
	}
	regs, err := s.LoadRegistrations(ctx)
	if err != nil || len(regs) != 1 || string(regs[0]) != "p-reg" {
		t.Fatalf("LoadRegistrations = %q, %v; want only p's", regs, err)
	}

	// Values that are no records at all: an error naming no bytes of
	// them, and skipped by LoadRegistrations.
	if err := c.Set(ctx, snapQ, "SECRET-BYTES", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, regQ, "SECRET-BYTES", 0).Err(); err != nil {
		t.Fatal(err)
	}
	_, err = s.LoadSnapshot(ctx, "t", "q")
	if err == nil || errors.Is(err, jwkscache.ErrStoreNotFound) || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("LoadSnapshot of a malformed value: err = %v", err)
	}
	if regs, err := s.LoadRegistrations(ctx); err != nil || len(regs) != 1 {
		t.Fatalf("LoadRegistrations with a malformed value = %q, %v", regs, err)
	}
	if st := s.Stats(); st.RecordsMalformed != 3 {
		t.Fatalf("Stats.RecordsMalformed = %d, want 3 (the foreign registration, the bad snapshot, the bad registration)", st.RecordsMalformed)
	}
}

func TestNew(t *testing.T) {
	c := redisstore.DeadClient(t)
	if s, err := redisstore.New(c); err != nil || s.Prefix() != redisstore.DefaultPrefix {
		t.Fatalf("New = %v, %v", s, err)
	}
	if _, err := redisstore.New(nil); err == nil {
		t.Fatal("New(nil) succeeded")
	}
	if _, err := redisstore.New((*redis.Client)(nil)); err == nil {
		t.Fatal("New of a nil *redis.Client succeeded")
	}
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}})
	defer ring.Close()
	if _, err := redisstore.New(ring); err == nil {
		t.Fatal("New of a Ring succeeded")
	}
	for _, p := range []string{"", "a{b}", "a b", "a\x00", strings.Repeat("p", 257)} {
		if _, err := redisstore.New(c, redisstore.WithPrefix(p)); err == nil {
			t.Fatalf("New with prefix %q succeeded", p)
		}
	}
}

// TestBoundsAndErrors: oversized input fails before any I/O; errors name
// the operation, wrap their cause and carry no record bytes.
func TestBoundsAndErrors(t *testing.T) {
	s, err := redisstore.New(redisstore.DeadClient(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	future := time.Now().Add(time.Hour)
	big := make([]byte, redisstore.MaxRecordSize+1)
	longID := strings.Repeat("x", redisstore.MaxIDLen+1)
	for what, err := range map[string]error{
		"SaveSnapshot of a big record":     s.SaveSnapshot(ctx, "t", "p", big, future),
		"SaveRegistration of a big record": s.SaveRegistration(ctx, "t", "p", big),
		"SaveSnapshot with a long tenant":  s.SaveSnapshot(ctx, longID, "p", []byte("x"), future),
		"Delete with a long provider":      s.Delete(ctx, "t", longID),
	} {
		if err == nil || !strings.Contains(err.Error(), "more than") && !strings.Contains(err.Error(), "longer than") {
			t.Errorf("%s: err = %v, want a bound's error", what, err)
		}
	}

	// Nothing answers at this client's address.
	secret := []byte("SECRET-RECORD")
	err = s.SaveSnapshot(ctx, "t", "p", secret, future)
	if err == nil || !strings.HasPrefix(err.Error(), "redisstore: SaveSnapshot: ") || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("SaveSnapshot without a server: err = %v", err)
	}
	if _, err := s.LoadSnapshot(ctx, "t", "p"); err == nil || errors.Is(err, jwkscache.ErrStoreNotFound) {
		t.Fatalf("LoadSnapshot without a server: err = %v, want an error that is not ErrStoreNotFound", err)
	}
	if _, err := s.LoadRegistrations(ctx); err == nil {
		t.Fatal("LoadRegistrations without a server succeeded")
	}
	if l, _, err := s.TryLease(ctx, "t", "p", time.Second); err == nil || l != nil {
		t.Fatalf("TryLease without a server = %v, %v", l, err)
	}
}

func TestCommitBounds(t *testing.T) {
	c := redistest.Client(t)
	s := newStore(t, c, redistest.Prefix(t, c))
	ctx := context.Background()
	l, _, err := s.TryLease(ctx, "t", "p", time.Minute)
	if err != nil || l == nil {
		t.Fatalf("TryLease = %v, %v", l, err)
	}
	defer l.Release(ctx)
	if err := l.Commit(ctx, []byte("r"), time.Now().Add(time.Hour), make([]byte, redisstore.MaxMessageSize)); err == nil {
		t.Fatal("Commit of a note over MaxMessageSize succeeded")
	}
	if err := l.Commit(ctx, make([]byte, redisstore.MaxRecordSize+1), time.Now().Add(time.Hour), nil); err == nil {
		t.Fatal("Commit of a record over MaxRecordSize succeeded")
	}
	if _, err := s.LoadSnapshot(ctx, "t", "p"); !errors.Is(err, jwkscache.ErrStoreNotFound) {
		t.Fatalf("a refused Commit saved something: %v", err)
	}
}

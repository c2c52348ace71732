package jwkscache

// Persistence and fleet coordination in the engine, against the in-memory
// store of memstore_test.go inside synctest bubbles: restarts, forged
// records, store outages and fleets of Managers run in virtual time. The
// same behaviour against real bbolt and Redis is tested in
// fleet_redis_test.go.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

// stManager returns a Manager on idp and store, closed at the end of the test.
func stManager(t *testing.T, idp *testidp.IdP, store Store, opts Options) *Manager {
	t.Helper()
	opts.Store = store
	return mtManager(t, idp, opts)
}

func stKey(t *testing.T) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// A restarted Manager serves every provider from the store, with the
// lifetime the keys had left, without calling the IdP; the registration
// made at run time comes back with Restore.
func TestStore_RestartServesFromStoreWithRemainingLifetime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		k1 := testidp.NewKey("ES256", "k1")
		i6Serve(idp, mtPath, 600, k1)
		b := newMemBackend()
		m1 := stManager(t, idp, memStore{b}.plain(), Options{})
		mtLoad(t, m1, mtTenant, mtProvider, mtURL)
		synctest.Wait() // the writer saved registration and snapshot
		want := mtStatus(t, m1, mtTenant, mtProvider)
		if b.snapshot(mtTenant, mtProvider) == nil {
			t.Fatal("no snapshot saved after the first load")
		}
		i6Close(t, m1)
		i6Step(4 * time.Minute) // the keys have 6 minutes left

		m2 := stManager(t, idp, memStore{b}.plain(), Options{})
		n, err := m2.Restore(t.Context())
		if err != nil || n != 1 {
			t.Fatalf("Restore = %d, %v; want 1, nil", n, err)
		}
		before := idp.Requests(mtPath)
		mtMustKey(t, m2, mtTenant, mtProvider, k1)
		if got := idp.Requests(mtPath); got != before {
			t.Fatalf("the restarted Manager called the IdP %d times; want none", got-before)
		}
		st := mtStatus(t, m2, mtTenant, mtProvider)
		if st.Source != "store" || !st.ExpiresAt.Equal(want.ExpiresAt) || !st.LastRefresh.Equal(want.LastRefresh) {
			t.Fatalf("restored: source %q, expires %v, fetched %v; want store, %v, %v (the remaining lifetime, never a fresh TTL)",
				st.Source, st.ExpiresAt, st.LastRefresh, want.ExpiresAt, want.LastRefresh)
		}
		if st.ETag != want.ETag || st.ETag == "" {
			t.Fatalf("restored ETag %q, want %q", st.ETag, want.ETag)
		}
		// The next refresh is the restored keys' own, conditional.
		mtWaitFor(t, 10*time.Minute, 10*time.Second, "a refresh after restore", func() bool {
			return idp.Requests(mtPath) > before
		})
		if h := idp.LastRequest(mtPath).Get("If-None-Match"); h != want.ETag {
			t.Fatalf("the first refresh after restore sent If-None-Match %q, want %q", h, want.ETag)
		}
		if st := mtStatus(t, m2, mtTenant, mtProvider); st.Source != "network" {
			t.Fatalf("after the refresh: source %q, want network", st.Source)
		}
	})
}

// plain returns s as a Store that is not a FleetStore.
func (s memStore) plain() Store { return plainStore{s} }

// With the IdP down, a restart serves the stored keys while they are
// within their stale window, and not after it.
func TestStore_RestartWithIdPDownServesStaleThenWithdraws(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		k1 := testidp.NewKey("ES256", "k1")
		i6Serve(idp, mtPath, 60, k1)
		b := newMemBackend()
		m1 := stManager(t, idp, memStore{b}.plain(), Options{})
		if err := m1.Register(t.Context(), Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: mtURL, StaleWhileError: 10 * time.Minute}); err != nil {
			t.Fatal(err)
		}
		mtMustKey(t, m1, mtTenant, mtProvider, k1)
		synctest.Wait()
		i6Close(t, m1)
		idp.SetFault(mtPath, testidp.Fault{Status: 503})
		i6Step(5 * time.Minute) // expired, within the stale window

		m2 := stManager(t, idp, memStore{b}.plain(), Options{})
		if _, err := m2.Restore(t.Context()); err != nil {
			t.Fatal(err)
		}
		mtMustKey(t, m2, mtTenant, mtProvider, k1)
		if st := mtStatus(t, m2, mtTenant, mtProvider); !st.Stale || st.Source != "store" {
			t.Fatalf("restored expired keys: stale %v, source %q; want stale from the store", st.Stale, st.Source)
		}
		i6Close(t, m2)

		i6Step(10 * time.Minute) // past the stale window
		m3 := stManager(t, idp, memStore{b}.plain(), Options{})
		if _, err := m3.Restore(t.Context()); err != nil {
			t.Fatal(err)
		}
		if _, err := m3.Key(t.Context(), mtTenant, mtProvider, "k1"); !errors.Is(err, ErrNoKeys) {
			t.Fatalf("keys past their stale window were served: err = %v", err)
		}
		if st := mtStatus(t, m3, mtTenant, mtProvider); st.StoreRefused != 0 && st.Source != "" {
			t.Fatalf("status after refusing an old record: %+v", st)
		}
	})
}

// Forged and corrupted records are refused, counted and never served:
// the IdP's keys are fetched instead.
func TestStore_ForgedRecordsRefused(t *testing.T) {
	good := testidp.NewKey("ES256", "good")
	evil := testidp.NewKey("ES256", "evil")
	key, other := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	reg := Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: mtURL}.WithDefaults()
	evilDoc := func() *document {
		idp := testidp.New()
		idp.SetKeys("/x", evil)
		body := idpBody(t, idp, "/x")
		ks, err := parseKeySet(body)
		if err != nil {
			t.Fatal(err)
		}
		return &document{raw: body, hash: sha256Sum(body), keys: ks}
	}()
	now := time.Now()
	snap := func(url string) *snapshot {
		return &snapshot{keys: evilDoc.keys, doc: evilDoc, url: url, fetchedAt: now, expiresAt: now.Add(time.Hour), staleUntil: now.Add(2 * time.Hour)}
	}
	cases := []struct {
		name, reason string
		rec          func() []byte
	}{
		{"wrong MAC", refusedMAC, func() []byte { return encodeSnapshot(reg.key(), snap(mtURL), false, macKeys{other}) }},
		{"no MAC", refusedMAC, func() []byte { return encodeSnapshot(reg.key(), snap(mtURL), false, nil) }},
		{"corrupted", refusedSum, func() []byte {
			b := encodeSnapshot(reg.key(), snap(mtURL), false, macKeys{key})
			b[len(b)/2] ^= 1
			return b
		}},
		{"another tenant's", refusedOwner, func() []byte {
			return encodeSnapshot(providerKey{"other", mtProvider}, snap(mtURL), false, macKeys{key})
		}},
		{"another URL's", refusedSuperseded, func() []byte {
			return encodeSnapshot(reg.key(), snap("https://evil.test/jwks"), false, macKeys{key})
		}},
		{"oversize", refusedSize, func() []byte { return bytes.Repeat([]byte("x"), int(maxSnapshotRecord(&reg))+1) }},
		{"not a record", refusedFormat, func() []byte { return []byte(`{"keys":[]}`) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				idp := testidp.New()
				i6Serve(idp, mtPath, 600, good)
				b := newMemBackend()
				b.putSnapshot(mtTenant, mtProvider, tc.rec())
				m := stManager(t, idp, memStore{b}.plain(), Options{StoreKeys: [][]byte{key}})
				mtRegister(t, m, mtTenant, mtProvider, mtURL)
				if _, err := m.Key(t.Context(), mtTenant, mtProvider, "evil"); err == nil {
					t.Fatal("a key from a refused record was served")
				}
				mtMustKey(t, m, mtTenant, mtProvider, good)
				st := mtStatus(t, m, mtTenant, mtProvider)
				if st.StoreRefused != 1 || st.Source != "network" {
					t.Fatalf("StoreRefused %d, source %q; want 1, network", st.StoreRefused, st.Source)
				}
				if got := m.persist.refusedCount(tc.reason); got != 1 {
					t.Fatalf("refused with reason %q counted %d times, want 1", tc.reason, got)
				}
			})
		})
	}
}

// A store that is down fails no lookup: the Manager serves from memory,
// shows the error, and writes the latest snapshot once the store is back.
func TestStore_OutageDegradesToMemoryAndCatchesUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		k1, k2 := testidp.NewKey("ES256", "k1"), testidp.NewKey("ES256", "k2")
		i6Serve(idp, mtPath, 60, k1)
		b := newMemBackend()
		b.setFail(errMemDown)
		m := stManager(t, idp, memStore{b}.plain(), Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		mtMustKey(t, m, mtTenant, mtProvider, k1)
		st := mtStatus(t, m, mtTenant, mtProvider)
		if !strings.Contains(st.StoreError, "connection refused") || !strings.Contains(st.StoreError, mtProvider) {
			t.Fatalf("StoreError = %q; want the store's failure naming the provider", st.StoreError)
		}
		// A rotation while the store is down.
		i6Serve(idp, mtPath, 60, k2)
		mtMustKey(t, m, mtTenant, mtProvider, k2)
		b.setFail(nil)
		mtWaitFor(t, time.Minute, time.Second, "the writer to catch up", func() bool {
			return b.snapshot(mtTenant, mtProvider) != nil
		})
		r, err := decodeSnapshot(providerKey{mtTenant, mtProvider}, m.providers.get(mtTenant, mtProvider).registration(), urlPolicy{}, b.snapshot(mtTenant, mtProvider), nil)
		if err != nil || !r.keys.has("k2") || r.keys.has("k1") {
			t.Fatalf("the snapshot written after the outage is not the latest: %v", err)
		}
		synctest.Wait()
		if st := mtStatus(t, m, mtTenant, mtProvider); st.StoreError != "" {
			t.Fatalf("StoreError after the store returned = %q", st.StoreError)
		}
	})
}

// A store that hangs costs a cold lookup at most StoreTimeout, warm lookups
// nothing, and Close still returns on time.
func TestStore_HangingStoreIsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ignore := goleak.IgnoreCurrent()
		idp := testidp.New()
		k1 := testidp.NewKey("ES256", "k1")
		i6Serve(idp, mtPath, 60, k1)
		b := newMemBackend()
		hang := make(chan struct{})
		b.setHang(hang)
		m, err := New(Options{HTTPClient: idp.Client(), Store: memStore{b}.plain(), StoreTimeout: 500 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		mtRegister(t, m, mtTenant, mtProvider, mtURL)
		start := time.Now()
		mtMustKey(t, m, mtTenant, mtProvider, k1)
		if d := time.Since(start); d > 700*time.Millisecond {
			t.Fatalf("a cold lookup with a hanging store took %v, want <= StoreTimeout and a bit", d)
		}
		start = time.Now()
		for range 100 {
			mtMustKey(t, m, mtTenant, mtProvider, k1)
		}
		if d := time.Since(start); d != 0 {
			t.Fatalf("warm lookups took %v of virtual time with a hanging store", d)
		}
		i6Close(t, m)
		close(hang)
		synctest.Wait()
		goleak.VerifyNone(t, ignore)
	})
}

// Unregister deletes the pair's records; Register after Unregister saves
// anew, and the store sees them in the order they happened.
func TestStore_UnregisterDeletesInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 60, testidp.NewKey("ES256", "k1"))
		b := newMemBackend()
		m := stManager(t, idp, memStore{b}.plain(), Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		synctest.Wait()
		if err := m.Unregister(t.Context(), mtTenant, mtProvider); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if b.snapshot(mtTenant, mtProvider) != nil || len(b.regs) != 0 {
			t.Fatal("Unregister left records in the store")
		}
		// Register, Unregister, Register while the store is down: the
		// store ends with the last registration.
		b.setFail(errMemDown)
		mtRegister(t, m, mtTenant, "p2", mtURL)
		if err := m.Unregister(t.Context(), mtTenant, "p2"); err != nil {
			t.Fatal(err)
		}
		if err := m.Register(t.Context(), Registration{TenantID: mtTenant, ProviderID: "p2", JWKSURL: mtURL, Issuer: "https://last.test"}); err != nil {
			t.Fatal(err)
		}
		b.setFail(nil)
		mtWaitFor(t, time.Minute, time.Second, "the registration to be written", func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			return b.regs[providerKey{mtTenant, "p2"}] != nil
		})
		b.mu.Lock()
		rec := b.regs[providerKey{mtTenant, "p2"}]
		b.mu.Unlock()
		r, err := decodeRegistration(rec, nil)
		if err != nil || r.Issuer != "https://last.test" {
			t.Fatalf("stored registration %+v, %v; want the last one", r, err)
		}
	})
}

// Writes queued for a pair while its failing write is in flight are
// newer: they must not end up under the failed ones when both are put back.
func TestStore_WritesQueuedDuringFailedWriteStayNewer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 60, testidp.NewKey("ES256", "k1"))
		b := newMemBackend()
		m := stManager(t, idp, memStore{b}.plain(), Options{})
		gate := make(chan struct{})
		b.setFail(errMemDown)
		b.setHang(gate)
		mtRegister(t, m, mtTenant, "p2", mtURL)
		synctest.Wait() // the writer is inside SaveRegistration, held at the gate
		if b.count("saveRegistration") != 1 {
			t.Fatalf("SaveRegistration called %d times, want 1 in flight", b.count("saveRegistration"))
		}
		b.setHang(nil)
		if err := m.Unregister(t.Context(), mtTenant, "p2"); err != nil {
			t.Fatal(err)
		}
		if err := m.Register(t.Context(), Registration{TenantID: mtTenant, ProviderID: "p2", JWKSURL: mtURL, Issuer: "https://last.test"}); err != nil {
			t.Fatal(err)
		}
		close(gate) // the first write fails; the pass then meets the pair again
		synctest.Wait()
		b.setFail(nil)
		mtWaitFor(t, time.Minute, time.Second, "the registration to be written", func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			return b.regs[providerKey{mtTenant, "p2"}] != nil
		})
		synctest.Wait()
		b.mu.Lock()
		rec := b.regs[providerKey{mtTenant, "p2"}]
		b.mu.Unlock()
		r, err := decodeRegistration(rec, nil)
		if err != nil || r.Issuer != "https://last.test" {
			t.Fatalf("stored registration has issuer %q (%v); want the last one", r.Issuer, err)
		}
	})
}

// Restore skips pairs already registered (the caller's registration wins)
// and reports refused records while registering the others.
func TestStore_RestoreReportsRefusedAndKeepsExisting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 60, testidp.NewKey("ES256", "k1"))
		key := bytes.Repeat([]byte{7}, 32)
		b := newMemBackend()
		good := Registration{TenantID: "t1", ProviderID: "p1", JWKSURL: mtURL}
		mine := Registration{TenantID: "t1", ProviderID: "p2", JWKSURL: mtURL, Issuer: "https://stored.test"}
		b.regs[good.key()] = encodeRegistration(&good, macKeys{key})
		b.regs[mine.key()] = encodeRegistration(&mine, macKeys{key})
		forged := Registration{TenantID: "t1", ProviderID: "p3", JWKSURL: "https://evil.test/jwks"}
		b.regs[forged.key()] = encodeRegistration(&forged, macKeys{bytes.Repeat([]byte{8}, 32)})
		m := stManager(t, idp, memStore{b}.plain(), Options{StoreKeys: [][]byte{key}})
		if err := m.Register(t.Context(), Registration{TenantID: "t1", ProviderID: "p2", JWKSURL: mtURL, Issuer: "https://mine.test"}); err != nil {
			t.Fatal(err)
		}
		n, err := m.Restore(t.Context())
		if n != 1 || !errors.Is(err, ErrInvalidRegistration) {
			t.Fatalf("Restore = %d, %v; want 1 and a refused record", n, err)
		}
		if _, err := m.Status("t1", "p3"); !errors.Is(err, ErrNotRegistered) {
			t.Fatal("a forged registration was restored")
		}
		if st := mtStatus(t, m, "t1", "p2"); st.Issuer != "https://mine.test" {
			t.Fatalf("Restore replaced a registration: issuer %q", st.Issuer)
		}
		if _, err := m.Status("t1", "p1"); err != nil {
			t.Fatal(err)
		}
	})
}

// fleetIdP serves n providers' keys at /p<i>, with max-age.
func fleetIdP(n, maxAge int) (*testidp.IdP, []*testidp.Key) {
	idp := testidp.New()
	var keys []*testidp.Key
	for i := range n {
		k := testidp.NewKey("ES256", "k-"+itoa(i))
		keys = append(keys, k)
		i6Serve(idp, "/p"+itoa(i), maxAge, k)
	}
	return idp, keys
}

// A fleet of Managers sharing one FleetStore costs the IdP about one fetch
// per provider per TTL, and every Manager serves the keys.
func TestFleet_OneFetchPerCycle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const instances, providers, maxAge, cycles = 5, 4, 60, 10
		idp, keys := fleetIdP(providers, maxAge)
		b := newMemBackend()
		var ms []*Manager
		for range instances {
			m := stManager(t, idp, memStore{b}, Options{})
			for i := range providers {
				if err := m.Register(t.Context(), Registration{TenantID: "t", ProviderID: "p" + itoa(i), JWKSURL: mtHost + "/p" + itoa(i)}); err != nil {
					t.Fatal(err)
				}
			}
			ms = append(ms, m)
		}
		// A cycle is the refresh interval: 30s of a 60s max-age (RefreshEarly).
		interval := refreshDelay(maxAge*time.Second, DefaultRefreshEarly, 0, nil)
		i6Step(cycles * interval)
		for i := range providers {
			got := idp.Requests("/p" + itoa(i))
			if limit := (cycles + 1) * 12 / 10; got > limit { // the first load is a cycle too
				t.Errorf("provider %d: %d fetches in %d cycles of %d instances; want at most %d", i, got, cycles+1, instances, limit)
			}
			for _, m := range ms {
				mtMustKey(t, m, "t", "p"+itoa(i), keys[i])
			}
		}
		if b.count("commit") == 0 {
			t.Fatal("no lease was ever committed")
		}
	})
}

// A rotation one instance catches (an unknown kid) reaches the others
// through the fleet within a second: their next token with the new kid
// costs the IdP nothing.
func TestFleet_RotationReachesOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := fleetIdP(1, 3600)
		b := newMemBackend()
		var ms []*Manager
		for range 3 {
			m := stManager(t, idp, memStore{b}, Options{})
			mtLoad(t, m, "t", "p0", mtHost+"/p0")
			ms = append(ms, m)
		}
		i6Step(time.Minute)
		k2 := testidp.NewKey("ES256", "k-new")
		i6Serve(idp, "/p0", 3600, k2)
		before := idp.Requests("/p0")
		start := time.Now()
		mtMustKey(t, ms[0], "t", "p0", k2)
		synctest.Wait()
		if d := time.Since(start); d >= time.Second {
			t.Fatalf("propagation took %v", d)
		}
		for i, m := range ms[1:] {
			mtMustKey(t, m, "t", "p0", k2)
			if st := mtStatus(t, m, "t", "p0"); st.Source != "fleet" {
				t.Errorf("instance %d: source %q, want fleet", i+1, st.Source)
			}
		}
		if got := idp.Requests("/p0") - before; got != 1 {
			t.Fatalf("the rotation cost the IdP %d fetches, want 1", got)
		}
	})
}

// A lease holder that dies delays the others by at most the lease's life;
// then another instance fetches.
func TestFleet_DeadHolderLeaseLapses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := fleetIdP(1, 60)
		b := newMemBackend()
		// A dead instance holds the lease of the pair.
		if l, _, err := (memStore{b}).TryLease(t.Context(), "t", "p0", time.Minute); err != nil || l == nil {
			t.Fatal("could not take the lease")
		}
		m := stManager(t, idp, memStore{b}, Options{})
		mtRegister(t, m, "t", "p0", mtHost+"/p0")
		start := time.Now()
		mtMustKey(t, m, "t", "p0", keys[0])
		reg := m.providers.get("t", "p0").registration()
		if d := time.Since(start); d < leaseTTL(reg) || d > leaseTTL(reg)+5*time.Second {
			t.Fatalf("first load under a dead holder's lease took %v; want about the lease's %v", d, leaseTTL(reg))
		}
		if st := mtStatus(t, m, "t", "p0"); st.Source != "network" {
			t.Fatalf("source %q, want network", st.Source)
		}
	})
}

// A fleet whose store is down fetches for itself: no lookup fails.
func TestFleet_StoreDownFetchesForItself(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := fleetIdP(1, 60)
		b := newMemBackend()
		b.setFail(errMemDown)
		ms := []*Manager{stManager(t, idp, memStore{b}, Options{}), stManager(t, idp, memStore{b}, Options{})}
		for _, m := range ms {
			mtRegister(t, m, "t", "p0", mtHost+"/p0")
			mtMustKey(t, m, "t", "p0", keys[0])
		}
		i6Step(5 * time.Minute)
		for _, m := range ms {
			mtMustKey(t, m, "t", "p0", keys[0])
		}
		b.setFail(nil)
		i6Step(2 * time.Minute)
		if b.snapshot("t", "p0") == nil {
			t.Fatal("no snapshot saved after the store returned")
		}
	})
}

// Nothing of a Manager with a fleet store is left running after Close.
func TestFleet_NoLeakAfterClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ignore := goleak.IgnoreCurrent()
		idp, keys := fleetIdP(1, 60)
		b := newMemBackend()
		ctx, cancel := context.WithCancel(context.Background())
		m, err := New(Options{HTTPClient: idp.Client(), Store: memStore{b}})
		if err != nil {
			t.Fatal(err)
		}
		mtRegister(t, m, "t", "p0", mtHost+"/p0")
		mtMustKey(t, m, "t", "p0", keys[0])
		i6Close(t, m)
		cancel()
		_ = ctx
		synctest.Wait()
		goleak.VerifyNone(t, ignore)
	})
}

func TestOptions_StoreValidation(t *testing.T) {
	b := newMemBackend()
	for _, tc := range []struct {
		name  string
		opts  Options
		field string
	}{
		{"short key", Options{Store: memStore{b}, StoreKeys: [][]byte{make([]byte, 31)}}, "StoreKeys[0]"},
		{"keys without store", Options{StoreKeys: [][]byte{make([]byte, 32)}}, "StoreKeys"},
		{"negative timeout", Options{Store: memStore{b}, StoreTimeout: -1}, "StoreTimeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.opts)
			var oe *OptionsError
			if !errors.As(err, &oe) || !errors.Is(err, ErrInvalidOptions) || len(oe.Fields) != 1 || oe.Fields[0].Field != tc.field {
				t.Fatalf("New = %v; want an OptionsError naming %s", err, tc.field)
			}
		})
	}
}

// idpBody returns the JWKS idp serves at path.
func idpBody(t *testing.T, idp *testidp.IdP, path string) []byte {
	t.Helper()
	resp, err := idp.Client().Get(mtHost + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

// The store and fleet metrics move with what happens: a refused record, a
// store outage and its end, a restore, leases and commits.
func TestStore_Metrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := fleetIdP(1, 60)
		b := newMemBackend()
		b.putSnapshot("t", "p0", []byte("forged"))
		reg := prometheus.NewPedanticRegistry()
		m := stManager(t, idp, memStore{b}, Options{Registerer: reg})
		mtRegister(t, m, "t", "p0", mtHost+"/p0")
		mtMustKey(t, m, "t", "p0", keys[0])
		synctest.Wait()
		want := `
# HELP jwks_cache_store_refused_total Stored records refused on reading, by reason (checksum, mac, owner, superseded, size, format, content, expired); never served.
# TYPE jwks_cache_store_refused_total counter
jwks_cache_store_refused_total{reason="checksum"} 0
jwks_cache_store_refused_total{reason="content"} 0
jwks_cache_store_refused_total{reason="expired"} 0
jwks_cache_store_refused_total{reason="format"} 1
jwks_cache_store_refused_total{reason="mac"} 0
jwks_cache_store_refused_total{reason="owner"} 0
jwks_cache_store_refused_total{reason="size"} 0
jwks_cache_store_refused_total{reason="superseded"} 0
# HELP jwks_cache_fleet_leases_total Fleet refresh leases asked for, by result: acquired (this instance fetches), held (another does), error (fetched without one).
# TYPE jwks_cache_fleet_leases_total counter
jwks_cache_fleet_leases_total{result="acquired"} 1
jwks_cache_fleet_leases_total{result="error"} 0
jwks_cache_fleet_leases_total{result="held"} 0
# HELP jwks_cache_fleet_commits_total Snapshots this instance saved and published to the fleet under a lease.
# TYPE jwks_cache_fleet_commits_total counter
jwks_cache_fleet_commits_total 1
# HELP jwks_cache_store_up 1 while the Store answers, 0 after a failed call until one succeeds (the Manager serves from memory meanwhile).
# TYPE jwks_cache_store_up gauge
jwks_cache_store_up 1
`
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), metricStoreRefused, metricFleetLeases, metricFleetCommits, metricStoreUp); err != nil {
			t.Fatal(err)
		}
		b.setFail(errMemDown)
		mtRegister(t, m, "t", "p1", mtHost+"/p0")
		synctest.Wait()
		if v := testutil.ToFloat64(collectorGauge(t, reg, metricStoreUp)); v != 0 {
			t.Fatalf("store_up = %v during an outage, want 0", v)
		}
		if n := m.persist.opErrors[opSave].Load(); n == 0 {
			t.Fatal("no failed save counted during the outage")
		}
		b.setFail(nil)
		i6Step(time.Minute)
		if v := testutil.ToFloat64(collectorGauge(t, reg, metricStoreUp)); v != 1 {
			t.Fatalf("store_up = %v after the outage, want 1", v)
		}
		if v := testutil.ToFloat64(collectorGauge(t, reg, metricStorePending)); v != 0 {
			t.Fatalf("pending writes = %v after the outage, want 0", v)
		}
	})
}

// collectorGauge returns a collector of the single gauge name gathered
// from reg, for testutil.ToFloat64.
func collectorGauge(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: "copy"}, func() float64 { return mf.Metric[0].GetGauge().GetValue() })
		}
	}
	t.Fatalf("no single series of %s", name)
	return nil
}

// A failed read opens the breaker with nothing to write: the writer
// probes the store until it answers, so the breaker closes (and
// jwks_cache_store_up says so) without waiting for a refresh.
func TestStore_BreakerProbesWithoutPendingWrites(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, mtPath, 3600, testidp.NewKey("ES256", "k1"))
		b := newMemBackend()
		m := stManager(t, idp, memStore{b}.plain(), Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		synctest.Wait() // every write done
		b.setFail(errMemDown)
		if _, err := m.Restore(t.Context()); err == nil {
			t.Fatal("Restore with the store down succeeded")
		}
		if m.persist.downUntil.Load() == 0 || m.persist.pending.Load() != 0 {
			t.Fatal("want the breaker open and nothing to write")
		}
		loads := b.count("load")
		b.setFail(nil)
		i6Step(time.Minute)
		if m.persist.downUntil.Load() != 0 {
			t.Fatal("the breaker is still open a minute after the store answers again")
		}
		if b.count("load") == loads {
			t.Fatal("the writer never probed")
		}
	})
}

// RegisterUnsaved keeps the registration out of the store (its snapshots
// are saved): Restore does not bring it back.
func TestStore_RegisterUnsaved(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		k1 := testidp.NewKey("ES256", "k1")
		i6Serve(idp, mtPath, 3600, k1)
		b := newMemBackend()
		m := stManager(t, idp, memStore{b}.plain(), Options{})
		if err := m.RegisterUnsaved(t.Context(), Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: mtURL}); err != nil {
			t.Fatal(err)
		}
		mtMustKey(t, m, mtTenant, mtProvider, k1)
		synctest.Wait()
		if len(b.regs) != 0 || b.snapshot(mtTenant, mtProvider) == nil {
			t.Fatalf("%d registrations saved, snapshot saved %v; want none and yes", len(b.regs), b.snapshot(mtTenant, mtProvider) != nil)
		}
		m2 := stManager(t, idp, memStore{b}.plain(), Options{})
		if n, err := m2.Restore(t.Context()); n != 0 || err != nil {
			t.Fatalf("Restore = %d, %v; want nothing", n, err)
		}
	})
}

// A rotation found by a manual refresh (no lease) still reaches the fleet
// at once.
func TestFleet_ManualRefreshPublishesRotation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := fleetIdP(1, 3600)
		b := newMemBackend()
		ms := []*Manager{stManager(t, idp, memStore{b}, Options{}), stManager(t, idp, memStore{b}, Options{})}
		for _, m := range ms {
			mtLoad(t, m, "t", "p0", mtHost+"/p0")
		}
		k2 := testidp.NewKey("ES256", "k-new")
		i6Serve(idp, "/p0", 3600, k2)
		if err := ms[0].Refresh(t.Context(), "t", "p0"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		before := idp.Requests("/p0")
		mtMustKey(t, ms[1], "t", "p0", k2)
		if idp.Requests("/p0") != before {
			t.Fatal("the other instance fetched: the rotation was not published")
		}
	})
}

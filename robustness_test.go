package jwkscache

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jwkscache/jwkscache/internal/testidp"
)

// A panic in OnEvent is user code failing, not the engine: the provider
// keeps refreshing, and keys past their stale window are still withdrawn.
func TestRobustOnEventPanicKeepsProviderAlive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		idp.SetHeader(mtPath, "Cache-Control", "max-age=60")
		var panics atomic.Int32
		m := mtManager(t, idp, Options{OnEvent: func(ev Event) {
			if ev.Kind == EventStateChanged && ev.To == StateRefreshing && panics.Add(1) == 1 {
				panic("bad callback")
			}
		}})
		if err := m.Register(t.Context(), Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: mtURL, StaleWhileError: 10 * time.Minute}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		time.Sleep(time.Hour)
		synctest.Wait()
		if panics.Load() < 2 {
			t.Fatalf("OnEvent saw %d Refreshing events in an hour: refreshes stopped after the panic", panics.Load())
		}
		if got := idp.Requests(mtPath); got < 40 {
			t.Errorf("%d requests in an hour with max-age=60: refreshes stalled", got)
		}
		if m.panics.Load() == 0 {
			t.Error("the panic was not counted")
		}
		// An outage now: keys must still be withdrawn when the window ends.
		idp.SetFault(mtPath, testidp.Fault{Status: 503})
		time.Sleep(12 * time.Minute)
		synctest.Wait()
		if _, err := m.Key(t.Context(), mtTenant, mtProvider, keys[0].KID); !errors.Is(err, ErrNoKeys) {
			t.Errorf("after the stale window: Key err = %v, want ErrNoKeys", err)
		}
	})
}

// Switching a provider to a new source keeps the old keys only while they
// are fresh, and only under the issuer they were registered with: the old
// IdP cannot mint tokens for the new issuer.
func TestRobustSourceChangeBindsOldKeysToOldIssuer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		oldKey := testidp.NewKey("ES256", "old")
		idp.SetKeys("/a", oldKey)
		idp.SetHeader("/a", "Cache-Control", "max-age=600")
		m := mtManager(t, idp, Options{})
		ctx := t.Context()
		reg := Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: "https://idp.test/a", Issuer: "https://old.example"}
		if err := m.Register(ctx, reg); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		// The new source does not load (404).
		reg.JWKSURL, reg.Issuer = "https://idp.test/b", "https://new.example"
		if err := m.Register(ctx, reg); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		kf := m.Keyfunc(mtTenant, mtProvider)
		oldTok := oldKey.Sign(jwt.MapClaims{"iss": "https://old.example"})
		forged := oldKey.Sign(jwt.MapClaims{"iss": "https://new.example"})
		if _, err := jwt.Parse(oldTok, kf); err != nil {
			t.Errorf("old token while the new source fails and the old keys are fresh: %v", err)
		}
		if _, err := jwt.Parse(forged, kf); err == nil {
			t.Error("a token of the old IdP verified under the new issuer")
		}
		// Past the old keys' freshness they are not served stale.
		time.Sleep(11 * time.Minute)
		synctest.Wait()
		if _, err := m.Key(ctx, mtTenant, mtProvider, "old"); !errors.Is(err, ErrNoKeys) {
			t.Errorf("old keys after their expiry, new source failing: err = %v, want ErrNoKeys", err)
		}
	})
}

// An Issuer change on the same source applies to tokens at once.
func TestRobustIssuerChangeAppliesAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		m := mtManager(t, idp, Options{})
		reg := Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: mtURL, Issuer: "https://a.example"}
		if err := m.Register(t.Context(), reg); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		before := idp.Requests(mtPath)
		reg.Issuer = "https://b.example"
		if err := m.Register(t.Context(), reg); err != nil {
			t.Fatal(err)
		}
		kf := m.Keyfunc(mtTenant, mtProvider)
		if _, err := jwt.Parse(keys[0].Sign(jwt.MapClaims{"iss": "https://a.example"}), kf); err == nil {
			t.Error("a token of the previous issuer verified after the change")
		}
		if _, err := jwt.Parse(keys[0].Sign(jwt.MapClaims{"iss": "https://b.example"}), kf); err != nil {
			t.Errorf("a token of the new issuer: %v", err)
		}
		synctest.Wait()
		if got := idp.Requests(mtPath) - before; got != 0 {
			t.Errorf("an issuer change on the same URL cost %d fetches", got)
		}
	})
}

// Many providers of a dead IdP (each fetch hangs until its deadline) may
// hold at most half the workers: a healthy provider keeps its refresh
// rhythm, and the dead ones lose their keys exactly when their window ends.
func TestRobustFailingProvidersDoNotStarveHealthyOnes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		idp.SetKeys("/healthy", testidp.NewKey("ES256", "h"))
		idp.SetHeader("/healthy", "Cache-Control", "max-age=60")
		idp.SetKeys("/dead", testidp.NewKey("ES256", "d"))
		idp.SetHeader("/dead", "Cache-Control", "max-age=60")
		m := mtManager(t, idp, Options{})
		ctx := t.Context()
		const dead = 300
		for i := range dead {
			// One attempt of 8 s: the cost of a dead fetch without the
			// event churn of retries (the test runs hours of virtual time).
			r := Registration{TenantID: "t" + itoa(i), ProviderID: "p", JWKSURL: "https://idp.test/dead", StaleWhileError: -1,
				Retry: RetryPolicy{MaxRetries: -1, AttemptTimeout: 8 * time.Second}}
			if err := m.Register(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.Register(ctx, Registration{TenantID: "ok", ProviderID: "p", JWKSURL: "https://idp.test/healthy", StaleWhileError: -1}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		loaded := time.Now()
		idp.SetFault("/dead", testidp.Fault{Delay: time.Hour}) // blackhole: every attempt times out
		start := idp.Requests("/healthy")
		time.Sleep(time.Hour)
		synctest.Wait()
		// max-age=60 refreshes at 48 s (80%), minus up to 5 s jitter: about
		// 75 an hour. Starved, it managed a handful.
		if got := idp.Requests("/healthy") - start; got < 60 {
			t.Errorf("healthy provider refreshed %d times in an hour beside %d dead ones", got, dead)
		}
		if _, err := m.Key(ctx, "ok", "p", "h"); err != nil {
			t.Errorf("healthy provider: %v", err)
		}
		// Expiry is the timer goroutine's job, not the busy workers'.
		st := mtStatus(t, m, "t0", "p")
		if st.State != StateEmpty {
			t.Errorf("dead provider after an hour: state %v, want Empty", st.State)
		}
		if !st.ExpiresAt.IsZero() {
			t.Errorf("dead provider still has keys expiring at %v (loaded at %v)", st.ExpiresAt, loaded)
		}
	})
}

// Re-registering an identical registration (a config sync loop) does not
// void the fetch in flight, so a slow first load still completes.
func TestRobustIdenticalRegisterKeepsFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		idp.SetFault(mtPath, testidp.Fault{Delay: 2 * time.Second})
		m := mtManager(t, idp, Options{})
		reg := Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: mtURL}
		if err := m.Register(t.Context(), reg); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(1500 * time.Millisecond):
					m.Register(context.Background(), reg)
				}
			}
		}()
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		_, err := m.Key(ctx, mtTenant, mtProvider, keys[0].KID)
		close(stop)
		if err != nil {
			t.Fatalf("Key under a config-sync loop: %v", err)
		}
		if got := idp.Requests(mtPath); got != 1 {
			t.Errorf("%d requests, want 1", got)
		}
	})
}

// Kids come from token headers: an oversized one fails at once and costs
// the IdP nothing.
func TestRobustOversizedKIDCostsNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := testidp.NewDefault()
		m := mtManager(t, idp, Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		before := idp.Requests(mtPath)
		_, err := m.Key(t.Context(), mtTenant, mtProvider, strings.Repeat("k", 64<<10))
		if !errors.Is(err, ErrKeyNotFound) {
			t.Fatalf("err = %v, want ErrKeyNotFound", err)
		}
		if len(err.Error()) > 1024 {
			t.Errorf("the error echoes the kid: %d bytes", len(err.Error()))
		}
		synctest.Wait()
		if got := idp.Requests(mtPath) - before; got != 0 {
			t.Errorf("an oversized kid cost %d requests", got)
		}
	})
}

// The negative cache drops expired entries before it evicts live ones.
func TestRobustNegativeCacheSweepsExpired(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := testidp.NewDefault()
		m := mtManager(t, idp, Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		p := m.providers.get(mtTenant, mtProvider)
		for i := range maxNegativeKIDs {
			p.rememberMissing("old-" + itoa(i))
		}
		time.Sleep(DefaultNegativeCacheTTL + time.Second)
		p.rememberMissing("fresh")
		n := len(p.negativeKIDs())
		if n != 1 {
			t.Errorf("negative cache holds %d entries after the old ones expired, want 1", n)
		}
	})
}

// Pins need TLS: a pinned registration over http is refused up front.
func TestRobustPinsRequireHTTPS(t *testing.T) {
	m, err := New(Options{AllowHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	pin := testidp.SPKIPin(testidp.New().Leaf())
	err = m.Register(t.Context(), Registration{TenantID: "a", ProviderID: "b", JWKSURL: "http://idp.example/jwks", AllowHTTP: true, PinnedSPKI: []string{pin}})
	if !errors.Is(err, ErrSecurityPolicy) || !strings.Contains(err.Error(), "pinnedSpki") {
		t.Fatalf("err = %v, want ErrSecurityPolicy naming pinnedSpki", err)
	}
}

// Resolve with every key denied has nothing usable to return.
func TestRobustResolveAllDenied(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		m := mtManager(t, idp, Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		for _, k := range keys {
			if err := m.DenyKey(mtTenant, mtProvider, k.KID); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := m.Resolve(t.Context(), mtTenant, mtProvider); !errors.Is(err, ErrNoKeys) {
			t.Fatalf("err = %v, want ErrNoKeys", err)
		}
	})
}

func itoa(i int) string {
	const digits = "0123456789"
	if i < 10 {
		return digits[i : i+1]
	}
	return itoa(i/10) + digits[i%10:i%10+1]
}

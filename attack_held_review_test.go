package jwkscache

// Attacks from the review that held on main: kept as regression checks.

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

// Slow-slot accounting under churn: slow providers (failing after a delay,
// panicking transports, first loads) are registered, re-registered and
// unregistered at random while they wait for or hold slow slots. Once all
// are gone and the bubble settles, no slot is held and nobody is in line.
func TestAttackHeld_SlowSlotsBalanceUnderChurn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		i6Serve(idp, "/slow", 60, testidp.NewKey("ES256", "s-1"))
		idp.SetFault("/slow", testidp.Fault{Status: 503, Delay: 1500 * time.Millisecond})
		i6Serve(idp, "/fast", 60, testidp.NewKey("ES256", "f-1"))
		rt := &atkPanicRT{next: idp.Client().Transport}
		m, err := New(Options{HTTPClient: &http.Client{Transport: rt}, RefreshWorkers: 4})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		rng := rand.New(rand.NewPCG(1, 2))
		const n = 40
		var maxSlow, maxWait int
		for round := 0; round < 200; round++ {
			i := rng.IntN(n)
			id := "p" + itoa(i)
			switch rng.IntN(4) {
			case 0:
				_ = m.Unregister(t.Context(), "t", id)
			case 1:
				rt.armed.Store(int32(rng.IntN(2)))
				fallthrough
			default:
				path := "/slow"
				if rng.IntN(3) == 0 {
					path = "/fast"
				}
				_ = m.Register(t.Context(), Registration{TenantID: "t", ProviderID: id, JWKSURL: mtHost + path})
			}
			time.Sleep(time.Duration(rng.IntN(800)) * time.Millisecond)
			m.sched.mu.Lock()
			maxSlow, maxWait = max(maxSlow, m.sched.slow), max(maxWait, len(m.sched.slowWait))
			m.sched.mu.Unlock()
		}
		if maxSlow < m.sched.maxSlow || maxWait == 0 {
			t.Fatalf("the churn never filled the slow slots (max held %d, max in line %d)", maxSlow, maxWait)
		}
		for i := range n {
			_ = m.Unregister(t.Context(), "t", "p"+itoa(i))
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		m.sched.mu.Lock()
		slow, waiting, queued := m.sched.slow, len(m.sched.slowWait), len(m.sched.queue)
		m.sched.mu.Unlock()
		if slow != 0 || waiting != 0 || queued != 0 {
			t.Errorf("after churn and removal of every provider: slow slots held %d, in line %d, queued %d; want 0, 0, 0", slow, waiting, queued)
		}
	})
}

// Close with everything busy: slow providers in line for slots, lookups
// waiting on cold loads and unknown kids, Refresh calls, a blocked OnEvent
// and a blocked log handler. Close returns within 2 s and, once the
// callbacks are released, no goroutine of the Manager is left.
func TestAttackHeld_CloseLeavesNothingRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ignore := goleak.IgnoreCurrent()
		idp := testidp.New()
		i6Serve(idp, "/slow", 60, testidp.NewKey("ES256", "s-1"))
		idp.SetFault("/slow", testidp.Fault{Delay: time.Hour})
		i6Serve(idp, "/fast", 60, testidp.NewKey("ES256", "f-1"))
		release, releaseOnce := i6Release(t)
		var once sync.Once
		onEvent := func(Event) { once.Do(func() { <-release }) }
		h := &i6BlockingHandler{release: release}
		h.armed.Store(true)
		m, err := New(Options{HTTPClient: idp.Client(), RefreshWorkers: 2, OnEvent: onEvent, Logger: slog.New(h)})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			path := "/slow"
			if i%3 == 0 {
				path = "/fast"
			}
			_ = m.Register(t.Context(), Registration{TenantID: "t", ProviderID: "p" + itoa(i), JWKSURL: mtHost + path})
		}
		for i := range 10 {
			go func() { _, _ = m.Key(context.Background(), "t", "p"+itoa(i), "nope") }()
			go func() { _ = m.Refresh(context.Background(), "t", "p"+itoa(i)) }()
		}
		time.Sleep(5 * time.Second)
		i6Close(t, m)
		releaseOnce()
		synctest.Wait()
		goleak.VerifyNone(t, ignore)
	})
}

// Two tenants whose IdPs serve the same bytes share one interned document;
// denials, issuer bindings and issuer changes of one never show in the
// other.
func TestAttackHeld_InternedDocumentIsolatesTenants(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		k := testidp.NewKey("ES256", "k-1")
		idp.SetKeys("/a", k)
		idp.SetKeys("/b", k)
		m := mtManager(t, idp, Options{})
		for _, r := range []Registration{
			{TenantID: "ta", ProviderID: "p", JWKSURL: mtHost + "/a", Issuer: "https://a.example"},
			{TenantID: "tb", ProviderID: "p", JWKSURL: mtHost + "/b", Issuer: "https://b.example"},
		} {
			if err := m.Register(t.Context(), r); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		pa, pb := m.providers.get("ta", "p"), m.providers.get("tb", "p")
		if pa.snap.Load().doc != pb.snap.Load().doc {
			t.Fatal("same bytes, documents not shared")
		}
		_ = m.DenyKey("ta", "p", k.KID)
		_ = m.Register(t.Context(), Registration{TenantID: "ta", ProviderID: "p", JWKSURL: mtHost + "/a", Issuer: "https://c.example"})
		tok := func(iss string) *jwt.Token {
			return &jwt.Token{Header: map[string]any{"kid": k.KID, "alg": "ES256"}, Claims: jwt.MapClaims{"iss": iss}}
		}
		if _, err := m.TenantKeyfunc("tb")(tok("https://b.example")); err != nil {
			t.Errorf("tenant b: %v", err)
		}
		for _, iss := range []string{"https://a.example", "https://c.example"} {
			if _, err := m.Keyfunc("tb", "p")(tok(iss)); err == nil {
				t.Errorf("tenant b accepted iss %s", iss)
			}
		}
		if _, err := m.Keyfunc("ta", "p")(tok("https://c.example")); !errors.Is(err, ErrKeyDenied) {
			t.Errorf("tenant a, denied kid: %v", err)
		}
	})
}

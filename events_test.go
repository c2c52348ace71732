package jwkscache

import (
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

// eventLog records events and log messages in the order delivered.
type eventLog struct {
	mu     sync.Mutex
	events []Event
}

func (l *eventLog) add(ev Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, ev)
}

// take returns the kinds received since the last call, after the delivery
// goroutine caught up.
func (l *eventLog) take() ([]Event, []EventKind) {
	synctest.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	evs := l.events
	l.events = nil
	var kinds []EventKind
	for _, e := range evs {
		if e.Kind != EventStateChanged {
			kinds = append(kinds, e.Kind)
		}
	}
	return evs, kinds
}

// The events of an outage and of rotations, in order: refresh_failed with
// its class, stale_began at expiry (on time, although the next retry is
// later), recovered with the failure count, stale_ended, keys_changed with
// the kids added and removed, key_denied and key_allowed only on a change;
// and each has its log record (issue 8: events and logs).
func TestEventsLifecycle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		idp.SetHeader(mtPath, "Cache-Control", "max-age=60")
		rec := &eventLog{}
		var logMu sync.Mutex
		var logs []string
		h := slog.NewTextHandler(writerFunc(func(b []byte) (int, error) {
			logMu.Lock()
			defer logMu.Unlock()
			logs = append(logs, string(b))
			return len(b), nil
		}), &slog.HandlerOptions{Level: slog.LevelDebug})
		m := mtManager(t, idp, Options{OnEvent: rec.add, Logger: slog.New(h)})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		rec.take()

		// The IdP fails from now on. The refresh at 30s fails; the keys
		// expire at 60s; retries back off.
		idp.SetFault(mtPath, testidp.Fault{Status: 503})
		loaded := mtStatus(t, m, mtTenant, mtProvider)
		time.Sleep(time.Until(loaded.ExpiresAt) - time.Second)
		evs, kinds := rec.take()
		if len(kinds) == 0 || kinds[0] != EventRefreshFailed || slices.Contains(kinds, EventStaleBegan) {
			t.Fatalf("before expiry: %v, want refresh_failed events and no stale_began", kinds)
		}
		for _, e := range evs {
			if e.Kind == EventRefreshFailed && (e.Class != ClassStatus || e.Err == nil) {
				t.Errorf("refresh_failed with class %q, err %v; want status", e.Class, e.Err)
			}
		}
		time.Sleep(time.Second)
		evs, _ = rec.take()
		var began []Event
		for _, e := range evs {
			if e.Kind == EventStaleBegan {
				began = append(began, e)
			}
		}
		// A retry may fail in the same second; stale_began comes once, at
		// the expiry itself.
		if len(began) != 1 || !began[0].Time.Equal(loaded.ExpiresAt) {
			t.Fatalf("at expiry: %+v, want one stale_began at %v", began, loaded.ExpiresAt)
		}
		// More failures: no second stale_began.
		time.Sleep(20 * time.Second)
		if _, kinds = rec.take(); slices.Contains(kinds, EventStaleBegan) {
			t.Errorf("stale_began twice: %v", kinds)
		}
		// The IdP recovers with a rotated set: recovered, stale_ended,
		// keys_changed with the rotation.
		idp.ClearFault(mtPath)
		k := idp.Rotate(mtPath, "ES256")
		if err := m.Refresh(t.Context(), mtTenant, mtProvider); err != nil {
			t.Fatal(err)
		}
		evs, kinds = rec.take()
		if !slices.Equal(kinds, []EventKind{EventKeysChanged, EventRecovered, EventStaleEnded}) {
			t.Fatalf("recovery: %v, want keys_changed, recovered, stale_ended", kinds)
		}
		for _, e := range evs {
			switch e.Kind {
			case EventKeysChanged:
				if !slices.Equal(e.Added, []string{k.KID}) || !slices.Equal(e.Removed, []string{keys[0].KID, keys[1].KID}) {
					t.Errorf("rotation added %v removed %v, want [%s] and [%s %s]", e.Added, e.Removed, k.KID, keys[0].KID, keys[1].KID)
				}
			case EventRecovered:
				if e.Failures < 2 {
					t.Errorf("recovered after %d failures, want the count of the outage's failures", e.Failures)
				}
			case EventStaleEnded:
				if e.Withdrawn {
					t.Error("stale_ended by a refresh says withdrawn")
				}
			}
		}
		// Denial: one event per change, none for a repeat.
		for range 2 {
			if err := m.DenyKey(mtTenant, mtProvider, k.KID); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.AllowKey(mtTenant, mtProvider, k.KID); err != nil {
			t.Fatal(err)
		}
		if err := m.AllowKey(mtTenant, mtProvider, "never-denied"); err != nil {
			t.Fatal(err)
		}
		evs, kinds = rec.take()
		if !slices.Equal(kinds, []EventKind{EventKeyDenied, EventKeyAllowed}) || evs[0].KID != k.KID {
			t.Errorf("deny twice, allow, allow an undenied kid: %v", kinds)
		}
		// An outage past the stale window: stale_ended, withdrawn.
		idp.SetFault(mtPath, testidp.Fault{Status: 503})
		time.Sleep(DefaultStaleWhileError + 2*time.Minute)
		evs, kinds = rec.take()
		var ended *Event
		for i := range evs {
			if evs[i].Kind == EventStaleEnded {
				ended = &evs[i]
			}
		}
		if ended == nil || !ended.Withdrawn || !slices.Contains(kinds, EventStaleBegan) {
			t.Errorf("long outage: %v, want stale_began then stale_ended (withdrawn)", kinds)
		}
		logMu.Lock()
		all := strings.Join(logs, "")
		logMu.Unlock()
		for _, msg := range []string{"jwks refresh failed", "served stale", "refresh recovered", "stale serving ended", "jwks keys changed", "key denied", "key allowed", "state changed"} {
			if !strings.Contains(all, msg) {
				t.Errorf("no log record %q", msg)
			}
		}
		if !strings.Contains(all, "added=["+k.KID+"]") {
			t.Errorf("the keys-changed log lacks the added kid")
		}
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// Re-registering with another StaleWhileError applies it to the keys
// served now: raised during an outage it keeps them longer, lowered it
// withdraws them at once (the runbook in docs/operations.md relies on it).
func TestRegisterStaleWindowAppliesToServedKeys(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		idp.SetHeader(mtPath, "Cache-Control", "max-age=60")
		m := mtManager(t, idp, Options{})
		reg := Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: mtURL, StaleWhileError: 10 * time.Minute}
		if err := m.Register(t.Context(), reg); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		idp.SetFault(mtPath, testidp.Fault{Status: 503})
		expires := mtStatus(t, m, mtTenant, mtProvider).ExpiresAt
		time.Sleep(time.Until(expires) + 5*time.Minute) // stale, 5 min left
		reg.StaleWhileError = 2 * time.Hour
		if err := m.Register(t.Context(), reg); err != nil {
			t.Fatal(err)
		}
		if st := mtStatus(t, m, mtTenant, mtProvider); !st.StaleUntil.Equal(expires.Add(2 * time.Hour)) {
			t.Fatalf("StaleUntil %v after raising the window, want %v", st.StaleUntil, expires.Add(2*time.Hour))
		}
		time.Sleep(30 * time.Minute) // past the old window
		mtMustKey(t, m, mtTenant, mtProvider, keys[0])
		reg.StaleWhileError = time.Minute // lower it: the keys are past it
		if err := m.Register(t.Context(), reg); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if _, err := m.Key(t.Context(), mtTenant, mtProvider, keys[0].KID); !errors.Is(err, ErrNoKeys) {
			t.Fatalf("after lowering the window below the keys' age: %v, want ErrNoKeys", err)
		}
	})
}

// A JWKS URL with a secret in its query string: the secret never reaches a
// log record, an event's error text, Status.LastError or a lookup error.
func TestURLQueryNeverShown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		rec := &eventLog{}
		var mu sync.Mutex
		var logs strings.Builder
		h := slog.NewTextHandler(writerFunc(func(b []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			return logs.Write(b)
		}), &slog.HandlerOptions{Level: slog.LevelDebug})
		m := mtManager(t, idp, Options{OnEvent: rec.add, Logger: slog.New(h)})
		const secret = "s3cr3t-api-key"
		idp.SetFault(mtPath, testidp.Fault{Status: 503})
		url := mtURL + "?api_key=" + secret + "#frag-" + secret
		if err := m.Register(t.Context(), Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: url}); err != nil {
			t.Fatal(err)
		}
		_, err := m.Key(t.Context(), mtTenant, mtProvider, keys[0].KID)
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("lookup error %v shows the query string (or no error)", err)
		}
		synctest.Wait()
		if st := mtStatus(t, m, mtTenant, mtProvider); st.LastError == "" || strings.Contains(st.LastError, secret) {
			t.Errorf("Status.LastError %q shows the query string (or is empty)", st.LastError)
		}
		evs, _ := rec.take()
		failed := 0
		for _, e := range evs {
			if e.Err != nil {
				failed++
				if strings.Contains(e.Err.Error(), secret) {
					t.Errorf("event %s error shows the query string: %v", e.Kind, e.Err)
				}
			}
		}
		mu.Lock()
		out := logs.String()
		mu.Unlock()
		if failed == 0 || !strings.Contains(out, "jwks refresh failed") || strings.Contains(out, secret) {
			t.Errorf("%d failure events; logs (must show the failure, never the secret):\n%s", failed, out)
		}
	})
}

// Unregistering a provider that serves stale keys ends its stale serving
// with an event, so that a tracker of stale providers drops it.
func TestUnregisterEndsStaleServing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := testidp.NewDefault()
		idp.SetHeader(mtPath, "Cache-Control", "max-age=60")
		rec := &eventLog{}
		m := mtManager(t, idp, Options{OnEvent: rec.add})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		idp.SetFault(mtPath, testidp.Fault{Status: 503})
		time.Sleep(2 * time.Minute)
		if _, kinds := rec.take(); !slices.Contains(kinds, EventStaleBegan) {
			t.Fatalf("no stale_began during the outage: %v", kinds)
		}
		if err := m.Unregister(t.Context(), mtTenant, mtProvider); err != nil {
			t.Fatal(err)
		}
		evs, kinds := rec.take()
		if !slices.Equal(kinds, []EventKind{EventStaleEnded}) || !evs[len(evs)-1].Withdrawn {
			t.Errorf("after Unregister: %v, want stale_ended (withdrawn)", kinds)
		}
	})
}

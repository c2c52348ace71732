package jwkscache

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

func atk2LiveLen(m *Manager) int {
	n := 0
	m.fetcher.tr.live.Range(func(any, any) bool { n++; return true })
	return n
}

// The flight-trace map holds nothing once flights that panicked, were
// superseded by Register, were unregistered mid-flight or were cut by
// Close are over.
func TestAttack2FlightTraceMapDrains(t *testing.T) {
	idp, keys := testidp.NewDefault()
	rt := &atkPanicRT{next: idp.Client().Transport}
	rt.armed.Store(3)
	gate := make(chan struct{})
	var once sync.Once
	slow := atk2RT(func(r *http.Request) *http.Response {
		<-gate
		resp, err := rt.RoundTrip(r)
		if err != nil {
			return atk2Resp(r, 500, nil, "")
		}
		return resp
	})
	rec := tracetest.NewSpanRecorder()
	m, err := New(Options{HTTPClient: &http.Client{Transport: slow}, TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, p := range []string{"a", "b", "c", "d"} {
		if err := m.Register(ctx, Registration{TenantID: "t", ProviderID: p, JWKSURL: "https://idp.test" + testidp.DefaultPath}); err != nil {
			t.Fatal(err)
		}
	}
	// Waiters that give up, a superseding Register, an Unregister mid-flight.
	var wg sync.WaitGroup
	for _, p := range []string{"a", "b", "c", "d"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			defer cancel()
			_, _ = m.Key(c, "t", p, keys[0].KID)
		}()
	}
	time.Sleep(20 * time.Millisecond)
	_ = m.Register(ctx, Registration{TenantID: "t", ProviderID: "b", JWKSURL: "https://idp.test" + testidp.DefaultPath + "?v=2"})
	_ = m.Unregister(ctx, "t", "c")
	once.Do(func() { close(gate) })
	wg.Wait()
	deadline := time.Now().Add(3 * time.Second)
	for atk2LiveLen(m) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := atk2LiveLen(m); n != 0 {
		t.Errorf("flight-trace map holds %d entries after the flights ended", n)
	}
	_ = m.Close()
	if n := atk2LiveLen(m); n != 0 {
		t.Errorf("flight-trace map holds %d entries after Close", n)
	}
	if n := len(rec.Started()) - len(rec.Ended()); n != 0 {
		t.Errorf("%d spans never ended", n)
	}
}

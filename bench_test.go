package jwkscache

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

// warmManager returns a Manager with one provider serving keys, warm.
func warmManager(tb testing.TB) (*Manager, []*testidp.Key) {
	tb.Helper()
	idp, keys := testidp.NewDefault()
	idp.SetHeader(testidp.DefaultPath, "Cache-Control", "max-age=86400")
	m, err := New(Options{HTTPClient: idp.Client()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	if err := m.Register(context.Background(), Registration{TenantID: "acme", ProviderID: "auth0", JWKSURL: "https://idp.test/jwks.json"}); err != nil {
		tb.Fatal(err)
	}
	if _, err := m.Key(context.Background(), "acme", "auth0", keys[0].KID); err != nil {
		tb.Fatal(err)
	}
	return m, keys
}

// BenchmarkKey measures a warm lookup: the path every token verification
// takes. Run with -cpu 1,2 to see it does not degrade with cores.
func BenchmarkKey(b *testing.B) {
	m, keys := warmManager(b)
	ctx := context.Background()
	kid := keys[1].KID
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.Key(ctx, "acme", "auth0", kid); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := m.Key(ctx, "acme", "auth0", kid); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkKeyDuringFlood measures warm lookups of a known kid while other
// goroutines flood the same provider with random unknown kids.
func BenchmarkKeyDuringFlood(b *testing.B) {
	m, keys := warmManager(b)
	ctx := context.Background()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			m.Key(ctx, "acme", "auth0", "unknown-"+strconv.FormatUint(rand.Uint64(), 36))
		}
	}()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := m.Key(ctx, "acme", "auth0", keys[0].KID); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	close(stop)
	<-done
}

// BenchmarkWarmup registers n providers, each with a one-key EC set, and
// waits until every one is Ready. It reports the warm-up time, the heap per
// provider after GC and the goroutines added. The "mem" variants use the
// test IdP's in-memory transport and so measure the cache itself; the "tls"
// variants fetch from a loopback TLS server, whose HTTP and TLS work (both
// ends on the same two cores) then dominates. In those, every provider
// fetches the same document (tenants of one IdP), which the cache keeps
// once; "mem-distinct" gives each provider a key of its own (one IdP per
// tenant), the worst case for memory.
func BenchmarkWarmup(b *testing.B) {
	for _, tr := range []string{"mem", "mem-distinct", "tls"} {
		for _, n := range []int{10_000, 100_000} {
			b.Run(tr+"/"+strconv.Itoa(n), func(b *testing.B) {
				if (testing.Short() || tr == "mem-distinct") && n > 10_000 {
					b.Skip("-short, or distinct keys for 100,000")
				}
				for b.Loop() {
					benchWarmup(b, n, tr == "tls", tr == "mem-distinct")
				}
			})
		}
	}
}

func benchWarmup(b *testing.B, n int, useTLS, distinct bool) {
	idp := testidp.New()
	idp.SetKeys(testidp.DefaultPath, testidp.NewKey("ES256", "ec-1"))
	idp.SetHeader(testidp.DefaultPath, "Cache-Control", "max-age=86400")
	path := func(int) string { return testidp.DefaultPath }
	if distinct {
		path = func(i int) string { return "/p" + strconv.Itoa(i) + "/jwks.json" }
		for i := range n {
			idp.SetKeys(path(i), testidp.NewKey("ES256", "ec-"+strconv.Itoa(i)))
			idp.SetHeader(path(i), "Cache-Control", "max-age=86400")
		}
	}
	base := "https://idp.test"
	opts := Options{HTTPClient: idp.Client()}
	if useTLS {
		base = idp.StartTLS(b).URL
		opts = Options{
			RootCAs:          idp.CertPool(),
			AllowedAddresses: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		}
	}
	ready := make(chan struct{}, n)
	m, err := New(Options{
		HTTPClient:       opts.HTTPClient,
		RootCAs:          opts.RootCAs,
		AllowedAddresses: opts.AllowedAddresses,
		RefreshWorkers:   opts.RefreshWorkers,
		OnEvent: func(ev Event) {
			if ev.Kind == EventStateChanged && ev.To == StateReady {
				ready <- struct{}{}
			}
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()
	start := time.Now()
	ctx := context.Background()
	for i := range n {
		err := m.Register(ctx, Registration{TenantID: "t" + strconv.Itoa(i%100), ProviderID: "p" + strconv.Itoa(i), JWKSURL: base + path(i)})
		if err != nil {
			b.Fatal(err)
		}
	}
	// Ready events are the signal; events can be dropped when the queue is
	// full (see Options.OnEvent), so a slow poll of the snapshots backs
	// them up.
	poll := time.NewTicker(250 * time.Millisecond)
	defer poll.Stop()
	for got := 0; got < n; {
		select {
		case <-ready:
			got++
		case <-poll.C:
			loaded := 0
			for _, p := range m.providers.all() {
				if p.snap.Load() != nil {
					loaded++
				}
			}
			if loaded == n {
				got = n
			}
		}
	}
	took := time.Since(start)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	b.ReportMetric(took.Seconds(), "warm-s")
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), "heap-B/provider")
	b.ReportMetric(float64(runtime.NumGoroutine()-g0), "goroutines-added")
	if got := idp.TotalRequests(); got != n {
		b.Fatalf("IdP requests = %d, want %d", got, n)
	}
	runtime.KeepAlive(m)
}

var _ = fmt.Sprint

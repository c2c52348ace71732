package jwkscache

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkAttack2Collect measures one scrape (Collect into a drained
// channel) with n providers over tenants tenants.
func BenchmarkAttack2Collect(b *testing.B) {
	for _, c := range []struct{ n, tenants int }{{10_000, 10_000}, {100_000, 1_000}, {100_000, 100_000}} {
		b.Run(fmt.Sprintf("%d/%d", c.n, c.tenants), func(b *testing.B) {
			reg := prometheus.NewRegistry()
			m, err := New(Options{HTTPClient: &http.Client{Transport: atk2RT(atk2JWKS)}, Registerer: reg})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			for i := range c.n {
				tn := fmt.Sprint("tenant-", i%c.tenants)
				if err := m.Register(b.Context(), Registration{TenantID: tn, ProviderID: fmt.Sprint("p", i), JWKSURL: "https://idp.test/jwks"}); err != nil {
					b.Fatal(err)
				}
			}
			time.Sleep(2 * time.Second) // first loads fail
			col := m.collector
			ch := make(chan prometheus.Metric, 1024)
			done := make(chan int)
			go func() {
				n := 0
				for range ch {
					n++
				}
				done <- n
			}()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				col.Collect(ch)
			}
			b.StopTimer()
			close(ch)
			series := <-done
			b.ReportMetric(float64(series)/float64(b.N), "series/op")
		})
	}
}

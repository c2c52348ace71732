package controlplane_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"
)

// benchEnv is a control plane with one warm provider serving three keys.
func benchEnv(b *testing.B) (*env, *resp) {
	b.Helper()
	e := newEnv(b)
	e.register(b, "acme", "auth0", "k1", "k2", "k3")
	ok := e.doValid(b, "GET", prov+"/jwks", "")
	if ok.status != http.StatusOK {
		b.Fatal(ok.status)
	}
	return e, ok
}

// loopback measures GET path on h over a loopback HTTP server with a
// keep-alive client, in parallel: requests/s, allocs/op (client and server)
// and the 99th percentile latency.
func loopback(b *testing.B, h http.Handler, path string, want int, kv ...string) {
	srv := httptest.NewServer(h)
	defer srv.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	var (
		mu  sync.Mutex
		all []time.Duration
	)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		for i := 0; i+1 < len(kv); i += 2 {
			req.Header.Add(kv[i], kv[i+1])
		}
		lat := make([]time.Duration, 0, 4096)
		for pb.Next() {
			t0 := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			lat = append(lat, time.Since(t0))
			if resp.StatusCode != want {
				b.Errorf("status %d, want %d", resp.StatusCode, want)
				return
			}
		}
		mu.Lock()
		all = append(all, lat...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
	if len(all) > 0 {
		slices.Sort(all)
		b.ReportMetric(float64(all[len(all)*99/100]), "p99-ns")
	}
}

// BenchmarkJWKS serves a warm provider's key set over loopback.
func BenchmarkJWKS(b *testing.B) {
	e, _ := benchEnv(b)
	loopback(b, e.h, prov+"/jwks", http.StatusOK)
}

// BenchmarkJWKS304 revalidates it with If-None-Match.
func BenchmarkJWKS304(b *testing.B) {
	e, ok := benchEnv(b)
	loopback(b, e.h, prov+"/jwks", http.StatusNotModified, "If-None-Match", ok.header.Get("ETag"))
}

// BenchmarkNetHTTPBaseline serves the same bytes with the same headers
// from memory with a trivial handler: the cost of net/http itself.
func BenchmarkNetHTTPBaseline(b *testing.B) {
	_, ok := benchEnv(b)
	body := ok.body
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hd := w.Header()
		for _, name := range []string{"Content-Type", "Etag", "Last-Modified", "Cache-Control", "Age", "Content-Length", "X-Content-Type-Options"} {
			hd[name] = ok.header[name]
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
	})
	loopback(b, h, "/jwks", http.StatusOK)
}

// discardWriter is a ResponseWriter that keeps nothing, to measure the
// handler alone.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }

// BenchmarkJWKSHandler measures the handler alone, without net/http's
// connection handling: its own allocations per request.
func BenchmarkJWKSHandler(b *testing.B) {
	e, ok := benchEnv(b)
	for _, tt := range []struct {
		name string
		kv   []string
		want int
	}{
		{"200", nil, http.StatusOK},
		{"304", []string{"If-None-Match", ok.header.Get("ETag")}, http.StatusNotModified},
	} {
		b.Run(tt.name, func(b *testing.B) {
			req := httptest.NewRequest("GET", prov+"/jwks", nil)
			for i := 0; i+1 < len(tt.kv); i += 2 {
				req.Header.Add(tt.kv[i], tt.kv[i+1])
			}
			w := &discardWriter{h: make(http.Header)}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				e.h.ServeHTTP(w, req)
				if w.code != tt.want {
					b.Fatalf("status %d", w.code)
				}
			}
		})
	}
}

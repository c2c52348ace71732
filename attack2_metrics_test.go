package jwkscache

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func atk2JWKS(r *http.Request) *http.Response {
	return atk2Resp(r, 503, nil, "down")
}

// Two tenants with a provider of the same name, collapsed per tenant: each
// tenant's sums hold its own providers only.
func TestAttack2CollapseSameProviderName(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := New(Options{HTTPClient: &http.Client{Transport: atk2RT(atk2JWKS)}, Registerer: reg, MetricsProviderLimit: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, tp := range [][2]string{{"a", "auth0"}, {"b", "auth0"}, {"a", "okta"}} {
		if err := m.Register(t.Context(), Registration{TenantID: tp[0], ProviderID: tp[1], JWKSURL: "https://idp.test/" + tp[0] + "/" + tp[1]}); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		_, _ = m.Key(t.Context(), "b", "auth0", "x")
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
	a := mustValue(t, reg, metricLookups, prov("a", "", "result", "miss"))
	b := mustValue(t, reg, metricLookups, prov("b", "", "result", "miss"))
	if a != 0 || b != 3 {
		t.Errorf("misses a=%v b=%v, want 0 and 3", a, b)
	}
}

// Collect racing Register, Unregister, lookups and Close, on a pedantic
// registry (run with -race).
func TestAttack2CollectRaces(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := New(Options{HTTPClient: &http.Client{Transport: atk2RT(atk2JWKS)}, Registerer: reg, MetricsProviderLimit: 5})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				tn, pn := fmt.Sprint("t", w), fmt.Sprint("p", i%8)
				_ = m.Register(t.Context(), Registration{TenantID: tn, ProviderID: pn, JWKSURL: "https://idp.test/" + tn + "/" + pn})
				_, _ = m.Key(t.Context(), tn, pn, "k")
				_ = m.Unregister(t.Context(), tn, fmt.Sprint("p", (i+3)%8))
			}
		}()
	}
	for range 200 {
		if _, err := reg.Gather(); err != nil {
			t.Fatal(err)
		}
	}
	var cwg sync.WaitGroup
	cwg.Add(1)
	go func() {
		defer cwg.Done()
		for range 50 {
			_, _ = testutil.GatherAndCount(reg)
		}
	}()
	_ = m.Close()
	cwg.Wait()
	close(stop)
	wg.Wait()
	_ = strings.TrimSpace
}

package jwkscachetest_test

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jwkscache/jwkscache/jwkscachetest"
)

type discoveryDoc struct {
	Issuer  string `json:"issuer"`
	JWKSURI string `json:"jwks_uri"`
}

func getDiscovery(t *testing.T, c *http.Client, url string) (*http.Response, discoveryDoc) {
	t.Helper()
	resp, body := mustGet(t, c, url)
	var doc discoveryDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("discovery document %q: %v", body, err)
	}
	return resp, doc
}

// The discovery document of New names the IdP's issuer and key set, and
// follows the IdP's URL when it starts.
func TestDiscoveryFollowsURL(t *testing.T) {
	p := jwkscachetest.New()
	if p.URL() != jwkscachetest.InMemoryURL || p.Issuer() != p.URL() || p.Started() {
		t.Fatalf("unstarted: URL %q Issuer %q Started %v", p.URL(), p.Issuer(), p.Started())
	}
	resp, doc := getDiscovery(t, p.Client(), p.DiscoveryURL())
	if doc.Issuer != "https://idp.test" || doc.JWKSURI != "https://idp.test/jwks.json" || resp.Header.Get("Content-Type") != jwkscachetest.ContentTypeJSON {
		t.Errorf("unstarted discovery: %+v %v", doc, resp.Header)
	}
	etag := resp.Header.Get("ETag")

	base := start(t, p, true)
	if !p.Started() || p.Issuer() != base || p.JWKSURL() != base+"/jwks.json" || p.DiscoveryURL() != base+"/.well-known/openid-configuration" {
		t.Errorf("started: URL %q Issuer %q JWKSURL %q DiscoveryURL %q", base, p.Issuer(), p.JWKSURL(), p.DiscoveryURL())
	}
	c := tlsClient(t, p, "")
	resp, doc = getDiscovery(t, c, p.DiscoveryURL())
	if doc.Issuer != p.Issuer() || doc.JWKSURI != p.JWKSURL() || resp.Header.Get("ETag") == etag {
		t.Errorf("started discovery: %+v, ETag %q", doc, resp.Header.Get("ETag"))
	}
	// jwks_uri leads to the key set, and the issuer signs the claims.
	_, body := mustGet(t, c, doc.JWKSURI)
	if got := kids(parseJWKS(t, body)); len(got) != 1 || got[0] != "k1" || p.Claims("x").Issuer != doc.Issuer {
		t.Errorf("key set %v, claims issuer %q", got, p.Claims("x").Issuer)
	}

	// A fixed document does not follow the URL.
	p.SetDiscovery(jwkscachetest.DiscoveryPath, "https://evil.test", "https://evil.test/keys")
	if _, doc := getDiscovery(t, c, p.DiscoveryURL()); doc.Issuer != "https://evil.test" || doc.JWKSURI != "https://evil.test/keys" {
		t.Errorf("SetDiscovery: %+v", doc)
	}

	p.Close()
	if p.URL() != base || !p.Started() {
		t.Errorf("after Close: URL %q, Started %v", p.URL(), p.Started())
	}
	// Closed, the IdP still answers in memory.
	if resp, _ := mustGet(t, p.Client(), p.JWKSURL()); resp.StatusCode != http.StatusOK {
		t.Errorf("in memory after Close: %d", resp.StatusCode)
	}
}

func TestStartErrors(t *testing.T) {
	p := jwkscachetest.New()
	p.Close() // never started: no-op
	if err := p.Start(); err == nil || !strings.Contains(err.Error(), "after Close") {
		t.Errorf("Start after Close: %v", err)
	}

	p = jwkscachetest.New()
	start(t, p, true)
	if err := p.Start(); err == nil || !strings.Contains(err.Error(), "already started") {
		t.Errorf("second Start: %v", err)
	}
	if err := p.StartHTTP(); err == nil {
		t.Error("StartHTTP after Start succeeded")
	}
	p.Close()
	p.Close()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	if _, err := (&http.Client{Transport: tr}).Get(p.JWKSURL()); err == nil {
		t.Error("request after Close succeeded")
	}
}

// Close aborts the requests in progress, including those held by a Delay
// fault, and returns once they have ended.
func TestCloseAbortsRequests(t *testing.T) {
	p := jwkscachetest.New()
	start(t, p, true)
	p.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Delay: time.Hour})
	wrote := make(chan struct{})
	done := make(chan error, 1)
	c := tlsClient(t, p, "")
	go func() {
		ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
			WroteRequest: func(httptrace.WroteRequestInfo) { close(wrote) },
		})
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.JWKSURL(), nil)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	<-wrote
	p.Close() // would wait an hour if the delayed handler were not aborted
	if err := <-done; err == nil {
		t.Error("request in progress survived Close")
	}
}

func TestAllowedAddresses(t *testing.T) {
	p := jwkscachetest.New()
	a := p.AllowedAddresses()
	want := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	if len(a) != 2 || a[0] != want[0] || a[1] != want[1] {
		t.Fatalf("AllowedAddresses = %v", a)
	}
	a[0] = netip.Prefix{}
	if p.AllowedAddresses()[0] != want[0] {
		t.Error("AllowedAddresses is not a copy")
	}
	base := start(t, p, true)
	host := strings.TrimPrefix(base, "https://")
	ap, err := netip.ParseAddrPort(host)
	if err != nil {
		t.Fatal(err)
	}
	if !want[0].Contains(ap.Addr()) && !want[1].Contains(ap.Addr()) {
		t.Errorf("listening on %v, outside %v", ap.Addr(), want)
	}
}

func TestSetMaxAge(t *testing.T) {
	p := jwkscachetest.New()
	for d, want := range map[time.Duration]string{
		90 * time.Second:        "max-age=90",
		1500 * time.Millisecond: "max-age=1",
		0:                       "max-age=0",
		-time.Second:            "max-age=0",
	} {
		p.SetMaxAge(jwkscachetest.JWKSPath, d)
		if resp, _ := mustGet(t, p.Client(), p.JWKSURL()); resp.Header.Get("Cache-Control") != want {
			t.Errorf("SetMaxAge(%v): Cache-Control %q, want %q", d, resp.Header.Get("Cache-Control"), want)
		}
	}
	p.DelHeader(jwkscachetest.JWKSPath, "Cache-Control")
	if resp, _ := mustGet(t, p.Client(), p.JWKSURL()); resp.Header.Get("Cache-Control") != "" {
		t.Errorf("after DelHeader: %q", resp.Header.Get("Cache-Control"))
	}
}

// 304 revalidation over TLS, as a JWKS cache does it: with the ETag, then
// with Last-Modified, and a 200 once the key set changes.
func TestRevalidationOverTLS(t *testing.T) {
	p := jwkscachetest.New()
	start(t, p, true)
	c := tlsClient(t, p, "")
	p.SetLastModified(jwkscachetest.JWKSPath, time.Now().Add(-time.Hour))
	resp, _ := mustGet(t, c, p.JWKSURL())
	etag, lm := resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
	if etag == "" || lm == "" {
		t.Fatalf("validators: ETag %q Last-Modified %q", etag, lm)
	}
	for _, hdr := range [][]string{{"If-None-Match", etag}, {"If-Modified-Since", lm}} {
		resp, body := mustGet(t, c, p.JWKSURL(), hdr...)
		if resp.StatusCode != http.StatusNotModified || len(body) != 0 || resp.Header.Get("Cache-Control") != "max-age=300" {
			t.Errorf("%s: status %d, headers %v", hdr[0], resp.StatusCode, resp.Header)
		}
	}
	p.JWKS().Rotate("ES256")
	resp, body := mustGet(t, c, p.JWKSURL(), "If-None-Match", etag)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("ETag") == etag || len(parseJWKS(t, body).Keys) != 2 {
		t.Errorf("after rotation: status %d ETag %q", resp.StatusCode, resp.Header.Get("ETag"))
	}
	if n := p.Requests(jwkscachetest.JWKSPath); n != 4 {
		t.Errorf("Requests = %d, want 4", n)
	}
}

func TestRequestCounts(t *testing.T) {
	p := jwkscachetest.New()
	c := p.Client()
	mustGet(t, c, p.JWKSURL())
	mustGet(t, c, p.JWKSURL()+"?x=1") // the query is not part of the path
	mustGet(t, c, p.DiscoveryURL())
	p.SetFault("/broken", jwkscachetest.Fault{Refuse: true})
	if _, _, err := do(t, c, http.MethodGet, p.URL()+"/broken"); err == nil {
		t.Error("Refuse: no error")
	}
	want := map[string]int{jwkscachetest.JWKSPath: 2, jwkscachetest.DiscoveryPath: 1, "/broken": 1}
	got := p.RequestCounts()
	if !maps.Equal(got, want) || p.TotalRequests() != 4 {
		t.Errorf("RequestCounts = %v, TotalRequests = %d", got, p.TotalRequests())
	}
	got["/x"] = 1
	if _, ok := p.RequestCounts()["/x"]; ok {
		t.Error("RequestCounts is not a copy")
	}
	p.ResetCounters()
	if len(p.RequestCounts()) != 0 {
		t.Errorf("after ResetCounters: %v", p.RequestCounts())
	}
}

// The in-memory transport reports a Delay cut short by the request
// context as a context error, and counts the request.
func TestRoundTripDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := jwkscachetest.New()
		p.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Delay: time.Hour, Count: 1})
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.JWKSURL(), nil)
		if _, err := p.RoundTrip(req); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v", err)
		}
		if p.Requests(jwkscachetest.JWKSPath) != 1 {
			t.Errorf("Requests = %d", p.Requests(jwkscachetest.JWKSPath))
		}
	})
}

package jwkscache

// Tests written after a mutation audit of the suite: each pins behaviour
// that a deliberate change to the code could break without any other test
// failing.

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"github.com/jwkscache/jwkscache/internal/testidp"
)

// Failing providers beyond the workers they may hold wait in line; each
// slot released goes to the next, so every one of them recovers once the
// IdP does, and none serves keys past its stale window while it waits.
func TestRegressionFailingLineRecoversAndExpires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		idp.SetKeys(mtPath, testidp.NewKey("ES256", "k"))
		idp.SetHeader(mtPath, "Cache-Control", "max-age=60")
		// Two workers: one slot for failing providers.
		m := mtManager(t, idp, Options{RefreshWorkers: 2})
		const n = 20
		for i := range n {
			r := Registration{TenantID: "t" + itoa(i), ProviderID: "p", JWKSURL: mtURL, StaleWhileError: 2 * time.Minute}
			if err := m.Register(t.Context(), r); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		// Every fetch now hangs until its 8 s deadline: twenty providers
		// share one slot, so most of them wait in line.
		idp.SetFault(mtPath, testidp.Fault{Delay: time.Hour})
		time.Sleep(60*time.Second + 2*time.Minute + 5*time.Second) // past every expiry + window
		synctest.Wait()
		for i := range n {
			if _, err := m.Key(t.Context(), "t"+itoa(i), "p", "k"); !errors.Is(err, ErrNoKeys) {
				t.Fatalf("provider %d served keys past its stale window while waiting for a slot: err = %v", i, err)
			}
		}
		idp.ClearFault(mtPath)
		time.Sleep(15 * time.Minute)
		synctest.Wait()
		for i := range n {
			if st := mtStatus(t, m, "t"+itoa(i), "p"); st.State != StateReady {
				t.Errorf("provider %d 15 min after the IdP recovered: %v, %d errors", i, st.State, st.ErrorCount)
			}
		}
	})
}

// Every change of where or how keys are fetched reloads at once; other
// changes wait for the next scheduled fetch.
func TestRegressionSourceChangeReloads(t *testing.T) {
	pin := testidp.SPKIPin(testidp.New().Leaf())
	cases := []struct {
		name   string
		change func(*Registration)
		reload bool
	}{
		{"PinnedSPKI", func(r *Registration) { r.PinnedSPKI = []string{pin} }, true},
		{"AllowedDomains", func(r *Registration) { r.AllowedDomains = []string{"idp.test"} }, true},
		{"AllowHTTP", func(r *Registration) { r.AllowHTTP = true }, true},
		{"MaxResponseBytes", func(r *Registration) { r.MaxResponseBytes = 64 << 10 }, true},
		{"MaxRedirects", func(r *Registration) { r.MaxRedirects = 1 }, true},
		{"JWKSURL", func(r *Registration) { r.JWKSURL = mtHost + "/other" }, true},
		{"RefreshEarly", func(r *Registration) { r.RefreshEarly = time.Minute }, false},
		{"MinTTL", func(r *Registration) { r.MinTTL = time.Minute }, false},
		{"Issuer with a JWKS URL", func(r *Registration) { r.Issuer = "https://issuer.example" }, false},
		{"nothing", func(r *Registration) {}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				idp, keys := testidp.NewDefault()
				idp.SetKeys("/other", keys...)
				m := mtManager(t, idp, Options{AllowHTTP: true})
				reg := Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: mtURL}
				if err := m.Register(t.Context(), reg); err != nil {
					t.Fatal(err)
				}
				synctest.Wait()
				before := idp.TotalRequests()
				tc.change(&reg)
				if err := m.Register(t.Context(), reg); err != nil {
					t.Fatal(err)
				}
				synctest.Wait()
				got := idp.TotalRequests() - before
				if tc.reload && got != 1 || !tc.reload && got != 0 {
					t.Errorf("changing %s cost %d requests at once, want reload=%v", tc.name, got, tc.reload)
				}
			})
		})
	}
}

// An Issuer-only provider re-registered with a new Issuer discovers anew,
// and the old IdP's keys never verify tokens of the new issuer.
func TestRegressionDiscoveryIssuerChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := testidp.New()
		a, b := testidp.NewKey("ES256", "a"), testidp.NewKey("ES256", "b")
		idp.SetKeys("/a/keys", a)
		idp.SetKeys("/b/keys", b)
		idp.SetDiscovery("/a/.well-known/openid-configuration", mtHost+"/a", mtHost+"/a/keys")
		idp.SetDiscovery("/b/.well-known/openid-configuration", mtHost+"/b", mtHost+"/b/keys")
		idp.SetFault("/b/keys", testidp.Fault{Status: 503}) // the new IdP's keys do not load
		m := mtManager(t, idp, Options{})
		reg := Registration{TenantID: mtTenant, ProviderID: mtProvider, Issuer: mtHost + "/a"}
		if err := m.Register(t.Context(), reg); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		reg.Issuer = mtHost + "/b"
		if err := m.Register(t.Context(), reg); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if got := idp.Requests("/b/.well-known/openid-configuration"); got != 1 {
			t.Errorf("new issuer's discovery fetched %d times at once, want 1", got)
		}
		forged := a.Sign(jwt.MapClaims{"iss": mtHost + "/b"})
		if _, err := jwt.Parse(forged, m.Keyfunc(mtTenant, mtProvider)); err == nil {
			t.Error("the old IdP's key verified a token of the new issuer")
		}
	})
}

// A kid shared by two keys of one family is ambiguous in large (indexed)
// sets too: never "the first".
func TestRegressionDuplicateKIDLargeSet(t *testing.T) {
	var keys []jose.JSONWebKey
	for i := range smallSet + 2 {
		k := testidp.NewUniqueKey("ES256", "k"+itoa(i)).Public
		if i >= smallSet {
			k.KeyID = "dup"
		}
		keys = append(keys, k)
	}
	raw, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	ks, err := parseKeySet(raw)
	if err != nil {
		t.Fatal(err)
	}
	if ks.byKID == nil {
		t.Fatalf("a set of %d keys is not indexed", len(ks.keys))
	}
	if k := ks.find("dup"); k != nil {
		t.Error("find took one of two keys sharing a kid")
	}
	if _, err := ks.lookup("dup"); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("lookup(dup) err = %v, want ErrKeyNotFound", err)
	}
	if _, err := ks.lookupAlg("dup", "ES256"); err == nil {
		t.Error("lookupAlg took one of two ES256 keys sharing a kid")
	}
	if k := ks.find("k0"); k == nil || k.jwk.KeyID != "k0" {
		t.Error("find(k0) in the indexed set")
	}
}

// Key with an empty kid answers only when the set has exactly one key.
func TestRegressionKeyEmptyKID(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := testidp.NewDefault() // three keys
		single := testidp.NewKey("ES256", "only")
		idp.SetKeys("/single", single)
		m := mtManager(t, idp, Options{})
		mtLoad(t, m, mtTenant, "many", mtURL)
		mtLoad(t, m, mtTenant, "one", mtHost+"/single")
		if k, err := m.Key(t.Context(), mtTenant, "many", ""); !errors.Is(err, ErrKeyNotFound) {
			t.Errorf("Key(\"\") on three keys = %q, %v; want ErrKeyNotFound", k.KeyID, err)
		}
		if k, err := m.Key(t.Context(), mtTenant, "one", ""); err != nil || k.KeyID != "only" {
			t.Errorf("Key(\"\") on one key = %q, %v; want the key", k.KeyID, err)
		}
	})
}

// HMAC and none tokens are refused before any lookup: an unknown kid with
// them costs the IdP nothing.
func TestRegressionUnsupportedAlgCostsNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := testidp.NewDefault()
		m := mtManager(t, idp, Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		before := idp.TotalRequests()
		hs := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "x"})
		hs.Header["kid"] = "unknown-1"
		rawHS, err := hs.SignedString([]byte("secret"))
		if err != nil {
			t.Fatal(err)
		}
		none := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "x"})
		none.Header["kid"] = "unknown-2"
		rawNone, err := none.SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		for _, raw := range []string{rawHS, rawNone} {
			if _, err := jwt.Parse(raw, m.Keyfunc(mtTenant, mtProvider)); err == nil {
				t.Error("an HMAC or none token verified")
			}
		}
		synctest.Wait()
		if got := idp.TotalRequests() - before; got != 0 {
			t.Errorf("unsupported-alg tokens with unknown kids cost %d requests", got)
		}
	})
}

// With pins, a response that did not come over TLS fails, whatever the
// transport: here the built-in one follows an https -> http redirect.
func TestRegressionPinsRefuseRedirectToHTTP(t *testing.T) {
	idp, srv := tlsIdP(t)
	plain := idp.Start(t)
	idp.SetRedirect("/to-http", plain.URL+jwksPath)
	f := newTestFetcher(t, Options{RootCAs: idp.CertPool(), AllowedAddresses: loopbackPrefixes, AllowHTTP: true})
	reg := testReg(t, f, func(r *Registration) {
		r.PinnedSPKI = []string{testidp.SPKIPin(idp.Leaf())}
	})
	reg.AllowHTTP = true // the pins' https rule is Register's; this is the fetch-time check
	_, err := f.fetchKeys(t.Context(), reg, srv.URL+"/to-http", validators{})
	wantFetchError(t, err, ClassPin)
	wantIs(t, err, true, ErrSecurityPolicy)
}

// Close does not wait for user code: with OnEvent blocked in a callback it
// returns nil at once, and the delivery goroutine exits as soon as the
// callback returns, delivering nothing more (issue 6, item 1).
func TestRegressionCloseDoesNotWaitForCallbacks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := testidp.NewDefault()
		release := make(chan struct{})
		var once sync.Once
		blocked := make(chan struct{})
		var after atomic.Int32
		m, err := New(Options{HTTPClient: idp.Client(), OnEvent: func(ev Event) {
			if ev.Kind == EventKeysChanged {
				once.Do(func() { close(blocked) })
				<-release
				return
			}
			select {
			case <-blocked:
				after.Add(1)
			default:
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Register(t.Context(), Registration{TenantID: mtTenant, ProviderID: mtProvider, JWKSURL: mtURL}); err != nil {
			t.Fatal(err)
		}
		<-blocked
		start := time.Now()
		err = m.Close()
		if took := time.Since(start); took != 0 {
			t.Errorf("Close returned after %v with OnEvent blocked, want at once", took)
		}
		if err != nil {
			t.Errorf("Close = %v, want nil", err)
		}
		close(release)
		synctest.Wait()
		if n := after.Load(); n != 0 {
			t.Errorf("%d events delivered after the blocked one returned, past Close", n)
		}
	})
}

// A 304 carrying a new ETag updates the validators sent next time.
func TestRegression304UpdatesValidators(t *testing.T) {
	rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		h := http.Header{"Etag": {`"v2"`}, "Cache-Control": {"max-age=120"}}
		return &http.Response{StatusCode: 304, Status: "304 Not Modified", Header: h, Body: io.NopCloser(strings.NewReader("")), Request: r}, nil
	})
	f := newTestFetcher(t, Options{HTTPClient: &http.Client{Transport: rt}})
	reg := testReg(t, f, nil)
	res, err := f.fetchKeys(t.Context(), reg, reg.JWKSURL, validators{ETag: `"v1"`, LastModified: "Mon, 01 Jan 2024 00:00:00 GMT"})
	if err != nil {
		t.Fatal(err)
	}
	if !res.NotModified || res.Validators.ETag != `"v2"` || res.Validators.LastModified != "Mon, 01 Jan 2024 00:00:00 GMT" {
		t.Errorf("304 result: notModified=%v validators=%+v", res.NotModified, res.Validators)
	}
	if res.Fresh.TTL != 120*time.Second {
		t.Errorf("304 freshness = %v, want 2m from its own headers", res.Fresh.TTL)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// The negative cache never holds more than its bound, even of live kids.
func TestRegressionNegativeCacheBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := testidp.NewDefault()
		m := mtManager(t, idp, Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		p := m.providers.get(mtTenant, mtProvider)
		for i := range maxNegativeKIDs + 50 {
			p.rememberMissing("live-" + itoa(i))
		}
		neg := p.negativeKIDs()
		n, newest := len(neg), neg["live-"+itoa(maxNegativeKIDs+49)]
		if n != maxNegativeKIDs || newest.IsZero() {
			t.Errorf("negative cache holds %d entries (newest kept: %v), want %d", n, !newest.IsZero(), maxNegativeKIDs)
		}
	})
}

// Failure backoff is jittered, so providers failing together do not retry
// in lockstep, and stays within [d/2, d].
func TestRegressionFailureBackoffJitter(t *testing.T) {
	for n := 1; n <= 12; n++ {
		d := min(2*failureBackoffMin<<(n-1), failureBackoffMax)
		seen := map[time.Duration]bool{}
		for range 200 {
			got := failureBackoff(n, errors.New("x"))
			if got < d/2 || got > d {
				t.Fatalf("failureBackoff(%d) = %v, want in [%v, %v]", n, got, d/2, d)
			}
			seen[got] = true
		}
		if len(seen) < 50 {
			t.Errorf("failureBackoff(%d) took only %d distinct values in 200 draws", n, len(seen))
		}
	}
}

// Status counts misses, lists each key's algorithms, names the discovery
// URL before discovery succeeds, and starts a re-registered pair's hits at
// zero.
func TestRegressionStatusDetails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		m := mtManager(t, idp, Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		for range 3 {
			mtMustKey(t, m, mtTenant, mtProvider, keys[0])
		}
		m.Key(t.Context(), mtTenant, mtProvider, "nope")
		synctest.Wait()
		st := mtStatus(t, m, mtTenant, mtProvider)
		if st.Hits != 3 || st.Misses == 0 {
			t.Errorf("hits=%d misses=%d, want 3 and > 0", st.Hits, st.Misses)
		}
		for _, k := range st.Keys {
			if len(k.Algs) == 0 {
				t.Errorf("key %s lists no algorithms", k.KID)
			}
		}
		// Unregister and register the pair again: its hits start at zero
		// although it reuses the counter slot.
		if err := m.Unregister(t.Context(), mtTenant, mtProvider); err != nil {
			t.Fatal(err)
		}
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		if st := mtStatus(t, m, mtTenant, mtProvider); st.Hits != 0 {
			t.Errorf("re-registered pair starts with %d hits", st.Hits)
		}

		// Discovery that fails: the status names the discovery URL.
		idp.SetFault("/d/.well-known/openid-configuration", testidp.Fault{Status: 500})
		if err := m.Register(context.Background(), Registration{TenantID: mtTenant, ProviderID: "disc", Issuer: mtHost + "/d"}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if st := mtStatus(t, m, mtTenant, "disc"); st.JWKSURL != mtHost+"/d/.well-known/openid-configuration" {
			t.Errorf("JWKSURL before discovery = %q", st.JWKSURL)
		}
	})
}

// A body served as text/html is refused even when it parses as a JWKS: it
// is an error page or a login page that happens to look right.
func TestRegressionHTMLContentTypeRefused(t *testing.T) {
	idp, srv := tlsIdP(t)
	raw, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{testidp.NewKey("ES256", "k").Public}})
	if err != nil {
		t.Fatal(err)
	}
	idp.SetBody("/html", raw, "text/html; charset=utf-8")
	f := newTestFetcher(t, tlsOptions(idp))
	_, err = f.fetchKeys(t.Context(), testReg(t, f, nil), srv.URL+"/html", validators{})
	wantFetchError(t, err, ClassParse)
}

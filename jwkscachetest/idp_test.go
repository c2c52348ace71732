package jwkscachetest_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	jwt "github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache/jwkscachetest"
)

// rsaPoolSize is the documented number of distinct RSA keys NewKey hands out.
const rsaPoolSize = 4

var allAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// mode is one way of talking to an IdP: in memory or over a real socket.
type mode struct {
	name string
	// start returns the base URL at which p can be reached.
	start func(t *testing.T, p *jwkscachetest.IdP) string
	// client returns a new client, with its own connections, that does not
	// follow redirects.
	client func(t *testing.T, p *jwkscachetest.IdP) *http.Client
}

// setup starts p and returns a client and the base URL.
func (m mode) setup(t *testing.T, p *jwkscachetest.IdP) (*http.Client, string) {
	return m.client(t, p), m.start(t, p)
}

var modes = []mode{
	{
		name:  "roundtrip",
		start: func(*testing.T, *jwkscachetest.IdP) string { return "https://idp.test" },
		client: func(_ *testing.T, p *jwkscachetest.IdP) *http.Client {
			c := p.Client()
			c.CheckRedirect = noRedirect
			return c
		},
	},
	{
		name:   "tls",
		start:  func(t *testing.T, p *jwkscachetest.IdP) string { return start(t, p, true) },
		client: func(t *testing.T, p *jwkscachetest.IdP) *http.Client { return tlsClient(t, p, "") },
	},
}

// newDefault returns an IdP serving at JWKSPath an RS256 key "rsa-1", an
// ES256 key "ec-1" and an EdDSA key "ed-1" with "Cache-Control:
// max-age=300", and those keys.
func newDefault() (*jwkscachetest.IdP, []*jwkscachetest.Key) {
	p := jwkscachetest.NewEmpty()
	keys := []*jwkscachetest.Key{
		jwkscachetest.NewKey("RS256", "rsa-1"),
		jwkscachetest.NewKey("ES256", "ec-1"),
		jwkscachetest.NewKey("EdDSA", "ed-1"),
	}
	p.JWKS().Set(keys...)
	p.SetMaxAge(jwkscachetest.JWKSPath, 300*time.Second)
	return p, keys
}

// start starts p over TLS (or plain HTTP) until the test ends and returns
// its URL.
func start(t testing.TB, p *jwkscachetest.IdP, useTLS bool) string {
	t.Helper()
	startFn := p.Start
	if !useTLS {
		startFn = p.StartHTTP
	}
	if err := startFn(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p.URL()
}

func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// tlsClient returns a client with a fresh transport trusting only the IdP's
// CA, with transparent decompression off.
func tlsClient(t *testing.T, p *jwkscachetest.IdP, serverName string) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:    &tls.Config{RootCAs: p.CertPool(), ServerName: serverName},
		DisableCompression: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, CheckRedirect: noRedirect}
}

// do sends a request and reads the whole response body.
func do(t *testing.T, c *http.Client, method, url string, hdr ...string) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// mustGet is do with GET, failing the test on a transport error.
func mustGet(t *testing.T, c *http.Client, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	resp, body, err := do(t, c, http.MethodGet, url, hdr...)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp, body
}

func parseJWKS(t *testing.T, body []byte) jose.JSONWebKeySet {
	t.Helper()
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		t.Fatalf("parsing JWKS %q: %v", body, err)
	}
	return set
}

func kids(set jose.JSONWebKeySet) []string {
	var out []string
	for _, k := range set.Keys {
		out = append(out, k.KeyID)
	}
	return out
}

func verify(t *testing.T, tok string, alg string, key any) *jwt.Token {
	t.Helper()
	parsed, err := jwt.Parse(tok, func(*jwt.Token) (any, error) { return key, nil }, jwt.WithValidMethods([]string{alg}))
	if err != nil {
		t.Fatalf("verifying %s token: %v", alg, err)
	}
	return parsed
}

func TestKeysSignAndVerify(t *testing.T) {
	p := jwkscachetest.NewEmpty()
	for _, alg := range allAlgs {
		t.Run(alg, func(t *testing.T) {
			k := jwkscachetest.NewKey(alg, "kid-"+alg)
			if k.Public.KeyID != k.KID || k.Public.Algorithm != alg || k.Public.Use != "sig" || !k.Public.IsPublic() {
				t.Fatalf("bad public JWK: %+v", k.Public)
			}
			tok := k.Sign(jwt.MapClaims{"sub": "alice"})
			parsed := verify(t, tok, alg, k.Public.Key)
			if parsed.Header["kid"] != k.KID || parsed.Header["alg"] != alg {
				t.Errorf("header = %v", parsed.Header)
			}
			if sub, _ := parsed.Claims.GetSubject(); sub != "alice" {
				t.Errorf("sub = %q", sub)
			}

			noKID := verify(t, k.SignWithoutKID(jwt.RegisteredClaims{Issuer: "iss"}), alg, k.Public.Key)
			if _, ok := noKID.Header["kid"]; ok {
				t.Errorf("SignWithoutKID header has kid: %v", noKID.Header)
			}

			// The published JWK, parsed back from the wire, verifies too.
			path := "/" + alg
			p.KeySet(path).Set(k)
			_, body := mustGet(t, p.Client(), "https://idp.test"+path)
			set := parseJWKS(t, body)
			got := set.Key(k.KID)
			if len(got) != 1 || got[0].Algorithm != alg {
				t.Fatalf("published keys = %+v", set.Keys)
			}
			verify(t, tok, alg, got[0].Key)
		})
	}
}

func TestSignWithHeader(t *testing.T) {
	k := jwkscachetest.NewKey("ES256", "e")
	tok := k.SignWith(jwt.MapClaims{}, map[string]any{"typ": nil, "x": "y"})
	parsed := verify(t, tok, "ES256", k.Public.Key)
	if _, ok := parsed.Header["typ"]; ok || parsed.Header["x"] != "y" {
		t.Errorf("header = %v", parsed.Header)
	}
}

func TestNewKeyUnknownAlgPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("NewKey did not panic")
		}
	}()
	jwkscachetest.NewKey("HS256", "x")
}

func TestRSAPool(t *testing.T) {
	seen := map[string]bool{}
	moduli := map[string]bool{}
	for i := range rsaPoolSize + 2 {
		k := jwkscachetest.NewKey("RS256", "r"+string(rune('a'+i)))
		if seen[k.KID] {
			t.Fatalf("duplicate kid %q", k.KID)
		}
		seen[k.KID] = true
		moduli[k.Signer.(*rsa.PrivateKey).N.String()] = true
	}
	if len(moduli) > rsaPoolSize {
		t.Errorf("%d distinct RSA keys, pool size %d", len(moduli), rsaPoolSize)
	}
	u := jwkscachetest.NewUniqueKey("RS256", "u")
	if moduli[u.Signer.(*rsa.PrivateKey).N.String()] {
		t.Error("NewUniqueKey reused pooled key material")
	}
	// A token from one key does not verify under a different key.
	if _, err := jwt.Parse(u.Sign(jwt.MapClaims{}), func(*jwt.Token) (any, error) {
		return jwkscachetest.NewKey("RS256", "other").Public.Key, nil
	}); err == nil {
		t.Error("token verified under another key")
	}
}

func TestServeDefault(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			p, keys := newDefault()
			c, base := m.setup(t, p)
			resp, body := mustGet(t, c, base+jwkscachetest.JWKSPath)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status = %d", resp.StatusCode)
			}
			if ct := resp.Header.Get("Content-Type"); ct != jwkscachetest.ContentTypeJWKS {
				t.Errorf("Content-Type = %q", ct)
			}
			if cc := resp.Header.Get("Cache-Control"); cc != "max-age=300" {
				t.Errorf("Cache-Control = %q", cc)
			}
			if resp.Header.Get("Date") == "" {
				t.Error("no Date header")
			}
			if resp.ContentLength != int64(len(body)) {
				t.Errorf("ContentLength = %d, body %d bytes", resp.ContentLength, len(body))
			}
			if got, want := kids(parseJWKS(t, body)), []string{"rsa-1", "ec-1", "ed-1"}; !slices.Equal(got, want) {
				t.Errorf("kids = %v, want %v", got, want)
			}
			if len(keys) != 3 || keys[0].Alg != "RS256" || keys[1].Alg != "ES256" || keys[2].Alg != "EdDSA" {
				t.Errorf("keys = %+v", keys)
			}
			if et := resp.Header.Get("ETag"); !regexp.MustCompile(`^"[0-9a-f]{32}"$`).MatchString(et) || et != p.ETag(jwkscachetest.JWKSPath) {
				t.Errorf("ETag = %q, ETag() = %q", et, p.ETag(jwkscachetest.JWKSPath))
			}

			// HEAD: same headers, no body.
			resp, body, err := do(t, c, http.MethodHead, base+jwkscachetest.JWKSPath)
			if err != nil || resp.StatusCode != http.StatusOK || len(body) != 0 || resp.ContentLength <= 0 {
				t.Errorf("HEAD: err %v, resp %+v, body %q", err, resp, body)
			}

			// Unknown path and bad method.
			if resp, _ := mustGet(t, c, base+"/nope"); resp.StatusCode != http.StatusNotFound {
				t.Errorf("unknown path: %d", resp.StatusCode)
			}
			resp, _, err = do(t, c, http.MethodPost, base+jwkscachetest.JWKSPath)
			if err != nil || resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("POST: err %v, resp %+v", err, resp)
			}
			if n := p.Requests(jwkscachetest.JWKSPath); n != 3 {
				t.Errorf("Requests = %d, want 3", n)
			}
		})
	}
}

func TestEmptyIdP(t *testing.T) {
	p := jwkscachetest.NewEmpty()
	resp, _ := mustGet(t, p.Client(), "https://idp.test/jwks.json")
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("status = %d", resp.StatusCode)
	}
	p.SetHeader("/jwks.json", "Cache-Control", "max-age=1") // headers alone do not create content
	if resp, _ := mustGet(t, p.Client(), "http://x/jwks.json"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("status = %d", resp.StatusCode)
	}
	p.KeySet("/jwks.json").Set()
	resp, body := mustGet(t, p.Client(), "http://x/jwks.json")
	if resp.StatusCode != http.StatusOK || string(body) != `{"keys":[]}` {
		t.Errorf("status %d body %q", resp.StatusCode, body)
	}
}

func TestETag(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			p, _ := newDefault()
			c, base := m.setup(t, p)
			url := base + jwkscachetest.JWKSPath
			resp, _ := mustGet(t, c, url)
			etag := resp.Header.Get("ETag")
			for _, inm := range []string{etag, `"x", ` + etag, "*", "W/" + etag, `"a"` + "," + etag + `,"b"`} {
				resp, body := mustGet(t, c, url, "If-None-Match", inm)
				if resp.StatusCode != http.StatusNotModified || len(body) != 0 {
					t.Errorf("If-None-Match %s: status %d body %q", inm, resp.StatusCode, body)
				}
				if resp.Header.Get("ETag") != etag || resp.Header.Get("Cache-Control") != "max-age=300" {
					t.Errorf("304 headers = %v", resp.Header)
				}
			}
			if resp, _ := mustGet(t, c, url, "If-None-Match", `"other"`); resp.StatusCode != http.StatusOK {
				t.Errorf("non-matching If-None-Match: status %d", resp.StatusCode)
			}

			// The ETag follows the body.
			p.JWKS().Rotate("ES256")
			resp, _ = mustGet(t, c, url, "If-None-Match", etag)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("ETag") == etag {
				t.Errorf("after rotation: status %d ETag %q (old %q)", resp.StatusCode, resp.Header.Get("ETag"), etag)
			}

			p.SetETag(jwkscachetest.JWKSPath, false)
			resp, _ = mustGet(t, c, url, "If-None-Match", p.ETag(jwkscachetest.JWKSPath))
			if resp.StatusCode != http.StatusOK || resp.Header.Get("ETag") != "" || p.ETag(jwkscachetest.JWKSPath) != "" {
				t.Errorf("ETag off: status %d ETag %q", resp.StatusCode, resp.Header.Get("ETag"))
			}
		})
	}
}

func TestLastModified(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := newDefault()
		c := p.Client()
		url := "https://idp.test" + jwkscachetest.JWKSPath
		if resp, _ := mustGet(t, c, url); resp.Header.Get("Last-Modified") != "" {
			t.Fatalf("Last-Modified sent by default: %v", resp.Header)
		}
		t0 := time.Now().Add(-time.Hour)
		p.SetLastModified(jwkscachetest.JWKSPath, t0)
		resp, _ := mustGet(t, c, url)
		lm := resp.Header.Get("Last-Modified")
		if lm != t0.UTC().Format(http.TimeFormat) {
			t.Fatalf("Last-Modified = %q", lm)
		}
		cases := []struct {
			hdr  []string
			want int
		}{
			{[]string{"If-Modified-Since", lm}, http.StatusNotModified},
			{[]string{"If-Modified-Since", t0.Add(time.Minute).Format(http.TimeFormat)}, http.StatusNotModified},
			{[]string{"If-Modified-Since", t0.Add(-time.Second).Format(http.TimeFormat)}, http.StatusOK},
			{[]string{"If-Modified-Since", "garbage"}, http.StatusOK},
			// If-None-Match takes precedence over If-Modified-Since.
			{[]string{"If-Modified-Since", lm, "If-None-Match", `"other"`}, http.StatusOK},
		}
		for _, tc := range cases {
			if resp, _ := mustGet(t, c, url, tc.hdr...); resp.StatusCode != tc.want {
				t.Errorf("%v: status %d, want %d", tc.hdr, resp.StatusCode, tc.want)
			}
		}

		// A body change moves Last-Modified to now; an identical body does not.
		<-time.After(90 * time.Second)
		p.JWKS().Set(p.JWKS().Keys()...)
		if resp, _ := mustGet(t, c, url); resp.Header.Get("Last-Modified") != lm {
			t.Errorf("Last-Modified changed without a body change: %q", resp.Header.Get("Last-Modified"))
		}
		p.JWKS().Rotate("EdDSA")
		resp, _ = mustGet(t, c, url, "If-Modified-Since", lm)
		want := time.Now().UTC().Truncate(time.Second).Format(http.TimeFormat)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Last-Modified") != want {
			t.Errorf("after rotation: status %d Last-Modified %q, want %q", resp.StatusCode, resp.Header.Get("Last-Modified"), want)
		}

		p.SetLastModified(jwkscachetest.JWKSPath, time.Time{})
		if resp, _ := mustGet(t, c, url, "If-Modified-Since", want); resp.StatusCode != http.StatusOK || resp.Header.Get("Last-Modified") != "" {
			t.Errorf("Last-Modified off: status %d headers %v", resp.StatusCode, resp.Header)
		}
	})
}

func TestHeaders(t *testing.T) {
	p, _ := newDefault()
	c := p.Client()
	url := "https://idp.test" + jwkscachetest.JWKSPath
	date := "Sat, 01 Jan 2000 00:00:00 GMT"
	p.SetHeader(jwkscachetest.JWKSPath, "Expires", "Sun, 02 Jan 2000 00:00:00 GMT")
	p.SetHeader(jwkscachetest.JWKSPath, "Age", "10")
	p.SetHeader(jwkscachetest.JWKSPath, "Date", date)
	p.DelHeader(jwkscachetest.JWKSPath, "Cache-Control")
	resp, _ := mustGet(t, c, url)
	if resp.Header.Get("Age") != "10" || resp.Header.Get("Date") != date || resp.Header.Get("Expires") == "" || resp.Header.Get("Cache-Control") != "" {
		t.Errorf("200 headers = %v", resp.Header)
	}
	resp, _ = mustGet(t, c, url, "If-None-Match", resp.Header.Get("ETag"))
	if resp.StatusCode != http.StatusNotModified || resp.Header.Get("Age") != "10" || resp.Header.Get("Date") != date {
		t.Errorf("304: status %d headers %v", resp.StatusCode, resp.Header)
	}
}

func TestContentManagement(t *testing.T) {
	p := jwkscachetest.NewEmpty()
	c := p.Client()
	get := func(path string) (*http.Response, []byte) { return mustGet(t, c, "https://idp.test"+path) }

	a, b := jwkscachetest.NewKey("ES256", "a"), jwkscachetest.NewKey("EdDSA", "b")
	p.KeySet("/t2/keys").Set(a)
	p.KeySet("/t2/keys").Add(b)
	if _, body := get("/t2/keys"); !slices.Equal(kids(parseJWKS(t, body)), []string{"a", "b"}) {
		t.Errorf("after AddKey: %s", body)
	}
	p.KeySet("/t2/keys").Remove("a")
	if _, body := get("/t2/keys"); !slices.Equal(kids(parseJWKS(t, body)), []string{"b"}) {
		t.Errorf("after RemoveKey: %s", body)
	}

	p.SetBody("/fixture", []byte(`{"keys":"nope"}`), "")
	if resp, body := get("/fixture"); string(body) != `{"keys":"nope"}` || resp.Header.Get("Content-Type") != jwkscachetest.ContentTypeJSON {
		t.Errorf("SetBody: %q %v", body, resp.Header)
	}
	if p.KeySet("/fixture").Keys() != nil {
		t.Error("Keys of a raw body path should be nil")
	}
	p.SetBody("/fixture", []byte("x"), "text/plain")
	if resp, body := get("/fixture"); string(body) != "x" || resp.Header.Get("Content-Type") != "text/plain" {
		t.Errorf("SetBody: %q %v", body, resp.Header)
	}

	p.SetDiscovery("/.well-known/openid-configuration", "https://idp.test", "https://idp.test/t2/keys")
	resp, body := get("/.well-known/openid-configuration")
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || doc.Issuer != "https://idp.test" || doc.JWKSURI != "https://idp.test/t2/keys" ||
		resp.Header.Get("Content-Type") != jwkscachetest.ContentTypeJSON {
		t.Errorf("discovery: %v %s %v", err, body, resp.Header)
	}
}

func TestRotate(t *testing.T) {
	p := jwkscachetest.NewEmpty()
	var got [][]string
	for range 3 {
		p.KeySet("/r").Rotate("ES256")
		_, body := mustGet(t, p.Client(), "https://idp.test/r")
		got = append(got, kids(parseJWKS(t, body)))
	}
	k4 := p.KeySet("/r").Rotate("EdDSA")
	if k4.KID != "k4" || k4.Alg != "EdDSA" {
		t.Errorf("Rotate returned %q %q", k4.KID, k4.Alg)
	}
	want := [][]string{{"k1"}, {"k1", "k2"}, {"k2", "k3"}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("rotations = %v, want %v", got, want)
	}
	keys := p.KeySet("/r").Keys()
	if len(keys) != 2 || keys[0].KID != "k3" || keys[1] != k4 {
		t.Errorf("Keys = %v", keys)
	}
	// The counter is per IdP.
	if k := jwkscachetest.NewEmpty().KeySet("/r").Rotate("ES256"); k.KID != "k1" {
		t.Errorf("new IdP rotated to %q", k.KID)
	}
}

func TestRedirect(t *testing.T) {
	p, _ := newDefault()
	p.SetRedirect("/a", "/b")
	p.SetRedirect("/b", "https://elsewhere.test"+jwkscachetest.JWKSPath)
	resp, body := mustGet(t, p.Client(), "https://idp.test/a")
	if resp.StatusCode != http.StatusOK || len(parseJWKS(t, body).Keys) != 3 {
		t.Errorf("redirect chain: %d %s", resp.StatusCode, body)
	}
	if resp.Request.URL.String() != "https://elsewhere.test/jwks.json" {
		t.Errorf("final URL %s", resp.Request.URL)
	}
	for _, path := range []string{"/a", "/b", jwkscachetest.JWKSPath} {
		if n := p.Requests(path); n != 1 {
			t.Errorf("Requests(%s) = %d", path, n)
		}
	}
	p.SetRedirect("/a", "")
	if resp, _ := mustGet(t, p.Client(), "https://idp.test/a"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("removed redirect: %d", resp.StatusCode)
	}
}

func TestCounters(t *testing.T) {
	p, _ := newDefault()
	c := p.Client()
	if p.LastRequest(jwkscachetest.JWKSPath) != nil {
		t.Error("LastRequest before any request")
	}
	mustGet(t, c, "https://idp.test"+jwkscachetest.JWKSPath, "X-Test", "1")
	mustGet(t, c, "https://idp.test"+jwkscachetest.JWKSPath, "X-Test", "2")
	mustGet(t, c, "https://idp.test/missing")
	if p.Requests(jwkscachetest.JWKSPath) != 2 || p.Requests("/missing") != 1 || p.TotalRequests() != 3 {
		t.Errorf("counts %d %d %d", p.Requests(jwkscachetest.JWKSPath), p.Requests("/missing"), p.TotalRequests())
	}
	h := p.LastRequest(jwkscachetest.JWKSPath)
	if h.Get("X-Test") != "2" {
		t.Errorf("LastRequest = %v", h)
	}
	h.Set("X-Test", "mutated")
	if p.LastRequest(jwkscachetest.JWKSPath).Get("X-Test") != "2" {
		t.Error("LastRequest is not a copy")
	}
	p.ResetCounters()
	if p.Requests(jwkscachetest.JWKSPath) != 0 || p.TotalRequests() != 0 || p.LastRequest(jwkscachetest.JWKSPath) != nil {
		t.Error("ResetCounters did not reset")
	}
}

func gunzip(t *testing.T, b []byte) (n int64, first byte) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	var one [1]byte
	if _, err := io.ReadFull(zr, one[:]); err != nil {
		t.Fatal(err)
	}
	rest, err := io.Copy(io.Discard, zr)
	if err != nil {
		t.Fatal(err)
	}
	return rest + 1, one[0]
}

func TestFaults(t *testing.T) {
	const bomb = 8 << 20
	const over = 1<<20 + 7
	type result struct {
		resp *http.Response
		body []byte
		err  error
		full []byte // the normal body of the path
	}
	cases := []struct {
		name  string
		fault jwkscachetest.Fault
		hdr   []string
		check func(t *testing.T, mode string, r result)
	}{
		{"status", jwkscachetest.Fault{Status: 503, RetryAfter: "7"}, nil, func(t *testing.T, _ string, r result) {
			if r.err != nil || r.resp.StatusCode != 503 || r.resp.Header.Get("Retry-After") != "7" || string(r.body) != "error" {
				t.Errorf("err %v resp %+v body %q", r.err, r.resp, r.body)
			}
		}},
		{"html", jwkscachetest.Fault{HTML: true}, nil, func(t *testing.T, _ string, r result) {
			if r.err != nil || r.resp.StatusCode != 200 || !strings.HasPrefix(r.resp.Header.Get("Content-Type"), "text/html") || string(r.body) != jwkscachetest.HTMLBody {
				t.Errorf("err %v resp %+v body %q", r.err, r.resp, r.body)
			}
		}},
		{"truncated", jwkscachetest.Fault{Truncated: true}, nil, func(t *testing.T, _ string, r result) {
			want := r.full[:len(r.full)/2]
			if r.err != nil || r.resp.StatusCode != 200 || !bytes.Equal(r.body, want) || r.resp.ContentLength != int64(len(want)) {
				t.Errorf("err %v resp %+v body %q", r.err, r.resp, r.body)
			}
			if json.Valid(r.body) {
				t.Error("truncated body is valid JSON")
			}
		}},
		{"truncated-chunked", jwkscachetest.Fault{Truncated: true, HideLength: true}, nil, func(t *testing.T, _ string, r result) {
			if r.err != nil || !bytes.Equal(r.body, r.full[:len(r.full)/2]) || r.resp.ContentLength != -1 {
				t.Errorf("err %v resp %+v body %q", r.err, r.resp, r.body)
			}
		}},
		{"oversize", jwkscachetest.Fault{Oversize: over}, nil, func(t *testing.T, _ string, r result) {
			if r.err != nil || r.resp.StatusCode != 200 || len(r.body) != over || r.resp.ContentLength != over {
				t.Fatalf("err %v resp %+v len %d", r.err, r.resp, len(r.body))
			}
			if !bytes.HasPrefix(r.body, []byte(`{"keys":[`)) || !bytes.HasSuffix(r.body, []byte(`"}]}`)) || !json.Valid(r.body) {
				t.Errorf("oversize body is not JSON-looking: %.40q...", r.body)
			}
		}},
		{"oversize-chunked", jwkscachetest.Fault{Oversize: over, HideLength: true}, nil, func(t *testing.T, _ string, r result) {
			if r.err != nil || len(r.body) != over || r.resp.ContentLength != -1 {
				t.Errorf("err %v resp %+v len %d", r.err, r.resp, len(r.body))
			}
		}},
		{"gzipbomb", jwkscachetest.Fault{GzipBomb: bomb}, []string{"Accept-Encoding", "gzip"}, func(t *testing.T, _ string, r result) {
			if r.err != nil || r.resp.StatusCode != 200 || r.resp.Header.Get("Content-Encoding") != "gzip" {
				t.Fatalf("err %v resp %+v", r.err, r.resp)
			}
			if r.resp.ContentLength != int64(len(r.body)) || len(r.body) > bomb/100 {
				t.Errorf("compressed: ContentLength %d, %d bytes", r.resp.ContentLength, len(r.body))
			}
			if n, first := gunzip(t, r.body); n != bomb || first != '{' {
				t.Errorf("decompressed to %d bytes starting with %q, want %d", n, first, bomb)
			}
		}},
		{"redirect", jwkscachetest.Fault{RedirectTo: "https://login.test/"}, nil, func(t *testing.T, _ string, r result) {
			if r.err != nil || r.resp.StatusCode != http.StatusFound || r.resp.Header.Get("Location") != "https://login.test/" {
				t.Errorf("err %v resp %+v", r.err, r.resp)
			}
		}},
		{"reset", jwkscachetest.Fault{Reset: true}, nil, func(t *testing.T, mode string, r result) {
			if r.err == nil {
				t.Fatalf("no error, status %d", r.resp.StatusCode)
			}
			t.Logf("%s: %v", mode, r.err)
			var op *net.OpError
			if mode == "roundtrip" && (!errors.Is(r.err, syscall.ECONNRESET) || !errors.As(r.err, &op)) {
				t.Errorf("err = %v", r.err)
			}
		}},
		{"refuse", jwkscachetest.Fault{Refuse: true}, nil, func(t *testing.T, mode string, r result) {
			if r.err == nil {
				t.Fatalf("no error, status %d", r.resp.StatusCode)
			}
			t.Logf("%s: %v", mode, r.err)
			var op *net.OpError
			if mode == "roundtrip" && (!errors.Is(r.err, syscall.ECONNREFUSED) || !errors.As(r.err, &op)) {
				t.Errorf("err = %v", r.err)
			}
		}},
		{"short-delay", jwkscachetest.Fault{Delay: 10 * time.Millisecond}, nil, func(t *testing.T, _ string, r result) {
			if r.err != nil || r.resp.StatusCode != 200 || !bytes.Equal(r.body, r.full) {
				t.Errorf("err %v resp %+v", r.err, r.resp)
			}
		}},
		{"delay-then-status", jwkscachetest.Fault{Delay: time.Millisecond, Status: 429}, nil, func(t *testing.T, _ string, r result) {
			if r.err != nil || r.resp.StatusCode != 429 {
				t.Errorf("err %v resp %+v", r.err, r.resp)
			}
		}},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					p, _ := newDefault()
					c, base := m.setup(t, p)
					url := base + jwkscachetest.JWKSPath
					_, full := mustGet(t, c, base+jwkscachetest.JWKSPath)
					c = m.client(t, p) // fresh connections: see Fault.Reset
					tc.fault.Count = 1
					p.SetFault(jwkscachetest.JWKSPath, tc.fault)
					resp, body, err := do(t, c, http.MethodGet, url, tc.hdr...)
					tc.check(t, m.name, result{resp, body, err, full})

					// Count 1: the next request is served normally.
					c = m.client(t, p)
					resp, body = mustGet(t, c, url)
					if resp.StatusCode != 200 || !bytes.Equal(body, full) {
						t.Errorf("after fault: status %d body %.60q", resp.StatusCode, body)
					}
					if n := p.Requests(jwkscachetest.JWKSPath); n != 3 {
						t.Errorf("Requests = %d, want 3", n)
					}
				})
			}
		})
	}
}

func TestFaultCount(t *testing.T) {
	p, _ := newDefault()
	c := p.Client()
	url := "https://idp.test" + jwkscachetest.JWKSPath
	statuses := func(n int) []int {
		var out []int
		for range n {
			resp, _ := mustGet(t, c, url)
			out = append(out, resp.StatusCode)
		}
		return out
	}
	p.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Status: 500, Count: 2})
	if got := statuses(4); !slices.Equal(got, []int{500, 500, 200, 200}) {
		t.Errorf("Count 2: %v", got)
	}
	p.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Status: 404})
	if got := statuses(5); !slices.Equal(got, []int{404, 404, 404, 404, 404}) {
		t.Errorf("Count 0: %v", got)
	}
	p.ClearFault(jwkscachetest.JWKSPath)
	if got := statuses(1); got[0] != 200 {
		t.Errorf("after ClearFault: %v", got)
	}
	p.ClearFault("/never-configured") // no panic
	if n := p.Requests(jwkscachetest.JWKSPath); n != 10 {
		t.Errorf("Requests = %d", n)
	}
}

func TestDelayServer(t *testing.T) {
	p, _ := newDefault()
	base := start(t, p, true)
	p.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Delay: time.Hour})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+jwkscachetest.JWKSPath, nil)
	_, err := tlsClient(t, p, "").Do(req)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v", err)
	}
	// The context ended the request (an hour's delay would hit the test
	// timeout otherwise). The handler returns once the client is gone, so
	// Close in Cleanup does not hang.
}

func TestDelaySynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := newDefault()
		c := p.Client()
		p.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Delay: time.Hour, Count: 1})

		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://idp.test"+jwkscachetest.JWKSPath, nil)
		start := time.Now()
		_, err := c.Do(req)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v", err)
		}
		if d := time.Since(start); d != time.Second {
			t.Errorf("fake time elapsed = %v, want 1s", d)
		}

		p.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Delay: 5 * time.Second, Count: 1})
		start = time.Now()
		resp, body := mustGet(t, c, "https://idp.test"+jwkscachetest.JWKSPath)
		if d := time.Since(start); d != 5*time.Second || resp.StatusCode != 200 || len(parseJWKS(t, body).Keys) != 3 {
			t.Errorf("elapsed %v status %d", d, resp.StatusCode)
		}
		if got, want := resp.Header.Get("Date"), time.Now().UTC().Format(http.TimeFormat); got != want {
			t.Errorf("Date = %q, want fake-clock %q", got, want)
		}

		// An already-cancelled context fails without counting.
		cctx, ccancel := context.WithCancel(t.Context())
		ccancel()
		req, _ = http.NewRequestWithContext(cctx, http.MethodGet, "https://idp.test"+jwkscachetest.JWKSPath, nil)
		if _, err := c.Do(req); !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled: err = %v", err)
		}
	})
}

func TestTLS(t *testing.T) {
	p, _ := newDefault()
	base := start(t, p, true)
	if !strings.HasPrefix(base, "https://127.0.0.1:") && !strings.HasPrefix(base, "https://[::1]:") {
		t.Errorf("URL = %q", base)
	}
	for _, name := range []string{"", "idp.test", "a.idp.test", "localhost"} {
		resp, _ := mustGet(t, tlsClient(t, p, name), base+jwkscachetest.JWKSPath)
		if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
			t.Fatalf("no TLS state for %q", name)
		}
		if got, want := jwkscachetest.SPKIPin(resp.TLS.PeerCertificates[0]), jwkscachetest.SPKIPin(p.Leaf()); got != want {
			t.Errorf("pin %s, want %s", got, want)
		}
	}
	pin := jwkscachetest.SPKIPin(p.Leaf())
	if len(pin) != 44 || !strings.HasSuffix(pin, "=") || pin == jwkscachetest.SPKIPin(p.CA()) {
		t.Errorf("pin = %q", pin)
	}

	// Valid at the synctest epoch, for every SAN, chaining to CA.
	for _, host := range []string{"localhost", "idp.test", "x.idp.test", "127.0.0.1", "::1"} {
		_, err := p.Leaf().Verify(x509.VerifyOptions{
			Roots:       p.CertPool(),
			DNSName:     host,
			CurrentTime: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		})
		if err != nil {
			t.Errorf("verify %s: %v", host, err)
		}
	}
	if !p.CA().IsCA || jwkscachetest.NewEmpty().CA() != p.CA() {
		t.Error("CA not shared or not a CA")
	}

	// A client not trusting the CA fails.
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	if _, err := (&http.Client{Transport: tr}).Get(base + jwkscachetest.JWKSPath); err == nil {
		t.Error("untrusted client succeeded")
	}
}

func TestStartHTTP(t *testing.T) {
	p, _ := newDefault()
	base := start(t, p, false)
	if !strings.HasPrefix(base, "http://") {
		t.Errorf("URL = %q", base)
	}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	resp, body := mustGet(t, &http.Client{Transport: tr}, base+jwkscachetest.JWKSPath)
	if resp.StatusCode != 200 || len(parseJWKS(t, body).Keys) != 3 {
		t.Errorf("status %d body %s", resp.StatusCode, body)
	}
}

// The IdP is an http.Handler: it can be served by an httptest.Server with
// its own certificate.
func TestServeWithHTTPTest(t *testing.T) {
	p, _ := newDefault()
	s := httptest.NewUnstartedServer(p)
	s.TLS = &tls.Config{Certificates: []tls.Certificate{p.Certificate()}}
	s.StartTLS()
	t.Cleanup(s.Close)
	resp, body := mustGet(t, tlsClient(t, p, ""), s.URL+jwkscachetest.JWKSPath)
	if resp.StatusCode != 200 || len(parseJWKS(t, body).Keys) != 3 {
		t.Errorf("status %d body %s", resp.StatusCode, body)
	}
	if p.Started() || p.URL() != jwkscachetest.InMemoryURL {
		t.Errorf("Started %v, URL %q", p.Started(), p.URL())
	}
}

func TestGzipBombCached(t *testing.T) {
	a, b := jwkscachetest.GzipBomb(1<<20), jwkscachetest.GzipBomb(1<<20)
	if &a[0] != &b[0] {
		t.Error("GzipBomb not cached")
	}
	if n, first := gunzip(t, jwkscachetest.GzipBomb(1)); n != 1 || first != '{' {
		t.Errorf("jwkscachetest.GzipBomb(1) = %d bytes %q", n, first)
	}
}

func TestConcurrent(t *testing.T) {
	p, _ := newDefault()
	c := p.Client()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 20 {
				resp, body, err := do(t, c, http.MethodGet, "https://idp.test"+jwkscachetest.JWKSPath)
				if err != nil || resp.StatusCode != 200 || !json.Valid(body) {
					t.Errorf("worker %d: %v", i, err)
					return
				}
				_ = p.Requests(jwkscachetest.JWKSPath)
				_ = p.LastRequest(jwkscachetest.JWKSPath)
			}
		})
	}
	for range 10 {
		p.JWKS().Rotate("ES256")
		p.SetHeader(jwkscachetest.JWKSPath, "Age", "1")
		p.SetFault("/other", jwkscachetest.Fault{Status: 500})
	}
	wg.Wait()
	if n := p.TotalRequests(); n != 160 {
		t.Errorf("TotalRequests = %d", n)
	}
}

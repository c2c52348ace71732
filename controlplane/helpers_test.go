package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/api/apitest"
	"github.com/jwkscache/jwkscache/controlplane"
	"github.com/jwkscache/jwkscache/internal/testidp"
)

// Tokens of the test handlers.
const (
	adminToken  = "admin-0123456789"
	acmeToken   = "acme-0123456789"
	globexToken = "globex-0123456789"
	wrongToken  = "wrong-0123456789"
)

var (
	admin  = []string{"Authorization", "Bearer " + adminToken}
	acme   = []string{"Authorization", "Bearer " + acmeToken}
	globex = []string{"Authorization", "Bearer " + globexToken}
	wrong  = []string{"Authorization", "Bearer " + wrongToken}
	asJSON = []string{"Content-Type", "application/json"}
)

// hdrs concatenates header name, value pairs.
func hdrs(kv ...[]string) []string {
	var out []string
	for _, p := range kv {
		out = append(out, p...)
	}
	return out
}

var loadChecker = sync.OnceValues(apitest.New)

func checker(tb testing.TB) *apitest.Checker {
	tb.Helper()
	c, err := loadChecker()
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// gate sits between the Manager and the in-memory IdP: it counts the
// requests, reports each one on arrived, and holds them while blocked.
type gate struct {
	next    http.RoundTripper
	n       atomic.Int64
	arrived chan string
	mu      sync.Mutex
	block   chan struct{}
}

func (g *gate) RoundTrip(r *http.Request) (*http.Response, error) {
	g.n.Add(1)
	select {
	case g.arrived <- r.URL.Path:
	default:
	}
	g.mu.Lock()
	b := g.block
	g.mu.Unlock()
	if b != nil {
		select {
		case <-b:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	return g.next.RoundTrip(r)
}

// hold makes the next requests wait until the returned release is called
// (at the latest in cleanup).
func (g *gate) hold(tb testing.TB) (release func()) {
	b := make(chan struct{})
	g.mu.Lock()
	g.block = b
	g.mu.Unlock()
	var once sync.Once
	release = func() {
		once.Do(func() {
			g.mu.Lock()
			if g.block == b {
				g.block = nil
			}
			g.mu.Unlock()
			close(b)
		})
	}
	tb.Cleanup(release)
	return release
}

// drain empties arrived.
func (g *gate) drain() {
	for {
		select {
		case <-g.arrived:
		default:
			return
		}
	}
}

// await waits for the next request to reach the gate.
func (g *gate) await(tb testing.TB) string {
	tb.Helper()
	select {
	case p := <-g.arrived:
		return p
	case <-time.After(20 * time.Second): // a bound on a hang, not a wait
		tb.Fatal("no request reached the IdP")
		return ""
	}
}

// env is a Manager over an in-memory IdP and a control plane over it.
type env struct {
	idp  *testidp.IdP
	gate *gate
	m    *jwkscache.Manager
	h    *controlplane.Handler
	c    *apitest.Checker
	keys map[string][]*testidp.Key // path -> keys
}

type envOption func(*jwkscache.Options, *controlplane.Options)

func newEnv(tb testing.TB, opts ...envOption) *env {
	tb.Helper()
	idp := testidp.New()
	e := &env{idp: idp, c: checker(tb), keys: make(map[string][]*testidp.Key)}
	e.gate = &gate{next: idp, arrived: make(chan string, 1024)}
	mo := jwkscache.Options{HTTPClient: &http.Client{Transport: e.gate}}
	co := controlplane.Options{
		AdminTokens:  []string{adminToken},
		TenantTokens: map[string][]string{"acme": {acmeToken}, "globex": {globexToken}},
	}
	for _, o := range opts {
		o(&mo, &co)
	}
	m, err := jwkscache.New(mo)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	h, err := controlplane.New(m, co)
	if err != nil {
		tb.Fatal(err)
	}
	e.m, e.h = m, h
	return e
}

// serveKeys makes the IdP serve fresh keys at path for an hour.
func (e *env) serveKeys(path string, kids ...string) []*testidp.Key {
	var keys []*testidp.Key
	for _, kid := range kids {
		keys = append(keys, testidp.NewKey("ES256", kid))
	}
	e.idp.SetKeys(path, keys...)
	e.idp.SetHeader(path, "Cache-Control", "max-age=3600")
	e.keys[path] = keys
	return keys
}

// register registers tenant/provider at https://idp.test/<tenant>/<provider>
// through the handler, serving kids there, and waits for the first load.
func (e *env) register(tb testing.TB, tenant, provider string, kids ...string) {
	tb.Helper()
	path := "/" + tenant + "/" + provider
	e.serveKeys(path, kids...)
	body := `{"jwksUrl":"https://idp.test` + path + `"}`
	r := e.do(tb, "PUT", "/tenants/"+tenant+"/providers/"+provider, body, hdrs(admin, asJSON)...)
	if r.status != http.StatusAccepted {
		tb.Fatalf("register %s/%s: %d %s", tenant, provider, r.status, r.body)
	}
	r = e.do(tb, "GET", "/tenants/"+tenant+"/providers/"+provider+"/jwks", "")
	if r.status != http.StatusOK {
		tb.Fatalf("first load of %s/%s: %d %s", tenant, provider, r.status, r.body)
	}
}

// resp is an answer of the handler.
type resp struct {
	status int
	header http.Header
	body   []byte
	reqErr error // the request's own contract violation, if any
}

func (r *resp) json(tb testing.TB) map[string]any {
	tb.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		tb.Fatalf("body %q: %v", r.body, err)
	}
	return m
}

// errorCode returns the error member of an ErrorResponse body.
func (r *resp) errorCode(tb testing.TB) string {
	tb.Helper()
	code, _ := r.json(tb)["error"].(string)
	return code
}

// do sends a request to the handler and checks the exchange against the
// contract with apitest: the route must exist, and the response must
// match (the request itself may break the contract: that is recorded in
// reqErr). kv are header name, value pairs.
func (e *env) do(tb testing.TB, method, target, body string, kv ...string) *resp {
	tb.Helper()
	return serve(tb, e.c, e.h, method, target, body, kv...)
}

// doValid is do for a request that must meet the contract.
func (e *env) doValid(tb testing.TB, method, target, body string, kv ...string) *resp {
	tb.Helper()
	r := e.do(tb, method, target, body, kv...)
	if r.reqErr != nil {
		tb.Errorf("%s %s: the request breaks the contract: %v", method, target, firstLine(r.reqErr))
	}
	return r
}

func serve(tb testing.TB, c *apitest.Checker, h http.Handler, method, target, body string, kv ...string) *resp {
	tb.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, rd)
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Add(kv[i], kv[i+1])
	}
	ctx := context.Background()
	in, reqErr := c.CheckRequest(ctx, req)
	if in == nil {
		tb.Fatalf("%s %s: no operation of the contract: %v", method, target, reqErr)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	res := rec.Result()
	b, _ := io.ReadAll(res.Body)
	cover(in.Route.Method, in.Route.Path, res.StatusCode)
	if err := c.CheckResponse(ctx, in, res.StatusCode, res.Header, b); err != nil {
		tb.Errorf("contract: %s %s: %d %s: %v", method, target, res.StatusCode, clip(b), err)
	}
	return &resp{status: res.StatusCode, header: res.Header, body: b, reqErr: reqErr}
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

func clip(b []byte) []byte {
	if len(b) > 300 {
		return append(bytes.Clone(b[:300]), "..."...)
	}
	return b
}

// kidsOf returns the kids of a JWKS body.
func kidsOf(tb testing.TB, body []byte) []string {
	tb.Helper()
	var set struct {
		Keys []struct {
			KID string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		tb.Fatalf("JWKS %q: %v", body, err)
	}
	var out []string
	for _, k := range set.Keys {
		out = append(out, k.KID)
	}
	return out
}

// version returns the provider's registration version from the Manager.
func (e *env) version(tb testing.TB, tenant, provider string) string {
	tb.Helper()
	st, err := e.m.Status(tenant, provider)
	if err != nil {
		tb.Fatal(err)
	}
	return st.RegistrationVersion
}

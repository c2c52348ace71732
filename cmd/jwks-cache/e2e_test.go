package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/jwkscache/jwkscache/api/apitest"
	"github.com/jwkscache/jwkscache/internal/redistest"
	"github.com/jwkscache/jwkscache/jwkscachetest"
)

// The binary, built once per test run by buildBinary.
var bin struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bin.dir != "" {
		os.RemoveAll(bin.dir)
	}
	os.Exit(code)
}

// buildBinary builds the command with go build, once.
func buildBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary; not with -short")
	}
	bin.once.Do(func() {
		bin.dir, bin.err = os.MkdirTemp("", "jwks-cache-test-")
		if bin.err != nil {
			return
		}
		bin.path = filepath.Join(bin.dir, "jwks-cache")
		out, err := exec.Command("go", "build", "-o", bin.path, ".").CombinedOutput()
		if err != nil {
			bin.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if bin.err != nil {
		t.Fatal(bin.err)
	}
	return bin.path
}

// proc is a running jwks-cache process.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	logs *lines
	done chan struct{}
	err  error // Wait's result, once done is closed
	addr string
}

// lines collects a process's standard error, line by line.
type lines struct {
	mu      sync.Mutex
	all     []string
	changed chan struct{} // closed and replaced at each new line
}

func (l *lines) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = append(l.all, s)
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *lines) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.all, "\n")
}

// waitFor returns the first line containing substr, waiting for it until
// the process ends or timeout.
func (p *proc) waitFor(substr string, timeout time.Duration) (string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.logs.mu.Lock()
		for _, s := range p.logs.all {
			if strings.Contains(s, substr) {
				p.logs.mu.Unlock()
				return s, nil
			}
		}
		changed := p.logs.changed
		p.logs.mu.Unlock()
		select {
		case <-changed:
		case <-p.done:
			return "", fmt.Errorf("process ended (%v) without logging %q:\n%s", p.err, substr, p.logs.text())
		case <-deadline.C:
			return "", fmt.Errorf("no %q after %v:\n%s", substr, timeout, p.logs.text())
		}
	}
}

// cleanEnv is the test's environment without JWKS_CACHE_ variables.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "JWKS_CACHE_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// startServe runs "jwks-cache serve --config cfgPath" and waits until it
// listens and answers /healthz.
func startServe(t *testing.T, binPath, cfgPath string, env ...string) *proc {
	t.Helper()
	p := &proc{t: t, logs: &lines{changed: make(chan struct{})}, done: make(chan struct{})}
	p.cmd = exec.Command(binPath, "serve", "--config", cfgPath)
	p.cmd.Env = cleanEnv(env...)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s := bufio.NewScanner(stderr)
		s.Buffer(nil, 1<<20)
		for s.Scan() {
			p.logs.add(s.Text())
		}
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("daemon's standard error:\n%s", p.logs.text())
		}
	})
	line, err := p.waitFor(`"msg":"listening"`, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var rec struct{ Addr string }
	if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Addr == "" {
		t.Fatalf("listening line %q: %v", line, err)
	}
	p.addr = "http://" + rec.Addr
	// Bounded polling of the process we started, until it answers.
	for i := 0; ; i++ {
		resp, err := http.Get(p.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if i == 100 {
			t.Fatalf("/healthz does not answer: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// stop sends SIGTERM and returns the exit code.
func (p *proc) stop() int {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.t.Fatal("no exit 30 s after SIGTERM")
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		p.t.Fatal(p.err)
	}
	return 0
}

// call makes one request and returns its status, headers and body.
func call(t *testing.T, method, url, token string, body []byte, h http.Header) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := contractClient(t).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// contractClient is an HTTP client that checks every answer against
// api/openapi.yaml (package api/apitest), failing t on a mismatch.
func contractClient(t *testing.T) *http.Client {
	t.Helper()
	checker.once.Do(func() { checker.c, checker.err = apitest.New() })
	if checker.err != nil {
		t.Fatal(checker.err)
	}
	return &http.Client{Transport: checker.c.Transport(t, http.DefaultTransport)}
}

var checker struct {
	once sync.Once
	c    *apitest.Checker
	err  error
}

// served is the daemon's JWKS document.
type served struct {
	jose.JSONWebKeySet
	Stale     bool      `json:"stale"`
	ExpiresAt time.Time `json:"expiresAt"`
}

func (s *served) kids() []string {
	var out []string
	for _, k := range s.Keys {
		out = append(out, k.KeyID)
	}
	return out
}

func getJWKS(t *testing.T, url string, noCache bool) *served {
	t.Helper()
	var h http.Header
	if noCache {
		h = http.Header{"Cache-Control": {"no-cache"}}
	}
	code, _, body := call(t, http.MethodGet, url, "", nil, h)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, code, body)
	}
	var s served
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

// verifyWith checks a token's signature with go-jose against set alone.
func verifyWith(t *testing.T, raw string, set *served) {
	t.Helper()
	jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.RS256, jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	kid := jws.Signatures[0].Header.KeyID
	keys := set.Key(kid)
	if len(keys) != 1 {
		t.Fatalf("the daemon serves %d keys of kid %q (kids %v)", len(keys), kid, set.kids())
	}
	if _, err := jws.Verify(keys[0].Key); err != nil {
		t.Fatalf("token of %s does not verify with the daemon's key: %v", kid, err)
	}
}

func writeCA(t *testing.T, idp *jwkscachetest.IdP, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "idp-ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: idp.CA().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const e2eToken = "e2e-admin-token-0123456789abcdef"

// TestEndToEnd is the command's "done when": the daemon registers a
// provider over HTTP, serves its keys, catches a rotation, rides out an
// outage, stops cleanly on SIGTERM, and serves the keys from its bolt
// store after a restart with the IdP still down.
func TestEndToEnd(t *testing.T) {
	binPath := buildBinary(t)
	idp := jwkscachetest.New()
	if err := idp.Start(); err != nil {
		t.Fatal(err)
	}
	defer idp.Close()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "jwks-cache.yaml")
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
adminTokens: [%s]
store:
  bolt: %s
security:
  allowedAddresses: [127.0.0.0/8]
  rootCAFile: %s
`, e2eToken, filepath.Join(dir, "store.db"), writeCA(t, idp, dir))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	p := startServe(t, binPath, cfgPath)
	provider := p.addr + "/tenants/acme/providers/main"
	reg := fmt.Sprintf(`{"jwksUrl": %q, "issuer": %q}`, idp.JWKSURL(), idp.Issuer())
	if code, _, body := call(t, http.MethodPut, provider, e2eToken, []byte(reg), nil); code != http.StatusAccepted {
		t.Fatalf("PUT: %d %s", code, body)
	}

	set := getJWKS(t, provider+"/jwks", false)
	if !slices.Equal(set.kids(), []string{"k1"}) {
		t.Fatalf("kids %v", set.kids())
	}
	verifyWith(t, idp.Token(idp.Claims("alice", "api")), set)

	// Rotation: the new kid shows through a no-cache request.
	k2 := idp.JWKS().Rotate("ES256")
	set = getJWKS(t, provider+"/jwks", true)
	if !slices.Equal(set.kids(), []string{"k1", k2.KID}) {
		t.Fatalf("after rotation: kids %v", set.kids())
	}
	tok2 := idp.Token(idp.Claims("bob", "api"))
	verifyWith(t, tok2, set)

	// Outage: the keys are still served.
	idp.Close()
	set = getJWKS(t, provider+"/jwks", false)
	if !slices.Equal(set.kids(), []string{"k1", k2.KID}) {
		t.Fatalf("during the outage: kids %v", set.kids())
	}
	verifyWith(t, tok2, set)

	if code := p.stop(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	if strings.Contains(p.logs.text(), e2eToken) {
		t.Fatal("the admin token was logged")
	}

	// Restart with the IdP still down: the keys come from the store.
	p = startServe(t, binPath, cfgPath)
	provider = p.addr + "/tenants/acme/providers/main"
	set = getJWKS(t, provider+"/jwks", false)
	if !slices.Equal(set.kids(), []string{"k1", k2.KID}) {
		t.Fatalf("after restart: kids %v", set.kids())
	}
	verifyWith(t, tok2, set)
	code, _, body := call(t, http.MethodGet, provider+"/status", e2eToken, nil, nil)
	if code != http.StatusOK {
		t.Fatalf("status: %d %s", code, body)
	}
	var st struct{ Source string }
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatal(err)
	}
	if st.Source != "store" {
		t.Fatalf("source %q, want store: %s", st.Source, body)
	}
	if code, _, _ := call(t, http.MethodGet, p.addr+"/metrics", "", nil, nil); code != http.StatusOK {
		t.Fatalf("metrics: %d", code)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

// TestGracefulShutdown: SIGTERM during a request lets it finish, and the
// process exits 0. The request is a GET .../jwks with Cache-Control:
// no-cache, whose revalidation the IdP holds: when the IdP sees the
// daemon's fetch, the daemon's handler is surely running.
func TestGracefulShutdown(t *testing.T) {
	binPath := buildBinary(t)
	idp := jwkscachetest.New()
	var hold atomic.Bool
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == jwkscachetest.JWKSPath && hold.Load() {
			arrived <- struct{}{}
			<-release
		}
		idp.ServeHTTP(w, r)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{idp.Certificate()}}
	srv.StartTLS()
	defer srv.Close()
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "c.yaml")
	cfg := fmt.Sprintf("listen: 127.0.0.1:0\nadminTokens: [%s]\nstore: {memory: true}\nsecurity: {allowedAddresses: [127.0.0.0/8], rootCAFile: %s}\n",
		e2eToken, writeCA(t, idp, dir))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, binPath, cfgPath)
	provider := p.addr + "/tenants/acme/providers/main"
	if code, _, body := call(t, http.MethodPut, provider, e2eToken, fmt.Appendf(nil, `{"jwksUrl": %q}`, srv.URL+jwkscachetest.JWKSPath), nil); code != http.StatusAccepted {
		t.Fatalf("PUT: %d %s", code, body)
	}
	getJWKS(t, provider+"/jwks", false) // the first load

	hold.Store(true)
	type result struct {
		code int
		err  error
	}
	res := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, provider+"/jwks", nil)
		req.Header.Set("Cache-Control", "no-cache")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			res <- result{err: err}
			return
		}
		resp.Body.Close()
		res <- result{code: resp.StatusCode}
	}()
	<-arrived
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := p.waitFor(`"msg":"shutting down"`, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	released = true
	close(release)
	r := <-res
	if r.err != nil || r.code != http.StatusOK {
		t.Fatalf("the request in flight: %d %v", r.code, r.err)
	}
	<-p.done
	if p.err != nil {
		t.Fatalf("exit: %v", p.err)
	}
	if _, err := p.waitFor(`"msg":"stopped"`, time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestServeGeneratesAdminToken: without an admin token, serve makes one
// and prints it once, on standard error, outside the logs.
func TestServeGeneratesAdminToken(t *testing.T) {
	binPath := buildBinary(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(cfgPath, []byte("listen: 127.0.0.1:0\nstore: {memory: true}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, binPath, cfgPath)
	text := p.logs.text()
	i := strings.Index(text, "generated one for this run:")
	if i < 0 {
		t.Fatalf("no generated token:\n%s", text)
	}
	tok := strings.Fields(text[i+len("generated one for this run:"):])[0]
	if len(tok) != 43 {
		t.Fatalf("token of %d characters", len(tok))
	}
	if code, _, body := call(t, http.MethodGet, p.addr+"/tenants/acme/providers/main/status", tok, nil, nil); code != http.StatusNotFound {
		t.Fatalf("with the generated token: %d %s", code, body)
	}
	if code, _, _ := call(t, http.MethodGet, p.addr+"/tenants/acme/providers/main/status", "wrong-token-0123456789", nil, nil); code != http.StatusUnauthorized {
		t.Fatalf("with a wrong token: %d", code)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if n := strings.Count(p.logs.text(), tok); n != 1 {
		t.Fatalf("the token appears %d times", n)
	}
}

// TestServeBadConfig: a bad configuration exits 2 and names the key.
func TestServeBadConfig(t *testing.T) {
	binPath := buildBinary(t)
	cfgPath := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfgPath, []byte("providers:\n  - {tenantId: a, providerId: p, jwksUrll: x}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(binPath, "serve", "--config", cfgPath).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitUsage {
		t.Fatalf("exit: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "providers[0].jwksUrll: unknown field") {
		t.Fatalf("output:\n%s", out)
	}
}

// TestDemoBinary: the demo runs offline and exits 0 within 10 s.
func TestDemoBinary(t *testing.T) {
	binPath := buildBinary(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, binPath, "demo").CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v after %v\n%s", err, time.Since(start), out)
	}
	for _, want := range []string{"202 Accepted", "kids [k1 k2]", "fetch failed", "stopped cleanly"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
	t.Logf("demo took %v", time.Since(start))
}

// TestEndToEndRedis: the same restart with a Redis store, its records
// signed with a key from the environment (store.keyEnv).
func TestEndToEndRedis(t *testing.T) {
	binPath := buildBinary(t)
	client := redistest.Client(t)
	prefix := redistest.Prefix(t, client)
	idp := jwkscachetest.New()
	if err := idp.Start(); err != nil {
		t.Fatal(err)
	}
	defer idp.Close()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "c.yaml")
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
adminTokens: [%s]
store: {redis: 'redis://%s/0', prefix: '%s', keyEnv: TEST_STORE_KEY}
security: {allowedAddresses: [127.0.0.0/8], rootCAFile: %s}
`, e2eToken, redistest.Addr(t), prefix, writeCA(t, idp, dir))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	key := "TEST_STORE_KEY=" + key32
	p := startServe(t, binPath, cfgPath, key)
	provider := p.addr + "/tenants/acme/providers/main"
	reg := fmt.Sprintf(`{"jwksUrl": %q, "issuer": %q}`, idp.JWKSURL(), idp.Issuer())
	if code, _, body := call(t, http.MethodPut, provider, e2eToken, []byte(reg), nil); code != http.StatusAccepted {
		t.Fatalf("PUT: %d %s", code, body)
	}
	tok := idp.Token(idp.Claims("alice", "api"))
	verifyWith(t, tok, getJWKS(t, provider+"/jwks", false))
	if code := p.stop(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if strings.Contains(p.logs.text(), key32) {
		t.Fatal("the store key was logged")
	}
	idp.Close()

	p = startServe(t, binPath, cfgPath, key)
	provider = p.addr + "/tenants/acme/providers/main"
	verifyWith(t, tok, getJWKS(t, provider+"/jwks", false))
	code, _, body := call(t, http.MethodGet, provider+"/status", e2eToken, nil, nil)
	var st struct{ Source string }
	if err := json.Unmarshal(body, &st); err != nil || code != http.StatusOK || st.Source != "store" {
		t.Fatalf("status %d, source %q: %s", code, st.Source, body)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit code %d", code)
	}

	// Without the key, the signed records are refused: nothing restored.
	p = startServe(t, binPath, cfgPath, "TEST_STORE_KEY="+base64.StdEncoding.EncodeToString([]byte("another-key-of-32-bytes-xxxxxxxx")))
	if code, _, body := call(t, http.MethodGet, p.addr+"/tenants/acme/providers/main/status", e2eToken, nil, nil); code != http.StatusNotFound {
		t.Fatalf("restored with the wrong key: %d %s", code, body)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

package clients_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/controlplane"
	"github.com/jwkscache/jwkscache/examples/clients"
	"github.com/jwkscache/jwkscache/jwkscachetest"
)

const audience = "https://api.example.com"

// daemon is an in-process jwks-cache daemon: a Manager behind the control
// plane, served over HTTP on loopback. It records the Cache-Control header
// of every GET .../jwks it receives.
type daemon struct {
	srv *httptest.Server

	mu  sync.Mutex
	log map[string][]string // path -> Cache-Control of each GET .../jwks
}

func startDaemon(t *testing.T) *daemon {
	t.Helper()
	m, err := jwkscache.New(jwkscache.Options{
		// Every IdP of jwkscachetest has a certificate of the same test CA.
		RootCAs:          jwkscachetest.New().CertPool(),
		AllowedAddresses: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	h, err := controlplane.New(m, controlplane.Options{DisableAuth: true})
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{log: make(map[string][]string)}
	d.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/jwks") {
			d.mu.Lock()
			d.log[r.URL.Path] = append(d.log[r.URL.Path], r.Header.Get("Cache-Control"))
			d.mu.Unlock()
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(d.srv.Close)
	return d
}

// cacheControls returns the Cache-Control headers of the GET .../jwks
// requests received for jwksURL since the last call.
func (d *daemon) cacheControls(jwksURL string) []string {
	path := strings.TrimPrefix(jwksURL, d.srv.URL)
	d.mu.Lock()
	defer d.mu.Unlock()
	got := d.log[path]
	delete(d.log, path)
	return got
}

// provider starts a test IdP (one RS256 key, "k1"), registers it with the
// daemon as tenant acme's provider name, loads its keys into the daemon and
// returns the IdP and the daemon's JWKS URL for it.
func (d *daemon) provider(t *testing.T, name string) (*jwkscachetest.IdP, string) {
	t.Helper()
	idp := jwkscachetest.New()
	if err := idp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)

	base := d.srv.URL + "/tenants/acme/providers/" + name
	body := `{"jwksUrl":"` + idp.JWKSURL() + `","issuer":"` + idp.Issuer() + `"}`
	req, err := http.NewRequest(http.MethodPut, base, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PUT %s: %s", base, resp.Status)
	}

	// The first GET waits for the first load.
	jwksURL := base + "/jwks"
	resp, err = http.Get(jwksURL)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", jwksURL, resp.Status)
	}
	if n := idp.Requests(jwkscachetest.JWKSPath); n != 1 {
		t.Fatalf("the daemon's first load made %d requests to the IdP, want 1", n)
	}
	d.cacheControls(jwksURL)
	return idp, jwksURL
}

// TestKeyfunc runs NewKeyfunc, the code docs/clients.md shows for keyfunc
// v3: a key rotation is caught on the first token signed with the new key,
// by one revalidation of the daemon with the IdP; a keyfunc without the
// header misses it.
func TestKeyfunc(t *testing.T) {
	d := startDaemon(t)
	idp, jwksURL := d.provider(t, "keyfunc")
	idpRequests := func() int { return idp.Requests(jwkscachetest.JWKSPath) }
	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{"RS256", "ES256"}),
		jwt.WithIssuer(idp.Issuer()),
		jwt.WithAudience(audience),
		jwt.WithExpirationRequired(),
	)

	kf, err := clients.NewKeyfunc(t.Context(), jwksURL)
	if err != nil {
		t.Fatal(err)
	}
	token1 := idp.Token(idp.Claims("alice", audience)) // kid k1
	if _, err := parser.Parse(token1, kf.Keyfunc); err != nil {
		t.Fatalf("token signed by k1: %v", err)
	}
	if got := d.cacheControls(jwksURL); !slices.Equal(got, []string{""}) {
		t.Errorf("first fetch: Cache-Control %q, want none: answered from the daemon's memory", got)
	}
	if n := idpRequests(); n != 1 {
		t.Errorf("IdP requests after the first fetch: %d, want still 1", n)
	}

	// The control: keyfunc's defaults, no header.
	plain, err := keyfunc.NewDefaultOverrideCtx(t.Context(), []string{jwksURL}, keyfunc.Override{
		RateLimitWaitMax: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parser.Parse(token1, plain.Keyfunc); err != nil {
		t.Fatalf("token signed by k1, default keyfunc: %v", err)
	}
	d.cacheControls(jwksURL)

	// The IdP rotates to a new key without notice.
	k2 := idp.JWKS().Rotate("ES256")
	token2 := idp.Token(idp.Claims("bob", audience))

	// Without no-cache the daemon answers its refetch from memory: the old
	// set, which lacks k2.
	if _, err := parser.Parse(token2, plain.Keyfunc); err == nil {
		t.Fatalf("token signed by %s verified by a keyfunc without no-cache; want it refused (the daemon answers from memory)", k2.KID)
	}
	if got := d.cacheControls(jwksURL); !slices.Equal(got, []string{""}) {
		t.Errorf("default keyfunc's refetch: Cache-Control %q, want none", got)
	}
	if n := idpRequests(); n != 1 {
		t.Errorf("IdP requests after a refetch without no-cache: %d, want still 1", n)
	}

	// With it, the refetch revalidates: one request to the IdP.
	tok, err := parser.Parse(token2, kf.Keyfunc)
	if err != nil {
		t.Fatalf("token signed by the new key %s: %v", k2.KID, err)
	}
	if kid := tok.Header["kid"]; kid != k2.KID {
		t.Errorf("verified kid %v, want %s", kid, k2.KID)
	}
	if got := d.cacheControls(jwksURL); !slices.Equal(got, []string{"no-cache"}) {
		t.Errorf("refetch after the unknown kid: Cache-Control %q, want [no-cache]", got)
	}
	if n := idpRequests(); n != 2 {
		t.Errorf("IdP requests after the rotation: %d, want 2 (one revalidation)", n)
	}

	// The previous key still verifies, from memory.
	if _, err := parser.Parse(token1, kf.Keyfunc); err != nil {
		t.Errorf("token signed by k1 after the rotation: %v", err)
	}
	if got := d.cacheControls(jwksURL); len(got) != 0 {
		t.Errorf("requests for a known kid: %q, want none", got)
	}
}

// TestDocsShowTheCode checks that docs/clients.md shows the code of every
// snippet file exactly: a whole file, or a Node file up to its end marker.
func TestDocsShowTheCode(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "clients.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{
		"keyfunc.go",
		filepath.Join("node", "jose.mjs"),
		filepath.Join("node", "jwks-rsa.mjs"),
		filepath.Join("python", "pyjwt_client.py"),
		filepath.Join("java", "DaemonKeys.java"),
	} {
		code, err := snippet(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(doc, code) {
			t.Errorf("docs/clients.md does not show the code of %s as it is (%d bytes)", name, len(code))
		}
	}
}

// nodeMarker ends the part of a Node file that docs/clients.md shows; the
// test harness follows it.
const nodeMarker = "// ---- end of the code shown in docs/clients.md ----"

// snippet returns the code of a snippet file that docs/clients.md shows,
// with a final newline.
func snippet(name string) ([]byte, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	if strings.HasSuffix(name, ".mjs") {
		i := bytes.Index(b, []byte(nodeMarker))
		if i < 0 {
			return nil, errors.New(name + ": no end marker")
		}
		b = b[:i]
	}
	return append(bytes.TrimRight(b, "\n"), '\n'), nil
}

// TestNode runs the jose and jwks-rsa code of docs/clients.md (node/*.mjs)
// against the daemon: each verifies a token, the IdP then publishes a new
// key, and each verifies a token signed with it thanks to one revalidation.
// It needs the npm registry (npm ci), so it runs only with
// JWKSCACHE_CLIENT_TESTS=1.
func TestNode(t *testing.T) {
	if os.Getenv("JWKSCACHE_CLIENT_TESTS") != "1" {
		t.Skip("set JWKSCACHE_CLIENT_TESTS=1 to run the Node clients (npm ci needs the npm registry)")
	}
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not on PATH", tool)
		}
	}
	npmCI(t)
	d := startDaemon(t)

	for _, tc := range []struct {
		name, script string
		env          []string
		// Cache-Control of the client's requests: for token1, then for
		// token2 after the rotation.
		before, after []string
	}{
		// jose's first fetch is routine: no header, the daemon answers
		// from memory. Its refetch for the new kid has the header.
		{name: "jose", script: "jose.mjs", before: []string{""}, after: []string{"no-cache"}},
		// token2 comes after cacheMaxAge (60 s, faked): jose reloads the
		// set (no header: from memory, still the old set), then refetches
		// for the new kid at once (cooldownDuration 0).
		{
			name: "jose-after-cacheMaxAge", script: "jose.mjs", env: []string{"JOSE_ADVANCE_MS=61000"},
			before: []string{""}, after: []string{"", "no-cache"},
		},
		// jwks-rsa sends the header on every fetch; each of its fetches is
		// for a kid it has not cached.
		{name: "jwks-rsa", script: "jwks-rsa.mjs", before: []string{"no-cache"}, after: []string{"no-cache"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idp, jwksURL := d.provider(t, tc.name)
			idpRequests := func() int { return idp.Requests(jwkscachetest.JWKSPath) }
			token1 := idp.Token(idp.Claims("alice", audience)) // kid k1
			k2 := jwkscachetest.NewKey("ES256", "k2")          // not published yet
			token2 := k2.Sign(idp.Claims("bob", audience))

			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "node", tc.script, jwksURL, token1, token2)
			cmd.Dir = "node"
			cmd.Env = append(os.Environ(), "JWT_ISSUER="+idp.Issuer(), "JWT_AUDIENCE="+audience)
			cmd.Env = append(cmd.Env, tc.env...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			out := bufio.NewScanner(stdout)
			if !out.Scan() {
				_ = cmd.Wait()
				t.Fatalf("no output; stderr:\n%s", stderr.String())
			}
			line1 := out.Text()
			before := idpRequests()

			// The IdP publishes k2 and signs with it.
			idp.JWKS().SetSigningKey(k2)
			_, _ = io.WriteString(stdin, "\n")
			_ = stdin.Close()

			var rest []string
			for out.Scan() {
				rest = append(rest, out.Text())
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("node %s: %v\nstdout:\n%s\n%s\nstderr:\n%s", tc.script, err, line1, strings.Join(rest, "\n"), stderr.String())
			}
			t.Logf("node %s:\n%s\n%s", tc.script, line1, strings.Join(rest, "\n"))

			if want := "verified token1 kid=k1 sub=alice"; line1 != want {
				t.Errorf("first line %q, want %q", line1, want)
			}
			if want := []string{"verified token2 kid=k2 sub=bob"}; !slices.Equal(rest, want) {
				t.Errorf("then %q, want %q", rest, want)
			}
			got := d.cacheControls(jwksURL)
			if n := len(tc.before); len(got) < n || !slices.Equal(got[:n], tc.before) || !slices.Equal(got[n:], tc.after) {
				t.Errorf("Cache-Control of the client's requests: %q, want %q then %q", got, tc.before, tc.after)
			}
			// Each no-cache request is one revalidation: one request to
			// the IdP (1 was the daemon's first load).
			if want := 1 + count(tc.before, "no-cache"); before != want {
				t.Errorf("IdP requests after token1: %d, want %d", before, want)
			}
			if n := idpRequests() - before; n != 1 {
				t.Errorf("IdP requests for token2: %d, want 1 (one revalidation)", n)
			}
		})
	}
}

func count(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

// npmCI installs node/package-lock.json's packages into node/node_modules.
func npmCI(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
	cmd.Dir = "node"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/jwkscachetest"
)

// runCmd runs the command in-process and returns its exit code and output.
func runCmd(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(t.Context(), args, strings.NewReader(stdin), &out, &errb, envOf())
	return code, out.String(), errb.String()
}

func startIdP(t *testing.T) (*jwkscachetest.IdP, string) {
	t.Helper()
	idp := jwkscachetest.New()
	if err := idp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	return idp, writeCA(t, idp, t.TempDir())
}

func TestVersion(t *testing.T) {
	code, out, _ := runCmd(t, "", "version")
	if code != 0 || !strings.Contains(out, jwkscache.Version) || !strings.Contains(out, "go1.") {
		t.Fatalf("%d %q", code, out)
	}
	if code, _, errs := runCmd(t, "", "frobnicate"); code != exitUsage || !strings.Contains(errs, "unknown command") {
		t.Fatalf("%d %q", code, errs)
	}
}

func TestFetch(t *testing.T) {
	idp, ca := startIdP(t)
	code, out, errs := runCmd(t, "", "fetch", idp.JWKSURL(), "--allow-loopback", "--ca-file", ca, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s %s", code, out, errs)
	}
	var rep fetchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.OK || len(rep.Keys) != 1 || rep.Keys[0].KID != "k1" || rep.Keys[0].KTY != "RSA" || rep.Keys[0].Alg != "RS256" {
		t.Fatalf("%+v", rep)
	}
	if rep.TTL == nil || rep.TTL.Seconds != 300 || rep.TTL.Source != "max-age" || rep.TTL.Clamp != "" {
		t.Fatalf("ttl %+v", rep.TTL)
	}
	if rep.Validators.ETag == "" {
		t.Fatal("no ETag")
	}
	for _, c := range rep.Policy {
		if c.Verdict != "pass" {
			t.Errorf("check %+v", c)
		}
	}

	// Text form, a document with a key the cache skips, and a clamp.
	k := idp.SigningKey().Public
	pub, _ := json.Marshal(k)
	idp.SetBody("/mixed.json", fmt.Appendf(nil, `{"keys":[%s,{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}]}`, pub), "application/json")
	idp.SetHeader("/mixed.json", "Cache-Control", "max-age=5")
	code, out, _ = runCmd(t, "", "fetch", idp.URL()+"/mixed.json", "--allow-loopback", "--ca-file", ca)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	for _, want := range []string{`kid "k1"`, `kid "hmac"`, "symmetric_key", "30s from max-age, at minTtl", "etag"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}

	// Refusals: the address policy, http, a failing IdP.
	code, out, _ = runCmd(t, "", "fetch", idp.JWKSURL(), "--ca-file", ca)
	if code != exitFailure || !strings.Contains(out, "url      fail") || !strings.Contains(out, "IP-literal") {
		t.Fatalf("without --allow-loopback: %d\n%s", code, out)
	}
	code, out, _ = runCmd(t, "", "fetch", "http://127.0.0.1:1/jwks", "--allow-loopback")
	if code != exitFailure || !strings.Contains(out, "scheme   fail") {
		t.Fatalf("http: %d\n%s", code, out)
	}
	idp.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Status: 404})
	code, out, _ = runCmd(t, "", "fetch", idp.JWKSURL(), "--allow-loopback", "--ca-file", ca, "--json")
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if code != exitFailure || rep.OK || rep.Error == nil || rep.Error.Class != "status" || rep.Error.StatusCode != 404 {
		t.Fatalf("404: %d %+v", code, rep.Error)
	}
	idp.ClearFault(jwkscachetest.JWKSPath)

	// Discovery.
	code, out, _ = runCmd(t, "", "fetch", "--issuer", idp.Issuer(), "--allow-loopback", "--ca-file", ca)
	if code != 0 || !strings.Contains(out, idp.JWKSURL()+" (discovered)") {
		t.Fatalf("discovery: %d\n%s", code, out)
	}
}

func TestVerify(t *testing.T) {
	idp, ca := startIdP(t)
	good := idp.Token(idp.Claims("alice", "api"))
	expired := idp.Claims("alice", "api")
	expired.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Hour))
	otherIss := idp.Claims("alice", "api")
	otherIss.Issuer = "https://evil.example"
	stranger := jwkscachetest.NewUniqueKey("RS256", "k9")
	impostor := jwkscachetest.NewUniqueKey("RS256", "k1") // the IdP's kid, other key material
	pol := []string{"--allow-loopback", "--ca-file", ca}
	for _, tc := range []struct {
		name, token string
		args        []string
		code        int
		want        string
	}{
		{"valid", good, []string{"--jwks", idp.JWKSURL(), "--audience", "api"}, 0, `VALID    signature verified with key "k1"`},
		{"valid by discovery", good, []string{"--issuer", idp.Issuer()}, 0, "VALID"},
		{"expired", idp.Token(expired), []string{"--jwks", idp.JWKSURL()}, 1, "INVALID  expired"},
		{"wrong issuer", idp.Token(otherIss), []string{"--jwks", idp.JWKSURL(), "--issuer", idp.Issuer()}, 1, "INVALID  wrong issuer"},
		{"wrong audience", good, []string{"--jwks", idp.JWKSURL(), "--audience", "other"}, 1, "INVALID  wrong audience"},
		{"unknown kid", stranger.Sign(idp.Claims("alice")), []string{"--jwks", idp.JWKSURL()}, 1, "INVALID  unknown kid"},
		{"bad signature", impostor.Sign(idp.Claims("alice")), []string{"--jwks", idp.JWKSURL()}, 1, "INVALID  bad signature"},
		{"alg not allowed", good, []string{"--jwks", idp.JWKSURL(), "--alg", "ES256"}, 1, `INVALID  alg not allowed: the token is signed with "RS256"`},
		{"malformed", "not.a.jwt", []string{"--jwks", idp.JWKSURL()}, 1, "INVALID  malformed"},
		{"keys unavailable", good, []string{"--jwks", idp.URL() + "/nothing-here"}, exitUnavailable, "UNKNOWN  keys unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"verify", "-"}, append(tc.args, pol...)...)
			code, out, errs := runCmd(t, tc.token+"\n", args...)
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d (want %d), want %q in:\n%s%s", code, tc.code, tc.want, out, errs)
			}
			if strings.Contains(out+errs, tc.token) {
				t.Fatal("the token was printed")
			}
		})
	}
	if code, _, _ := runCmd(t, "", "verify", good); code != exitUsage {
		t.Fatalf("no source of keys: exit %d", code)
	}
}

// TestVerifyDaemon: verify --daemon against a daemon in this process.
func TestVerifyDaemon(t *testing.T) {
	idp, _ := startIdP(t)
	d, token := startTestDaemon(t, idp)
	put(t, d, token, idp)
	k2 := idp.JWKS().Rotate("ES256") // the daemon has not seen it yet
	good := idp.Token(idp.Claims("alice", "api"))
	expired := idp.Claims("alice")
	expired.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute))
	base := []string{"--daemon", "http://" + d.Addr(), "--tenant", "acme", "--provider", "main"}
	for _, tc := range []struct {
		name, token string
		args        []string
		code        int
		want        string
	}{
		{"new kid caught", good, []string{"--issuer", idp.Issuer()}, 0, fmt.Sprintf("VALID    signature verified with key %q", k2.KID)},
		{"expired", idp.Token(expired), nil, 1, "INVALID  expired"},
		{"unknown kid", jwkscachetest.NewUniqueKey("RS256", "k9").Sign(idp.Claims("a")), nil, 1, "INVALID  unknown kid"},
		{"bad signature", jwkscachetest.NewUniqueKey("ES256", k2.KID).Sign(idp.Claims("a")), nil, 1, "INVALID  bad signature"},
		{"wrong issuer", good, []string{"--issuer", "https://other.example"}, 1, "INVALID  wrong issuer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runCmd(t, "", append(append([]string{"verify", tc.token}, base...), tc.args...)...)
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d (want %d), want %q in:\n%s%s", code, tc.code, tc.want, out, errs)
			}
			if strings.Contains(out+errs, tc.token) {
				t.Fatal("the token was printed")
			}
		})
	}
}

// startTestDaemon runs a daemon in this process, with a memory store and
// the IdP trusted.
func startTestDaemon(t *testing.T, idp *jwkscachetest.IdP) (*daemon, string) {
	t.Helper()
	cfg := defaultConfig()
	cfg.Listen = "127.0.0.1:0"
	token := newToken()
	cfg.AdminTokens = []string{token}
	cfg.Store = storeConfig{Kind: storeMemory}
	cfg.Security.AllowedAddresses = idp.AllowedAddresses()
	cfg.Security.RootCAs = idp.CertPool()
	d, err := startDaemon(t.Context(), cfg, slog.New(slog.DiscardHandler), daemonHooks{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := d.shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return d, token
}

func put(t *testing.T, d *daemon, token string, idp *jwkscachetest.IdP) {
	t.Helper()
	reg := fmt.Sprintf(`{"jwksUrl": %q, "issuer": %q}`, idp.JWKSURL(), idp.Issuer())
	code, _, body := call(t, http.MethodPut, "http://"+d.Addr()+"/tenants/acme/providers/main", token, []byte(reg), nil)
	if code != http.StatusAccepted {
		t.Fatalf("PUT: %d %s", code, body)
	}
}

// TestReadiness: ready only when every configured provider has usable
// keys (not while one loads, nor while one has none because its IdP
// fails), and not while shutting down.
func TestReadiness(t *testing.T) {
	idp, _ := startIdP(t)
	idp.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Delay: time.Minute, Count: 1})
	cfg := defaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminTokens = []string{newToken()}
	cfg.Store = storeConfig{Kind: storeMemory}
	cfg.Security.AllowedAddresses = idp.AllowedAddresses()
	cfg.Security.RootCAs = idp.CertPool()
	cfg.Providers = []providerConfig{
		{Reg: jwkscache.Registration{TenantID: "acme", ProviderID: "slow", JWKSURL: idp.JWKSURL(),
			Retry: jwkscache.RetryPolicy{AttemptTimeout: time.Second}}, Path: "providers[0]"},
		{Reg: jwkscache.Registration{TenantID: "acme", ProviderID: "down", JWKSURL: idp.URL() + "/missing"}, Path: "providers[1]"},
	}
	failed := make(chan struct{}, 1)
	d, err := startDaemon(t.Context(), cfg, slog.New(slog.DiscardHandler), daemonHooks{OnEvent: func(ev jwkscache.Event) {
		if ev.Kind == jwkscache.EventRefreshFailed && ev.ProviderID == "down" {
			select {
			case failed <- struct{}{}:
			default:
			}
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	<-failed
	if err := d.ready(); err == nil || !strings.Contains(err.Error(), "acme/slow: first load in progress") {
		t.Fatalf("ready while acme/slow loads: %v", err)
	}
	if code, _, _ := call(t, http.MethodGet, "http://"+d.Addr()+"/readyz", "", nil, nil); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz %d", code)
	}
	// The slow load: its first attempt waits in the IdP's Delay fault
	// until its 1 s timeout, and the retry (Count 1: no fault) loads.
	// Refresh joins that fetch.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := d.m.Refresh(ctx, "acme", "slow"); err != nil {
		t.Fatal(err)
	}
	if err := d.ready(); err == nil || !strings.Contains(err.Error(), "acme/down: no usable keys") {
		t.Fatalf("ready with acme/down failing: %v", err)
	}
	// Removed at run time, acme/down no longer counts.
	if err := d.m.Unregister(t.Context(), "acme", "down"); err != nil {
		t.Fatal(err)
	}
	if err := d.ready(); err != nil {
		t.Fatalf("not ready with every remaining configured provider loaded: %v", err)
	}
	if code, _, _ := call(t, http.MethodGet, "http://"+d.Addr()+"/readyz", "", nil, nil); code != http.StatusOK {
		t.Fatalf("/readyz %d", code)
	}
	// Every key of a configured provider denied: no usable key, not ready.
	st, _ := d.m.Status("acme", "slow")
	for _, k := range st.Keys {
		if err := d.m.DenyKey("acme", "slow", k.KID); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.ready(); err == nil || !strings.Contains(err.Error(), "acme/slow: no usable keys") {
		t.Fatalf("ready with every key of acme/slow denied: %v", err)
	}
	for _, k := range st.Keys {
		_ = d.m.AllowKey("acme", "slow", k.KID)
	}
	if err := d.ready(); err != nil {
		t.Fatalf("not ready once the keys are allowed again: %v", err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if err := d.shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if err := d.ready(); err == nil {
		t.Fatal("ready after shutdown")
	}
}

// TestDemo runs the demo in this process (under the race detector when
// the tests are), within its time bound.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	if err := runDemo(ctx, &out, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("%v after %v\n%s", err, time.Since(start), out.String())
	}
	for _, want := range []string{"1. An identity provider", "-> 202 Accepted", "kids [k1]", "kids [k1 k2]",
		"The IdP is shut down", "fetch failed (network)", "the keys are still served", "/jwks.json x2", "stopped cleanly"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q in:\n%s", want, out.String())
		}
	}
}

// TestServeCheck: serve --check judges providers against the policy.
func TestServeCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, good, "providers:\n  - {tenantId: a, providerId: p, jwksUrl: 'https://idp.example/j'}\n")
	writeFile(t, bad, "security: {allowedDomains: [example.com]}\nproviders:\n  - {tenantId: a, providerId: p, jwksUrl: 'https://idp.other/j'}\n")
	var errb bytes.Buffer
	if code := run(t.Context(), []string{"serve", "--config", good, "--check"}, nil, io.Discard, &errb, envOf()); code != 0 {
		t.Fatalf("good: %d %s", code, errb.String())
	}
	errb.Reset()
	code := run(t.Context(), []string{"serve", "--check", "--config", bad}, nil, io.Discard, &errb, envOf())
	if code != exitUsage || !strings.Contains(errb.String(), "providers[0] (provider a/p)") || !strings.Contains(errb.String(), "outside the allowed domains") {
		t.Fatalf("bad: %d %s", code, errb.String())
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/jwkscachetest"
)

// demoTimeout bounds the whole demo; it takes about a second, and at most
// a few when the outage step's retries run long.
const demoTimeout = 20 * time.Second

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("demo", "demo [--verbose]", stderr)
	verbose := fs.Bool("verbose", false, "also show the daemon's logs (JSON, on standard error)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return flagExit(err)
	}
	if len(pos) > 0 {
		fs.Usage()
		return exitUsage
	}
	log := slog.New(slog.DiscardHandler)
	if *verbose {
		log = slog.New(slog.NewJSONHandler(stderr, nil))
	}
	ctx, cancel := context.WithTimeout(ctx, demoTimeout)
	defer cancel()
	if err := runDemo(ctx, stdout, log); err != nil {
		fmt.Fprintf(stdout, "\nDEMO FAILED: %v\n", err)
		fmt.Fprintf(stderr, "jwks-cache demo: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// demo is the state of one run of the demo.
type demo struct {
	w      io.Writer
	client *http.Client
	base   string // the daemon's URL
	admin  string
	events chan jwkscache.Event
	calls  int // requests made to the daemon
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.w, "   "+format+"\n", args...) }

func (d *demo) step(n int, title string) { fmt.Fprintf(d.w, "\n%d. %s\n", n, title) }

// runDemo narrates, step by step, a daemon serving a local identity
// provider's keys through a rotation and an outage. Every line reports
// what happened; a step that does not behave ends the demo with an error.
func runDemo(ctx context.Context, w io.Writer, log *slog.Logger) error {
	start := time.Now()
	d := &demo{w: w, client: &http.Client{Timeout: 10 * time.Second}, events: make(chan jwkscache.Event, 256)}
	fmt.Fprintln(w, "jwks-cache demo: an identity provider and a jwks-cache daemon, both on 127.0.0.1; nothing leaves this machine.")

	d.step(1, "An identity provider")
	idp := jwkscachetest.New()
	if err := idp.Start(); err != nil {
		return err
	}
	defer idp.Close()
	k1 := idp.SigningKey()
	d.say("A test IdP (package jwkscachetest) serves its key set at %s", idp.JWKSURL())
	d.say("over TLS with its own test CA. It holds one %s key, kid %q, and answers", k1.Alg, k1.KID)
	d.say("with Cache-Control: max-age=%d.", int(jwkscachetest.DefaultMaxAge.Seconds()))

	d.step(2, "A jwks-cache daemon")
	dir, err := os.MkdirTemp("", "jwks-cache-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := defaultConfig()
	cfg.Listen = "127.0.0.1:0"
	d.admin = newToken()
	cfg.AdminTokens = []string{d.admin}
	cfg.Store = storeConfig{Kind: storeBolt, Path: filepath.Join(dir, "demo.db")}
	cfg.Security.AllowedAddresses = idp.AllowedAddresses()
	cfg.Security.RootCAs = idp.CertPool()
	dmn, err := startDaemon(ctx, cfg, log, daemonHooks{OnEvent: func(ev jwkscache.Event) {
		select {
		case d.events <- ev:
		default: // never block the Manager's delivery goroutine
		}
	}})
	if err != nil {
		return fmt.Errorf("starting the daemon: %w", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = dmn.shutdown(sctx)
		}
	}()
	d.base = "http://" + dmn.Addr()
	d.say("Listening on %s: a bolt store in a temporary directory, an admin", d.base)
	d.say("token made for this run, the IdP's CA trusted, and loopback let through the")
	d.say("dial guard (security.allowedAddresses 127.0.0.0/8 and ::1/128).")
	if code, _, _, err := d.do(ctx, http.MethodGet, "/readyz", nil, nil); err != nil || code != http.StatusOK {
		return fmt.Errorf("GET /readyz: %d %v", code, err)
	}
	d.say("GET /readyz -> 200")

	d.step(3, "Register the provider over HTTP")
	reg := fmt.Sprintf(`{"jwksUrl": %q, "issuer": %q}`, idp.JWKSURL(), idp.Issuer())
	code, _, body, err := d.do(ctx, http.MethodPut, "/tenants/acme/providers/main", []byte(reg),
		http.Header{"Authorization": {"Bearer " + d.admin}, "Content-Type": {"application/json"}})
	if err != nil {
		return err
	}
	if code != http.StatusAccepted {
		return fmt.Errorf("PUT answered %d: %s", code, body)
	}
	var st struct{ State string }
	_ = json.Unmarshal(body, &st)
	d.say("PUT /tenants/acme/providers/main with the admin token")
	d.say("    %s", reg)
	d.say("-> 202 Accepted, state %s: the keys load in the background.", st.State)
	ev, err := d.wait(ctx, jwkscache.EventKeysChanged)
	if err != nil {
		return fmt.Errorf("waiting for the first load: %w", err)
	}
	d.say("The daemon loaded kids %v from the IdP.", ev.KIDs)

	d.step(4, "Read the keys")
	set1, h, err := d.jwks(ctx, false, "")
	if err != nil {
		return err
	}
	if got := kids(set1); !slices.Equal(got, []string{k1.KID}) {
		return fmt.Errorf("the daemon serves kids %v, want [%s]", got, k1.KID)
	}
	d.say("GET /tenants/acme/providers/main/jwks (public, no token)")
	d.say("-> 200, kids %v, ETag %s, Cache-Control: %s", kids(set1), h.Get("ETag"), h.Get("Cache-Control"))

	d.step(5, "Verify a token with the daemon's keys alone")
	tok1 := idp.Token(idp.Claims("alice", "orders-api"))
	if err := d.verify(tok1, set1, idp.Issuer()); err != nil {
		return fmt.Errorf("token signed with %s: %w", k1.KID, err)
	}
	d.say("The IdP minted a token for alice, signed with %s. Checked with go-jose", k1.KID)
	d.say("against the key set of step 4 only: signature valid, iss and exp valid.")

	d.step(6, "A key rotation, caught on first sight")
	k2 := idp.JWKS().Rotate("ES256")
	tok2 := idp.Token(idp.Claims("bob", "orders-api"))
	d.say("The IdP rotated without notice: it now signs with %s (%s) and publishes %v.", k2.KID, k2.Alg, kidsOf(idp.JWKS().Keys()))
	if err := d.verify(tok2, set1, idp.Issuer()); err == nil {
		return errors.New("a token signed with the new key verified against the old set")
	} else {
		d.say("A token signed with %s does not verify against the copy of step 4 (%v).", k2.KID, err)
	}
	before := idp.Requests(jwkscachetest.JWKSPath)
	set2, _, err := d.jwks(ctx, true, "")
	if err != nil {
		return err
	}
	if !slices.Contains(kids(set2), k2.KID) {
		// Revalidate shares a fetch already under way, even one begun
		// before the rotation; a kid lookup waits for a fetch begun after.
		d.say("GET .../jwks with Cache-Control: no-cache -> 200, kids %v: still without %s.", kids(set2), k2.KID)
		d.say("The revalidation was answered by a fetch already under way, begun before the")
		d.say("rotation (or took longer than the daemon's 2 s bound). Asking for the kid itself:")
		only, _, err := d.jwks(ctx, false, k2.KID)
		if err != nil {
			return err
		}
		d.say("GET .../jwks?kid=%s -> 200, kids %v.", k2.KID, kids(only))
		if set2, _, err = d.jwks(ctx, false, ""); err != nil {
			return err
		}
		if !slices.Contains(kids(set2), k2.KID) {
			return fmt.Errorf("after a kid request the daemon serves kids %v, without %s", kids(set2), k2.KID)
		}
		d.say("GET .../jwks -> 200, kids %v (IdP requests since the rotation: %d).", kids(set2), idp.Requests(jwkscachetest.JWKSPath)-before)
	} else {
		d.say("GET .../jwks with Cache-Control: no-cache: the daemon revalidated with the")
		d.say("IdP (%d request) -> 200, kids %v.", idp.Requests(jwkscachetest.JWKSPath)-before, kids(set2))
	}
	if err := d.verify(tok2, set2, idp.Issuer()); err != nil {
		return fmt.Errorf("token signed with %s: %w", k2.KID, err)
	}
	d.say("The token signed with %s verifies with the new set.", k2.KID)

	d.step(7, "The IdP goes down")
	idp.Close()
	d.say("The IdP is shut down: its port refuses connections.")
	set3, _, err := d.jwks(ctx, false, "")
	if err != nil {
		return fmt.Errorf("during the outage: %w", err)
	}
	if !slices.Equal(kids(set3), kids(set2)) {
		return fmt.Errorf("during the outage the daemon serves kids %v, want %v", kids(set3), kids(set2))
	}
	d.say("GET .../jwks -> 200 from memory, kids %v, stale %t (fresh until %s).", kids(set3), set3.stale, set3.expiresAt.Local().Format(time.TimeOnly))
	drain(d.events)
	code, _, body, err = d.do(ctx, http.MethodPost, "/tenants/acme/providers/main/refresh", nil, http.Header{"Authorization": {"Bearer " + d.admin}})
	if err != nil {
		return err
	}
	if code != http.StatusAccepted {
		return fmt.Errorf("POST .../refresh answered %d: %s", code, body)
	}
	fail, err := d.wait(ctx, jwkscache.EventRefreshFailed)
	if err != nil {
		return fmt.Errorf("waiting for the refresh to fail: %w", err)
	}
	d.say("POST .../refresh with the admin token -> 202; the daemon's fetch failed (%s).", fail.Class)
	set4, _, err := d.jwks(ctx, false, "")
	if err != nil {
		return fmt.Errorf("after the failed refresh: %w", err)
	}
	if !slices.Equal(kids(set4), kids(set2)) {
		return fmt.Errorf("after the failed refresh the daemon serves kids %v, want %v", kids(set4), kids(set2))
	}
	d.say("GET .../jwks -> 200, kids %v, stale %t: the keys are still served.", kids(set4), set4.stale)
	if err := d.verify(tok2, set4, idp.Issuer()); err != nil {
		return fmt.Errorf("during the outage: %w", err)
	}
	d.say("Tokens signed with %s still verify with what the daemon serves.", k2.KID)

	d.step(8, "Summary")
	counts := idp.RequestCounts()
	paths := make([]string, 0, len(counts))
	for p, n := range counts {
		paths = append(paths, fmt.Sprintf("%s x%d", p, n))
	}
	slices.Sort(paths)
	if n := counts[jwkscachetest.JWKSPath]; n != 2 || idp.TotalRequests() != 2 {
		return fmt.Errorf("the IdP answered %d requests (%s), expected 2 for its key set", idp.TotalRequests(), strings.Join(paths, ", "))
	}
	d.say("The IdP answered %d requests (%s): the first load, and the fetch that", idp.TotalRequests(), strings.Join(paths, ", "))
	d.say("caught %s.", k2.KID)
	d.say("The daemon answered %d requests from this demo; all keys came from memory", d.calls)
	d.say("except where it said it asked the IdP.")
	stopped = true
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := dmn.shutdown(sctx); err != nil {
		return fmt.Errorf("stopping the daemon: %w", err)
	}
	d.say("The daemon stopped cleanly. Done in %s.", time.Since(start).Round(10*time.Millisecond))
	return nil
}

// do sends one request to the daemon.
func (d *demo) do(ctx context.Context, method, path string, body []byte, h http.Header) (int, http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, d.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	d.calls++
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, resp.Header, b, err
}

// servedSet is the daemon's JWKS document.
type servedSet struct {
	jose.JSONWebKeySet
	stale     bool
	expiresAt time.Time
}

func kids(s *servedSet) []string {
	out := make([]string, 0, len(s.Keys))
	for _, k := range s.Keys {
		out = append(out, k.KeyID)
	}
	return out
}

func kidsOf(keys []*jwkscachetest.Key) []string {
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k.KID)
	}
	return out
}

// jwks reads the provider's keys from the daemon; noCache asks it to
// revalidate with the IdP first, and kid asks for that kid's keys only.
func (d *demo) jwks(ctx context.Context, noCache bool, kid string) (*servedSet, http.Header, error) {
	var h http.Header
	if noCache {
		h = http.Header{"Cache-Control": {"no-cache"}}
	}
	path := "/tenants/acme/providers/main/jwks"
	if kid != "" {
		path += "?kid=" + url.QueryEscape(kid)
	}
	code, hdr, body, err := d.do(ctx, http.MethodGet, path, nil, h)
	if err != nil {
		return nil, nil, err
	}
	if code != http.StatusOK {
		return nil, nil, fmt.Errorf("GET .../jwks answered %d: %s", code, body)
	}
	var s servedSet
	if err := json.Unmarshal(body, &s.JSONWebKeySet); err != nil {
		return nil, nil, fmt.Errorf("GET .../jwks: %w", err)
	}
	var extra struct {
		Stale     bool      `json:"stale"`
		ExpiresAt time.Time `json:"expiresAt"`
	}
	if err := json.Unmarshal(body, &extra); err != nil {
		return nil, nil, fmt.Errorf("GET .../jwks: %w", err)
	}
	s.stale, s.expiresAt = extra.Stale, extra.ExpiresAt
	return &s, hdr, nil
}

// verify checks a token with go-jose against set alone, then its issuer
// and lifetime.
func (d *demo) verify(raw string, set *servedSet, issuer string) error {
	payload, _, err := verifyJWS(raw, &set.JSONWebKeySet, supportedAlgs)
	if err != nil {
		return err
	}
	var claims jwt.MapClaims
	if err := json.Unmarshal(payload, &claims); err != nil {
		return err
	}
	return jwt.NewValidator(jwt.WithIssuer(issuer), jwt.WithExpirationRequired()).Validate(claims)
}

// wait returns the next event of kind.
func (d *demo) wait(ctx context.Context, kind jwkscache.EventKind) (jwkscache.Event, error) {
	for {
		select {
		case ev := <-d.events:
			if ev.Kind == kind {
				return ev, nil
			}
		case <-ctx.Done():
			return jwkscache.Event{}, ctx.Err()
		}
	}
}

func drain(ch chan jwkscache.Event) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

package bench

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache/jwkscachetest"
)

// IdP is one started loopback IdP with a token for its signing key.
type IdP struct {
	*jwkscachetest.IdP
	Token  string     // signed by the current signing key
	Parsed *jwt.Token // Token parsed without verification
	Raw    any        // the signing key's public key
}

// StartIdP starts an IdP over TLS whose key set holds one key for alg.
func StartIdP(alg string) (*IdP, error) {
	p := jwkscachetest.NewEmpty()
	p.JWKS().Rotate(alg)
	p.SetMaxAge(jwkscachetest.JWKSPath, jwkscachetest.DefaultMaxAge)
	if err := p.Start(); err != nil {
		return nil, err
	}
	tok := p.Token(p.Claims("alice", "api"))
	parsed, _, err := jwt.NewParser().ParseUnverified(tok, jwt.MapClaims{})
	if err != nil {
		p.Close()
		return nil, err
	}
	return &IdP{IdP: p, Token: tok, Parsed: parsed, Raw: p.SigningKey().Signer.Public()}, nil
}

// Env returns what an adapter needs to reach the IdP.
func (p *IdP) Env() Env {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig.RootCAs = p.CertPool()
	return Env{
		JWKSURL: p.JWKSURL(),
		Client:  &http.Client{Transport: t, Timeout: time.Minute},
		RootCAs: p.CertPool(),
		Allowed: p.AllowedAddresses(),
	}
}

// Requests is the number of key set requests the IdP has received.
func (p *IdP) Requests() int { return p.IdP.Requests(jwkscachetest.JWKSPath) }

// Warm builds the peer on p and makes sure it holds p's key.
func Warm(ctx context.Context, peer Peer, p *IdP) (Cache, error) {
	c, err := peer.New(ctx, p.Env())
	if err != nil {
		return nil, err
	}
	if err := c.Verify(ctx, p.Token); err != nil {
		c.Close()
		return nil, fmt.Errorf("%s: warm-up verify: %w", peer.Name, err)
	}
	return c, nil
}

// ---- 1. warm lookup

// BenchWarm measures the peer's warm key lookup for a parsed token (its
// Keyfunc). It skips peers without one.
func BenchWarm(b *testing.B, peer Peer, p *IdP) {
	c, err := Warm(b.Context(), peer, p)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	kf := c.Keyfunc()
	if kf == nil {
		b.Skipf("%s has no key lookup (only VerifySignature): see BenchmarkVerify", peer.Name)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := kf(p.Parsed); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// ---- 2. verify overhead

// BenchVerify measures verifying p.Token through the peer.
func BenchVerify(b *testing.B, peer Peer, p *IdP) {
	c, err := Warm(b.Context(), peer, p)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := b.Context()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := c.Verify(ctx, p.Token); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchRawJWT is the baseline of the golang-jwt based peers: jwt.Parse with
// the raw public key.
func BenchRawJWT(b *testing.B, p *IdP) {
	kf := func(*jwt.Token) (any, error) { return p.Raw, nil }
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := parseWith(p.Token, kf); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchRawJOSE is the baseline of go-oidc, which verifies with go-jose:
// jose.ParseSigned and Verify with the raw public key.
func BenchRawJOSE(b *testing.B, p *IdP) {
	algs := []jose.SignatureAlgorithm{jose.RS256, jose.ES256}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			jws, err := jose.ParseSigned(p.Token, algs)
			if err == nil {
				_, err = jws.Verify(p.Raw)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// ---- 3. cold herd

// HerdResult is the outcome of a cold herd.
type HerdResult struct {
	N        int           // goroutines
	OK       int           // goroutines that got the key
	Requests int           // key set requests the IdP received
	Build    time.Duration // constructor time (some peers fetch in it)
	First    time.Duration // from construction start until the first goroutine had the key
	All      time.Duration // from construction start until every goroutine returned
	Err      error         // first error of a goroutine, if any
}

// HerdSummary sums up repeated herds: the median run by All, and the
// worst request count and success count over all runs.
type HerdSummary struct {
	Runs        []HerdResult
	Median      HerdResult
	MaxRequests int
	MinOK       int
}

func (h HerdSummary) String() string {
	r := h.Median
	first := "never"
	if r.OK > 0 {
		first = round(r.First).String()
	}
	s := fmt.Sprintf("%d req (max of %d runs), %d/%d ok (min); median run: first key %s, all returned %s",
		h.MaxRequests, len(h.Runs), h.MinOK, r.N, first, round(r.All))
	if r.Build > time.Millisecond {
		s += fmt.Sprintf(" (%s of it in the constructor)", round(r.Build))
	}
	if r.Err != nil {
		e := strings.NewReplacer("|", "/", "\n", " ").Replace(r.Err.Error())
		if len(e) > 160 {
			e = e[:160] + "…"
		}
		s += "; error: " + e
	}
	return s
}

// HerdMany runs Herd reps times.
func HerdMany(peer Peer, n int, fail503 bool, timeout time.Duration, reps int) (HerdSummary, error) {
	var h HerdSummary
	h.MinOK = n
	for range reps {
		r, err := Herd(peer, n, fail503, timeout)
		if err != nil {
			return h, err
		}
		h.Runs = append(h.Runs, r)
		h.MaxRequests = max(h.MaxRequests, r.Requests)
		h.MinOK = min(h.MinOK, r.OK)
	}
	sorted := slices.Clone(h.Runs)
	slices.SortFunc(sorted, func(a, b HerdResult) int { return cmp.Compare(a.All, b.All) })
	h.Median = sorted[len(sorted)/2]
	return h, nil
}

// Herd builds the peer on a fresh IdP (cold) and has n goroutines ask for
// the key at once. With fail503, the first key set request answers 503.
// Each goroutine's wait is bounded by timeout.
func Herd(peer Peer, n int, fail503 bool, timeout time.Duration) (HerdResult, error) {
	p, err := StartIdP("RS256")
	if err != nil {
		return HerdResult{}, err
	}
	defer p.Close()
	if fail503 {
		p.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Status: http.StatusServiceUnavailable, Count: 1})
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res := HerdResult{N: n}
	start := time.Now()
	c, err := peer.New(ctx, p.Env())
	res.Build = time.Since(start)
	if err != nil {
		res.Err = err
		res.Requests = p.Requests()
		res.All = time.Since(start)
		return res, nil
	}
	defer c.Close()
	var ok atomic.Int64
	var first atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-gate
			if err := c.Get(ctx, p.Token, p.Parsed); err != nil {
				firstErr.CompareAndSwap(nil, &err)
				return
			}
			if ok.Add(1) == 1 {
				first.Store(int64(time.Since(start)))
			}
		})
	}
	close(gate)
	wg.Wait()
	res.All = time.Since(start)
	res.OK = int(ok.Load())
	res.First = time.Duration(first.Load())
	res.Requests = p.Requests()
	if e := firstErr.Load(); e != nil {
		res.Err = *e
	}
	return res, nil
}

// ---- 4. conditional requests

// Conditional warms the peer, has it refetch by its own means (see each
// adapter's Refresh) and returns the validators of that request.
func Conditional(peer Peer) (string, error) {
	p, err := StartIdP("RS256")
	if err != nil {
		return "", err
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Warm(ctx, peer, p)
	if err != nil {
		return "", err
	}
	defer c.Close()
	before := p.Requests()
	if err := c.Refresh(ctx); err != nil {
		return "", err
	}
	if p.Requests() == before {
		return "no refetch happened", nil
	}
	h := p.LastRequest(jwkscachetest.JWKSPath)
	var got []string
	for _, name := range []string{"If-None-Match", "If-Modified-Since"} {
		if h.Get(name) != "" {
			got = append(got, name)
		}
	}
	if len(got) == 0 {
		return "no (unconditional GET)", nil
	}
	return "yes: " + fmt.Sprint(got), nil
}

// ---- 5. unknown-kid flood

// FloodResult is the outcome of an unknown-kid flood.
type FloodResult struct {
	Tokens   int
	Requests int // key set requests caused by the flood
	Took     time.Duration
	Known    []time.Duration // known-kid verify latencies during the flood
	KnownErr int             // known-kid verifies that failed during the flood
}

func (r FloodResult) String() string {
	s := fmt.Sprintf("%d req in %s; known kid p50 %s p99 %s max %s (n=%d)", r.Requests, round(r.Took),
		round(pct(r.Known, 50)), round(pct(r.Known, 99)), round(pct(r.Known, 100)), len(r.Known))
	if r.KnownErr > 0 {
		s += fmt.Sprintf(", %d known failed", r.KnownErr)
	}
	return s
}

// FloodTokens are n ES256 tokens, each with a kid no IdP publishes.
func FloodTokens(n int) []string {
	k := jwkscachetest.NewKey("ES256", "flood")
	claims := jwt.MapClaims{"sub": "mallory", "exp": time.Now().Add(time.Hour).Unix()}
	out := make([]string, n)
	for i := range out {
		out[i] = k.SignWith(claims, map[string]any{"kid": fmt.Sprintf("unknown-%d", i)})
	}
	return out
}

// Flood warms the peer, then verifies the flood tokens from workers
// goroutines while one more goroutine verifies a known-kid token in a loop
// and records its latencies. Each call is bounded by perCall.
func Flood(peer Peer, tokens []string, workers int, perCall time.Duration) (FloodResult, error) {
	p, err := StartIdP("RS256")
	if err != nil {
		return FloodResult{}, err
	}
	defer p.Close()
	c, err := Warm(context.Background(), peer, p)
	if err != nil {
		return FloodResult{}, err
	}
	defer c.Close()
	before := p.Requests()
	res := FloodResult{Tokens: len(tokens)}
	var next atomic.Int64
	done := make(chan struct{})
	var knownWG sync.WaitGroup
	knownWG.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), perCall)
			t0 := time.Now()
			err := c.Verify(ctx, p.Token)
			res.Known = append(res.Known, time.Since(t0))
			cancel()
			if err != nil {
				res.KnownErr++
			}
		}
	})
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(tokens) {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), perCall)
				_ = c.Verify(ctx, tokens[i])
				cancel()
			}
		})
	}
	wg.Wait()
	res.Took = time.Since(start)
	close(done)
	knownWG.Wait()
	res.Requests = p.Requests() - before
	return res, nil
}

func pct(d []time.Duration, q int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*q + 99) / 100
	return s[max(min(i, len(s))-1, 0)]
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	case d >= time.Microsecond:
		return d.Round(100 * time.Nanosecond)
	}
	return d
}

// ---- 6. rotation without notice

// RotationResult is the outcome of one unannounced rotation.
type RotationResult struct {
	Delay    time.Duration // from the rotation until a token of the new key verified
	OK       bool          // whether it verified within the window
	Attempts int           // verify attempts made
	Requests int           // key set requests after the rotation
}

func (r RotationResult) String() string {
	if !r.OK {
		return fmt.Sprintf("not within %s (%d attempts, %d req)", round(r.Delay), r.Attempts, r.Requests)
	}
	return fmt.Sprintf("%s (%d attempts, %d req)", round(r.Delay), r.Attempts, r.Requests)
}

// Rotations warms the peer, then n times rotates the IdP's key without
// notice (the new key is published and signs at once) and retries a
// token of the new key every `every` until it verifies or window ends.
// Each rotation starts when the previous one ended.
func Rotations(peer Peer, n int, window, every time.Duration) ([]RotationResult, error) {
	p, err := StartIdP("RS256")
	if err != nil {
		return nil, err
	}
	defer p.Close()
	c, err := Warm(context.Background(), peer, p)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var out []RotationResult
	for range n {
		before := p.Requests()
		p.JWKS().Rotate("RS256")
		tok := p.IdP.Token(p.Claims("alice", "api"))
		var res RotationResult
		start := time.Now()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), window)
			err := c.Verify(ctx, tok)
			cancel()
			res.Attempts++
			res.Delay = time.Since(start)
			if err == nil {
				res.OK = true
				break
			}
			if res.Delay >= window {
				break
			}
			time.Sleep(every)
		}
		res.Requests = p.Requests() - before
		out = append(out, res)
	}
	return out, nil
}

// ---- 8. many providers

// FleetResult is the cost of holding many providers.
type FleetResult struct {
	N          int
	Build      time.Duration // constructing/registering all providers
	Warm       time.Duration // then verifying one token through each (8 goroutines)
	Failed     int           // providers whose token did not verify
	Requests   int           // key set requests
	Heap       int64         // live heap after GC, minus before
	Goroutines int           // goroutines, minus before
}

func (r FleetResult) String() string {
	s := fmt.Sprintf("heap +%.1f MiB (%.1f KiB/provider), goroutines +%d; register %s, first verify of all %s; %d req",
		float64(r.Heap)/(1<<20), float64(r.Heap)/1024/float64(r.N), r.Goroutines, round(r.Build), round(r.Warm), r.Requests)
	if r.Failed > 0 {
		s += fmt.Sprintf(", %d failed", r.Failed)
	}
	return s
}

func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// Fleet holds n providers (distinct URLs of one IdP: ?p=i) in the peer,
// verifies a token through each, and measures heap and goroutines while
// they are held.
func Fleet(peer Peer, n int) (FleetResult, error) {
	p, err := StartIdP("RS256")
	if err != nil {
		return FleetResult{}, err
	}
	defer p.Close()
	urls := make([]string, n)
	for i := range urls {
		urls[i] = fmt.Sprintf("%s?p=%d", p.JWKSURL(), i)
	}
	env := p.Env()
	res := FleetResult{N: n}
	g0, h0 := runtime.NumGoroutine(), liveHeap()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	m, err := peer.NewMany(ctx, env, urls)
	if err != nil {
		return res, err
	}
	res.Build = time.Since(start)
	start = time.Now()
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := m.Verify(ctx, i, p.Token); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	res.Warm = time.Since(start)
	res.Failed = int(failed.Load())
	time.Sleep(100 * time.Millisecond) // let finished fetch goroutines exit
	res.Heap = liveHeap() - h0
	res.Goroutines = runtime.NumGoroutine() - g0
	res.Requests = p.Requests()
	m.Close()
	env.Client.CloseIdleConnections()
	return res, nil
}

// ---- 7. outage after a short max-age

// OutageResult is the outcome of an IdP outage.
type OutageResult struct {
	Window   time.Duration
	Checks   int           // known-token verifies made during the outage
	Failed   int           // of which failed
	FirstBad time.Duration // when the first one failed, from the outage start
	Requests int           // key set requests during the outage
}

func (r OutageResult) String() string {
	s := fmt.Sprintf("%d/%d verified over %s", r.Checks-r.Failed, r.Checks, round(r.Window))
	if r.Failed > 0 {
		s += fmt.Sprintf(" (first failure after %s)", round(r.FirstBad))
	}
	return s + fmt.Sprintf("; %d req to the failing IdP", r.Requests)
}

// Outage warms the peer on an IdP serving max-age maxAge, then makes every
// key set request answer 503 and verifies the known token every `every`
// for window.
func Outage(peer Peer, maxAge, window, every time.Duration) (OutageResult, error) {
	p, err := StartIdP("RS256")
	if err != nil {
		return OutageResult{}, err
	}
	defer p.Close()
	p.SetMaxAge(jwkscachetest.JWKSPath, maxAge)
	c, err := Warm(context.Background(), peer, p)
	if err != nil {
		return OutageResult{}, err
	}
	defer c.Close()
	p.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Status: http.StatusServiceUnavailable})
	before := p.Requests()
	res := OutageResult{Window: window}
	start := time.Now()
	for time.Since(start) < window {
		time.Sleep(every)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.Verify(ctx, p.Token)
		cancel()
		res.Checks++
		if err != nil {
			if res.Failed == 0 {
				res.FirstBad = time.Since(start)
			}
			res.Failed++
		}
	}
	res.Requests = p.Requests() - before
	return res, nil
}

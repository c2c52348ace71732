package jwkscache

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jwkscache/jwkscache/internal/testidp"
)

// Providers whose IdPs serve identical bytes share one parsed document;
// different bytes get their own; a document no provider serves any more is
// collected and its entry dropped.
func TestDocumentsShared(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, _ := testidp.NewDefault()
		idp.SetKeys("/other/jwks.json", testidp.NewKey("ES256", "other-1"))
		m := mtManager(t, idp, Options{})
		mtLoad(t, m, "t1", "google", mtURL)
		mtLoad(t, m, "t2", "google", mtURL)
		mtLoad(t, m, "t3", "own", mtHost+"/other/jwks.json")
		snap := func(tenant, provider string) *snapshot {
			return m.providers.get(tenant, provider).snap.Load()
		}
		a, b, c := snap("t1", "google"), snap("t2", "google"), snap("t3", "own")
		if a.doc != b.doc || a.keys != b.keys {
			t.Errorf("two providers serving the same bytes hold two documents")
		}
		if a.doc == c.doc {
			t.Errorf("different bytes share a document")
		}
		if a.keys != a.doc.keys {
			t.Errorf("snapshot.keys is not its document's keys")
		}
		if n := m.docs.len(); n != 2 {
			t.Errorf("%d interned documents, want 2", n)
		}
		a, b, c = nil, nil, nil
		for _, id := range [][2]string{{"t1", "google"}, {"t2", "google"}, {"t3", "own"}} {
			if err := m.Unregister(t.Context(), id[0], id[1]); err != nil {
				t.Fatal(err)
			}
		}
		for range 10 {
			runtime.GC()
			synctest.Wait()
			if m.docs.len() == 0 {
				break
			}
		}
		if n := m.docs.len(); n != 0 {
			t.Errorf("%d interned documents after every provider went, want 0", n)
		}
	})
}

// A hit slot goes back to the free list only once its provider is
// unreachable, so a lookup holding the provider can never count into a
// slot another pair has taken (issue 6, item 6).
func TestHitSlotReleasedWhenUnreachable(t *testing.T) {
	var c hitCounter
	p := &provider{}
	s := c.allocFor(p)
	c.inc(s)
	runtime.GC()
	if n := len(c.free); n != 0 {
		t.Fatalf("slot freed while its provider is reachable (%d free)", n)
	}
	if got := c.load(s); got != 1 {
		t.Fatalf("slot count = %d, want 1", got)
	}
	runtime.KeepAlive(p)
	p = nil
	for range 20 {
		runtime.GC()
		c.mu.Lock()
		n := len(c.free)
		c.mu.Unlock()
		if n == 1 {
			break
		}
		runtime.Gosched()
	}
	c.mu.Lock()
	free := append([]uint32(nil), c.free...)
	c.mu.Unlock()
	if len(free) != 1 || free[0] != s {
		t.Fatalf("free slots %v after the provider became unreachable, want [%d]", free, s)
	}
	if s2 := c.alloc(); s2 != s || c.load(s2) != 0 {
		t.Fatalf("reused slot %d holds %d, want slot %d zeroed", s2, c.load(s2), s)
	}
}

// The Manager counts each registration's pin set with its fetcher: one
// transport per set whatever the order of the pins, kept while a provider
// uses it, closed and dropped when the last one goes or changes its pins.
func TestPinTransportsFollowRegistrations(t *testing.T) {
	m, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	pinA := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	pinB := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 32))
	users := func() map[string]int {
		m.fetcher.mu.Lock()
		defer m.fetcher.mu.Unlock()
		out := map[string]int{}
		for k, e := range m.fetcher.transports {
			out[k] = e.users
		}
		return out
	}
	reg := func(provider string, pins ...string) {
		t.Helper()
		if err := m.Register(t.Context(), Registration{TenantID: "t", ProviderID: provider, JWKSURL: "https://idp.example.com/jwks", PinnedSPKI: pins}); err != nil {
			t.Fatal(err)
		}
	}
	reg("a", pinA, pinB)
	reg("b", pinB, pinA)
	reg("c")
	got := users()
	ab := pinKey([][32]byte{bytes32(1), bytes32(2)})
	if len(got) != 2 || got[ab] != 2 || got[pinKey(nil)] != 1 {
		t.Fatalf("transports %v, want the {A,B} set used twice and the empty set once", got)
	}
	reg("b", pinA) // b changes its pins
	if got := users(); got[ab] != 1 || got[pinKey([][32]byte{bytes32(1)})] != 1 {
		t.Fatalf("after b changed pins: %v", got)
	}
	for _, p := range []string{"a", "b", "c"} {
		if err := m.Unregister(t.Context(), "t", p); err != nil {
			t.Fatal(err)
		}
	}
	if got := users(); len(got) != 0 {
		t.Fatalf("transports %v after every provider went, want none", got)
	}
}

func bytes32(b byte) [32]byte {
	var out [32]byte
	for i := range out {
		out[i] = b
	}
	return out
}

// A document padded with junk entries keeps 100 skip records in Status and
// counts the rest (issue 6, item 4).
func TestStatusSkippedKeysBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		good, err := json.Marshal(keys[1].Public)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		b.WriteString(`{"keys":[`)
		b.Write(good)
		const junk = 5000
		for range junk {
			b.WriteString(`,{}`)
		}
		b.WriteString(`]}`)
		idp.SetBody(testidp.DefaultPath, []byte(b.String()), "application/json")
		m := mtManager(t, idp, Options{})
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		st := mtStatus(t, m, mtTenant, mtProvider)
		if len(st.Keys) != 1 || len(st.SkippedKeys) != 100 || st.SkippedKeysOmitted != junk-100 {
			t.Fatalf("status: %d keys, %d skipped recorded, %d omitted; want 1, 100, %d", len(st.Keys), len(st.SkippedKeys), st.SkippedKeysOmitted, junk-100)
		}
	})
}

// kidCounts returns p's unknown-kid outcomes, for tests.
func (p *provider) kidCounts() (refreshed, rateLimited, negativeHits uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.kid == nil {
		return 0, 0, 0
	}
	return p.kid.refreshed, p.kid.rateLimited, p.kid.negativeHits
}

// negativeKIDs returns a copy of p's negative cache, for tests.
func (p *provider) negativeKIDs() map[string]time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]time.Time{}
	if p.kid != nil {
		maps.Copy(out, p.kid.negative)
	}
	return out
}

// panicTransport panics on every request: a bug below the engine.
type panicTransport struct{}

func (panicTransport) RoundTrip(*http.Request) (*http.Response, error) { panic("transport bug") }

// A refresh that panics fails with its own class, shows in Status, is
// logged with its stack, is retried after the longest backoff, and leaves
// the engine working (issue 6: panics get their own class, not network).
func TestRefreshPanicIsRecordedAsPanic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		var logs strings.Builder
		var mu sync.Mutex
		h := slog.NewTextHandler(lockedWriter{&mu, &logs}, nil)
		tr := &switchTransport{rt: idp}
		m, err := New(Options{HTTPClient: &http.Client{Transport: tr}, Logger: slog.New(h)})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		mtLoad(t, m, mtTenant, mtProvider, mtURL)
		tr.set(panicTransport{})
		err = m.Refresh(t.Context(), mtTenant, mtProvider)
		var pe *panicError
		if !errors.As(err, &pe) || errorClass(err) != ClassPanic || !KeysUnavailable(err) {
			t.Fatalf("Refresh = %v, want a panic error of class panic", err)
		}
		synctest.Wait()
		st := mtStatus(t, m, mtTenant, mtProvider)
		if st.LastErrorClass != string(ClassPanic) || st.ErrorCount != 1 || st.State != StateReady {
			t.Errorf("status after the panic: class %q, %d errors, %v; want panic, 1, Ready", st.LastErrorClass, st.ErrorCount, st.State)
		}
		if got := time.Until(st.NextRefresh); got != failureBackoffMax {
			t.Errorf("next attempt in %v, want %v", got, failureBackoffMax)
		}
		mtMustKey(t, m, mtTenant, mtProvider, keys[0]) // keys still served
		mu.Lock()
		out := logs.String()
		mu.Unlock()
		if !strings.Contains(out, "panic during a refresh") || !strings.Contains(out, "goroutine") {
			t.Errorf("log lacks the panic or its stack:\n%.500s", out)
		}
		// The IdP works again: the retry recovers.
		tr.set(idp)
		time.Sleep(failureBackoffMax)
		synctest.Wait()
		if st := mtStatus(t, m, mtTenant, mtProvider); st.ErrorCount != 0 {
			t.Errorf("after the retry: %d errors (%s), want recovered", st.ErrorCount, st.LastError)
		}
	})
}

type switchTransport struct {
	mu sync.Mutex
	rt http.RoundTripper
}

func (s *switchTransport) set(rt http.RoundTripper) {
	s.mu.Lock()
	s.rt = rt
	s.mu.Unlock()
}

func (s *switchTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	s.mu.Lock()
	rt := s.rt
	s.mu.Unlock()
	return rt.RoundTrip(r)
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// refreshCount returns p's refreshes of result res, of every reason.
func (p *provider) refreshCount(res refreshResult) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n uint64
	if pm := p.met; pm != nil {
		for _, byResult := range pm.refreshes {
			n += byResult[res]
		}
		if pm.rare != nil {
			for _, byResult := range pm.rare.refreshes {
				n += byResult[res]
			}
		}
	}
	return n
}

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// Tests of the daemon's HTTP server limits (daemon.go): the header cap
// against a running daemon, the limits the running daemon's server has,
// and each timeout of newHTTPServer's server in a synctest bubble over an
// in-memory connection, so that the timeouts pass in virtual time.

// TestDaemonServerLimits: the server a running daemon serves with has the
// documented limits, the ones newHTTPServer sets.
func TestDaemonServerLimits(t *testing.T) {
	idp, _ := startIdP(t)
	d, _ := startTestDaemon(t, idp)
	want := newHTTPServer(http.NotFoundHandler(), slog.New(slog.DiscardHandler))
	for _, srv := range []*http.Server{d.srv, want} {
		for _, c := range []struct {
			name      string
			got, want time.Duration
		}{
			{"ReadHeaderTimeout", srv.ReadHeaderTimeout, 5 * time.Second},
			{"ReadTimeout", srv.ReadTimeout, 30 * time.Second},
			{"WriteTimeout", srv.WriteTimeout, 30 * time.Second},
			{"IdleTimeout", srv.IdleTimeout, 2 * time.Minute},
		} {
			if c.got != c.want {
				t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
			}
		}
		if srv.MaxHeaderBytes != 64<<10 {
			t.Errorf("MaxHeaderBytes = %d, want %d", srv.MaxHeaderBytes, 64<<10)
		}
		if srv.ErrorLog == nil {
			t.Errorf("ErrorLog is nil: the server's errors would go to the standard logger, outside the daemon's")
		}
	}
	if d.srv.Handler == nil {
		t.Errorf("the daemon's server has no handler")
	}
}

// TestDaemonHeaderCap: a request to a running daemon whose headers pass
// the 64 KiB cap (and the 4 KiB Go's server allows over MaxHeaderBytes)
// gets 431 and never reaches the control plane: an authenticated PUT
// registers nothing. The same PUT with headers just under the cap
// registers the provider.
func TestDaemonHeaderCap(t *testing.T) {
	idp, _ := startIdP(t)
	d, token := startTestDaemon(t, idp)
	body := fmt.Sprintf(`{"jwksUrl": %q}`, idp.JWKSURL())
	put := func(provider string, pad int) (int, string) {
		t.Helper()
		var req bytes.Buffer
		fmt.Fprintf(&req, "PUT /tenants/acme/providers/%s HTTP/1.1\r\nHost: %s\r\n", provider, d.Addr())
		fmt.Fprintf(&req, "Authorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n", token, len(body))
		fmt.Fprintf(&req, "Connection: close\r\nX-Pad: %s\r\n\r\n%s", strings.Repeat("a", pad), body)
		c, err := net.Dial("tcp", d.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// The server answers 431 as soon as it has read past the cap, and
		// waits before closing: the rest of the request fits in the
		// socket buffers, so the write completes either way.
		if _, err := c.Write(req.Bytes()); err != nil {
			t.Fatalf("writing %d bytes of headers: %v", pad, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("reading the answer to %d bytes of headers: %v", pad, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return resp.StatusCode, string(b)
	}
	registered := func(provider string) bool {
		_, err := d.m.Status("acme", provider)
		return err == nil
	}

	if code, b := put("over", maxHeaderBytes+5<<10); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("PUT with %d bytes of headers: %d %s, want 431", maxHeaderBytes+5<<10, code, b)
	}
	if registered("over") {
		t.Errorf("a PUT refused for its headers registered its provider")
	}
	if code, b := put("under", maxHeaderBytes-1<<10); code != http.StatusAccepted {
		t.Errorf("PUT with %d bytes of headers: %d %s, want 202", maxHeaderBytes-1<<10, code, b)
	}
	if !registered("under") {
		t.Errorf("a PUT with headers under the cap registered nothing")
	}
}

// pipeListener is an in-memory net.Listener: dial returns the client end
// of a net.Pipe whose server end Accept returns. Inside a synctest bubble
// its connections' deadlines follow the bubble's clock.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

func (l *pipeListener) dial(t *testing.T) net.Conn {
	t.Helper()
	client, server := net.Pipe()
	select {
	case l.conns <- server:
	case <-l.done:
		t.Fatal("listener closed")
	}
	return client
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// peer reads everything the server sends on c until the server closes it.
type peer struct {
	mu     sync.Mutex
	got    bytes.Buffer
	closed atomic.Bool
}

func readAll(c net.Conn) *peer {
	p := &peer{}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			p.mu.Lock()
			p.got.Write(buf[:n])
			p.mu.Unlock()
			if err != nil {
				p.closed.Store(true)
				return
			}
		}
	}()
	return p
}

func (p *peer) text() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.got.String()
}

// serveInBubble serves h with newHTTPServer's server on a pipeListener,
// inside the calling synctest bubble, and returns the listener and a
// function that closes the server and checks that Serve returned.
func serveInBubble(t *testing.T, h http.Handler) (*pipeListener, func()) {
	t.Helper()
	srv := newHTTPServer(h, slog.New(slog.DiscardHandler))
	ln := newPipeListener()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	return ln, func() {
		t.Helper()
		_ = srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v, want http.ErrServerClosed", err)
		}
	}
}

// atBoundary advances the bubble's clock to just before d after start and
// checks that done is false, then to just after and checks that it is
// true.
func atBoundary(t *testing.T, start time.Time, d time.Duration, what string, done func() bool) {
	t.Helper()
	time.Sleep(time.Until(start.Add(d - time.Millisecond)))
	synctest.Wait()
	if done() {
		t.Fatalf("%s before %v", what, d)
	}
	time.Sleep(2 * time.Millisecond)
	synctest.Wait()
	if !done() {
		t.Fatalf("%s not done %v after the start", what, d)
	}
}

// TestServerTimeouts: each timeout of the daemon's HTTP server, in virtual
// time over an in-memory connection. A client that trickles a header line
// every second and never ends its headers (slowloris) is cut off at
// ReadHeaderTimeout, without an answer and without reaching the handler;
// a request body that stalls fails the handler's read at ReadTimeout; a
// client that stops reading the answer fails the handler's write at
// WriteTimeout; an idle kept-alive connection is closed at IdleTimeout.
func TestServerTimeouts(t *testing.T) {
	t.Run("slow headers", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var calls atomic.Int64
			ln, stop := serveInBubble(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { calls.Add(1) }))
			defer stop()
			start := time.Now()
			c := ln.dial(t)
			defer c.Close()
			p := readAll(c)
			quit := make(chan struct{})
			defer close(quit)
			go func() {
				if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: jwks-cache\r\n"); err != nil {
					return
				}
				for i := 0; ; i++ {
					select {
					case <-quit:
						return
					case <-time.After(time.Second):
					}
					if _, err := fmt.Fprintf(c, "X-Slow-%d: a\r\n", i); err != nil {
						return
					}
				}
			}()
			atBoundary(t, start, readHeaderTimeout, "connection closed", p.closed.Load)
			if s := p.text(); s != "" {
				t.Errorf("the server answered a request whose headers never ended: %q", s)
			}
			if n := calls.Load(); n != 0 {
				t.Errorf("the handler ran %d times", n)
			}
		})
	})

	t.Run("slow body", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var readErr atomic.Pointer[error]
			ln, stop := serveInBubble(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, err := io.ReadAll(r.Body)
				readErr.Store(&err)
			}))
			defer stop()
			start := time.Now()
			c := ln.dial(t)
			defer c.Close()
			_ = readAll(c) // drains the answer the server writes after the handler
			// Complete headers, then 2 of the 10 bytes of body, then nothing.
			if _, err := io.WriteString(c, "PUT /x HTTP/1.1\r\nHost: jwks-cache\r\nContent-Length: 10\r\n\r\nab"); err != nil {
				t.Fatal(err)
			}
			atBoundary(t, start, readTimeout, "body read ended", func() bool { return readErr.Load() != nil })
			if err := *readErr.Load(); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("body read: %v, want a deadline error", err)
			}
		})
	})

	t.Run("slow reader", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var writeErr atomic.Pointer[error]
			ln, stop := serveInBubble(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				chunk := bytes.Repeat([]byte("x"), 32<<10)
				var err error
				for i := 0; i < 64 && err == nil; i++ {
					_, err = w.Write(chunk)
				}
				writeErr.Store(&err)
			}))
			defer stop()
			start := time.Now()
			c := ln.dial(t)
			defer c.Close()
			// The client sends a request and never reads the answer.
			if _, err := io.WriteString(c, "GET /big HTTP/1.1\r\nHost: jwks-cache\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			atBoundary(t, start, writeTimeout, "answer write ended", func() bool { return writeErr.Load() != nil })
			if err := *writeErr.Load(); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("answer write: %v, want a deadline error", err)
			}
		})
	})

	t.Run("idle connection", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			ln, stop := serveInBubble(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.WriteString(w, "ok")
			}))
			defer stop()
			c := ln.dial(t)
			defer c.Close()
			if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: jwks-cache\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK || string(b) != "ok" || resp.Close {
				t.Fatalf("first answer: %d %q %v, close %v; want a kept-alive 200", resp.StatusCode, b, err, resp.Close)
			}
			idleSince := time.Now()
			var closed atomic.Bool
			go func() {
				_, _ = br.ReadByte() // nothing more comes: returns when the server closes
				closed.Store(true)
			}()
			atBoundary(t, idleSince, idleTimeout, "idle connection closed", closed.Load)
		})
	})
}

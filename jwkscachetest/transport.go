package jwkscachetest

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"
)

// ServeHTTP serves r from the IdP's configuration: faults first, then 405
// for methods other than GET and HEAD, redirects, 404 for paths without
// content, and finally the content with conditional-request handling.
// Start uses it; it can also be mounted in a server of your own, which
// must be HTTP/1.x for the Reset and Refuse faults to reach the
// connection (over HTTP/2 they abort the stream).
func (p *IdP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rep := p.respond(r)
	if rep.delay > 0 && wait(r.Context(), rep.delay) != nil {
		// The client went away. Returning would send an empty 200, which a
		// client that has not yet seen its own deadline would read as a
		// (malformed) document: abort the response instead.
		panic(http.ErrAbortHandler)
	}
	switch rep.fail {
	case failReset:
		abortConn(w, true)
		return
	case failRefuse:
		abortConn(w, false)
		return
	}
	h := w.Header()
	for name, v := range rep.header {
		h[name] = v
	}
	if cl := rep.contentLength(); cl != "" {
		h.Set("Content-Length", cl)
	}
	w.WriteHeader(rep.status)
	if fl, ok := w.(http.Flusher); ok && rep.length < 0 {
		fl.Flush() // commit to chunked encoding even for short bodies
	}
	if rep.body == nil || r.Method == http.MethodHead || rep.status == http.StatusNotModified {
		return
	}
	buf := make([]byte, chunkSize)
	for r.Context().Err() == nil {
		n, err := io.ReadFull(rep.body, buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// abortConn hijacks the connection behind w and closes it, with SO_LINGER 0
// (so that the peer sees a reset) if reset is set.
func abortConn(w http.ResponseWriter, reset bool) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler) // not hijackable (HTTP/2): abort the stream
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn() // close the socket without a TLS close_notify
	}
	if tcp, ok := conn.(*net.TCPConn); ok && reset {
		_ = tcp.SetLinger(0)
	}
	_ = conn.Close()
}

// wait blocks for d or until ctx is done, whichever comes first, returning
// ctx.Err() in the latter case. It uses a timer, so inside a synctest bubble
// it advances the fake clock instead of sleeping.
func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RoundTrip answers r in memory, in the calling goroutine, exactly as
// ServeHTTP would, without any network I/O; the URL host is ignored. The
// response has Request, Header (including Date and Content-Length), a
// readable Body and ContentLength set; streamed bodies are generated while
// being read. Faults behave like a transport would report them: a Delay
// waits on a timer and returns an error wrapping the context's error if r's
// context ends first, Reset returns a *net.OpError wrapping
// syscall.ECONNRESET and Refuse a *net.OpError wrapping syscall.ECONNREFUSED.
//
// As RoundTrip uses no sockets and waits only on timers and r's context,
// it works inside testing/synctest bubbles, where a real server cannot be
// used; see Client.
func (p *IdP) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		defer r.Body.Close()
	}
	ctx := r.Context()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("jwkscachetest: %w", err)
	}
	rep := p.respond(r)
	if rep.delay > 0 {
		if err := wait(ctx, rep.delay); err != nil {
			return nil, fmt.Errorf("jwkscachetest: timeout awaiting response headers: %w", err)
		}
	}
	switch rep.fail {
	case failReset:
		return nil, &net.OpError{Op: "read", Net: "tcp", Addr: hostAddrOf(r), Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	case failRefuse:
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: hostAddrOf(r), Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	}
	resp := &http.Response{
		Status:        fmt.Sprintf("%d %s", rep.status, http.StatusText(rep.status)),
		StatusCode:    rep.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        rep.header,
		Body:          http.NoBody,
		ContentLength: rep.length,
		Request:       r,
	}
	if resp.Header.Get("Date") == "" {
		resp.Header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	if cl := rep.contentLength(); cl != "" {
		resp.Header.Set("Content-Length", cl)
	}
	switch {
	case rep.status == http.StatusNotModified:
		resp.ContentLength = 0
	case rep.body == nil || r.Method == http.MethodHead:
	default:
		resp.Body = &ctxBody{ctx: ctx, r: rep.body}
	}
	return resp, nil
}

// ctxBody is a response body that fails once its request context is done,
// like a body read from a real connection.
type ctxBody struct {
	ctx context.Context
	r   io.Reader
}

func (b *ctxBody) Read(p []byte) (int, error) {
	if err := b.ctx.Err(); err != nil {
		return 0, err
	}
	return b.r.Read(p)
}

func (b *ctxBody) Close() error { return nil }

// hostAddr is the net.Addr reported in RoundTrip errors.
type hostAddr string

func (a hostAddr) Network() string { return "tcp" }
func (a hostAddr) String() string  { return string(a) }

func hostAddrOf(r *http.Request) net.Addr {
	if r.URL != nil && r.URL.Host != "" {
		return hostAddr(r.URL.Host)
	}
	return hostAddr(r.Host)
}

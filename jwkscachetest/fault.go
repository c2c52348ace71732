package jwkscachetest

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Fault describes a misbehaviour of the IdP for one path (see
// IdP.SetFault), applied before normal serving. It applies to the next
// Count requests, or to every request until IdP.ClearFault if Count is 0.
// Requests that meet a fault are counted like any other.
//
// For example, two 503s asking the client to come back in 30 seconds,
// then normal service:
//
//	idp.SetFault(jwkscachetest.JWKSPath, jwkscachetest.Fault{Status: 503, RetryAfter: "30", Count: 2})
//
// Delay combines with any other field. Of the remaining fields the first set
// one, in the order Refuse, Reset, Status, RedirectTo, HTML, Truncated,
// Oversize, GzipBomb, decides the response; if none is set (a pure Delay)
// the request is then served normally.
type Fault struct {
	Status     int           // respond with this status code (body "error"), e.g. 500, 503, 429, 404
	RetryAfter string        // Retry-After header value to send with Status
	Delay      time.Duration // wait this long before answering (respects the request context)
	HTML       bool          // 200 with text/html body "<html><body>Login</body></html>"
	Truncated  bool          // 200 with the JWKS body cut in half (Content-Length of the cut body)
	Oversize   int64         // 200 with a JSON-looking body of this many bytes, streamed in 32 KiB chunks
	GzipBomb   int64         // 200 with Content-Encoding: gzip, decompressing to this many bytes ('{' then spaces)
	RedirectTo string        // 302 with Location: RedirectTo
	// Reset resets the connection. In server mode the connection is hijacked
	// and closed with SO_LINGER 0 (an RST); in RoundTripper mode RoundTrip
	// returns a *net.OpError wrapping syscall.ECONNRESET. Note that
	// http.Transport silently retries an idempotent request once when a
	// reused keep-alive connection fails this way, so use a fresh connection
	// (or Count 0) when the client must observe the error.
	Reset bool
	// Refuse refuses the connection. In RoundTripper mode RoundTrip returns
	// a *net.OpError wrapping syscall.ECONNREFUSED; in server mode (where
	// the connection already exists) it is hijacked and closed at once.
	Refuse bool
	// HideLength omits Content-Length for Truncated, Oversize and GzipBomb
	// bodies: chunked transfer in server mode, ContentLength -1 in
	// RoundTripper mode.
	HideLength bool
	// Count is the number of requests the fault applies to; 0 means every
	// request until IdP.ClearFault.
	Count int
}

// HTMLBody is the body sent by the HTML fault.
const HTMLBody = "<html><body>Login</body></html>"

// chunkSize is the write size for streamed bodies.
const chunkSize = 32 << 10

const textPlain = "text/plain; charset=utf-8"

// failure is a transport-level failure instead of an HTTP response.
type failure int

const (
	failNone failure = iota
	failReset
	failRefuse
)

// reply is a response computed by the IdP, rendered either to a
// ResponseWriter (server mode) or to an http.Response (RoundTripper mode).
type reply struct {
	delay  time.Duration
	fail   failure
	status int
	header http.Header
	body   io.Reader // nil for no body
	length int64     // Content-Length, -1 if unknown
}

// newReply returns a reply with the given status and body, and the given
// Content-Type unless it is empty.
func newReply(status int, contentType string, body []byte) *reply {
	rep := &reply{status: status, header: make(http.Header)}
	if contentType != "" {
		rep.header.Set("Content-Type", contentType)
	}
	rep.body, rep.length = bytes.NewReader(body), int64(len(body))
	return rep
}

// reply returns the response dictated by f for a route whose normal body is
// body, or nil if the route must be served normally (after f.Delay).
func (f *Fault) reply(body []byte) *reply {
	var rep *reply
	switch {
	case f.Refuse:
		rep = &reply{fail: failRefuse}
	case f.Reset:
		rep = &reply{fail: failReset}
	case f.Status != 0:
		rep = newReply(f.Status, textPlain, []byte("error"))
		if f.RetryAfter != "" {
			rep.header.Set("Retry-After", f.RetryAfter)
		}
	case f.RedirectTo != "":
		rep = newReply(http.StatusFound, "", nil)
		rep.header.Set("Location", f.RedirectTo)
	case f.HTML:
		rep = newReply(http.StatusOK, "text/html; charset=utf-8", []byte(HTMLBody))
	case f.Truncated:
		rep = newReply(http.StatusOK, ContentTypeJWKS, body[:len(body)/2])
	case f.Oversize > 0:
		rep = newReply(http.StatusOK, ContentTypeJWKS, nil)
		rep.body, rep.length = oversizeBody(f.Oversize), f.Oversize
	case f.GzipBomb > 0:
		rep = newReply(http.StatusOK, ContentTypeJWKS, GzipBomb(f.GzipBomb))
		rep.header.Set("Content-Encoding", "gzip")
	default:
		return nil
	}
	rep.delay = f.Delay
	if f.HideLength && (f.Truncated || f.Oversize > 0 || f.GzipBomb > 0) {
		rep.length = -1
	}
	return rep
}

// oversizeBody returns a reader of exactly n bytes that look like the start
// of a JWKS with one huge key, without allocating them.
func oversizeBody(n int64) io.Reader {
	const prefix, suffix = `{"keys":[{"kty":"oct","kid":"oversize","k":"`, `"}]}`
	fill := max(n-int64(len(prefix)+len(suffix)), 0)
	return io.LimitReader(io.MultiReader(
		strings.NewReader(prefix),
		io.LimitReader(repeatReader('A'), fill),
		strings.NewReader(suffix),
	), n)
}

// repeatReader is an endless stream of one byte.
type repeatReader byte

func (r repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}

// bombs caches compressed gzip bombs by decompressed size.
var bombs = struct {
	mu sync.Mutex
	m  map[int64][]byte
}{m: make(map[int64][]byte)}

// GzipBomb returns gzip-compressed bytes, as the GzipBomb fault sends them,
// that decompress to exactly n bytes:
// '{' followed by n-1 spaces. Results are computed once per size and cached
// for the life of the process; callers must not modify them. The compressed
// size is roughly n/1000.
func GzipBomb(n int64) []byte {
	bombs.mu.Lock()
	defer bombs.mu.Unlock()
	if b, ok := bombs.m[n]; ok {
		return b
	}
	// Writes to a bytes.Buffer and a valid level cannot fail.
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	payload := io.MultiReader(strings.NewReader("{"), io.LimitReader(repeatReader(' '), n-1))
	_, _ = io.CopyBuffer(struct{ io.Writer }{zw}, io.LimitReader(payload, n), make([]byte, chunkSize))
	_ = zw.Close()
	b := buf.Bytes()
	bombs.m[n] = b
	return b
}

// contentLength returns the Content-Length header value for rep, or "".
func (rep *reply) contentLength() string {
	if rep.length < 0 || rep.status == http.StatusNotModified {
		return ""
	}
	return strconv.FormatInt(rep.length, 10)
}

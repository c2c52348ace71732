package jwkscachetest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
)

// server is the loopback server of a started IdP.
type server struct {
	http  *http.Server
	done  chan struct{} // closed when Serve has returned
	conns sync.WaitGroup
	once  sync.Once
}

// Start serves the IdP over HTTPS on a random port of a loopback address
// (127.0.0.1, or [::1] if IPv4 is unavailable), until Close. Its URL
// becomes "https://127.0.0.1:PORT", and the discovery document of New
// follows it.
//
// The server presents the certificate of Certificate, issued by the test
// CA of CertPool for the loopback addresses, localhost and idp.test, so a
// client must trust CertPool. It speaks HTTP/1.1 only, so that the Reset
// and Refuse faults can act on connections.
//
// Start returns an error if the IdP was already started or closed, or if
// no loopback address can be listened on.
func (p *IdP) Start() error { return p.start(true) }

// StartHTTP is like Start but serves plain HTTP: the URL is
// "http://127.0.0.1:PORT". Use it to test how clients treat http URLs;
// jwkscache refuses them unless both Options.AllowHTTP and
// Registration.AllowHTTP are set.
func (p *IdP) StartHTTP() error { return p.start(false) }

func (p *IdP) start(useTLS bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return errors.New("jwkscachetest: Start after Close")
	case p.srv != nil:
		return errors.New("jwkscachetest: IdP already started")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		var err6 error
		if ln, err6 = net.Listen("tcp", "[::1]:0"); err6 != nil {
			return fmt.Errorf("jwkscachetest: listening on loopback: %w", errors.Join(err, err6))
		}
	}
	scheme := "http"
	if useTLS {
		scheme = "https"
		ln = tls.NewListener(ln, &tls.Config{
			Certificates: []tls.Certificate{p.Certificate()},
			NextProtos:   []string{"http/1.1"},
		})
	}
	s := &server{done: make(chan struct{})}
	s.http = &http.Server{
		Handler: p,
		// Clients that do not trust the CA, and the faults that cut
		// connections, make the server log; tests have no use for it.
		ErrorLog: log.New(io.Discard, "", 0),
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				s.conns.Add(1)
			case http.StateHijacked, http.StateClosed:
				s.conns.Done()
			}
		},
	}
	go func() {
		defer close(s.done)
		_ = s.http.Serve(ln) // returns http.ErrServerClosed on Close
	}()
	p.srv = s
	p.setBase(scheme + "://" + ln.Addr().String())
	return nil
}

// Close stops the server started by Start or StartHTTP: it closes the
// listener and every connection, aborting the requests in progress (a
// Delay fault included), and returns once all of them have ended. The
// IdP keeps its content and URL and still works in memory (Client), but
// cannot be started again. Close may be called more than once, and on an
// IdP that was never started.
func (p *IdP) Close() {
	p.mu.Lock()
	p.closed = true
	s := p.srv
	p.mu.Unlock()
	if s == nil {
		return
	}
	s.once.Do(func() {
		_ = s.http.Close()
		<-s.done
		s.conns.Wait()
	})
}

// Started reports whether Start or StartHTTP has succeeded, whether or not
// Close has been called since.
func (p *IdP) Started() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.srv != nil
}

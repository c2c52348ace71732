package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/store/boltstore"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
)

// HTTP server limits. A JWKS request waits at most 2 s for the IdP (the
// control plane's bound), a registration body is at most 64 KiB.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10

	restoreTimeout    = 10 * time.Second // one Restore call
	restoreBackoffMax = 30 * time.Second
)

// daemon is a running jwks-cache: the store, the Manager, the control
// plane and the HTTP server.
type daemon struct {
	cfg        *config
	log        *slog.Logger
	store      jwkscache.Store
	closeStore func() error
	m          *jwkscache.Manager
	srv        *http.Server
	ln         net.Listener
	served     chan error // Serve's result

	ctx    context.Context // cancelled by shutdown: ends the restore loop
	cancel context.CancelFunc
	bg     sync.WaitGroup

	restored atomic.Bool // Restore succeeded (or there is no store)
	stopping atomic.Bool
}

// daemonHooks are what the demo and tests add to a daemon.
type daemonHooks struct {
	OnEvent func(jwkscache.Event)
}

// startDaemon opens the store, creates the Manager, restores the
// registrations saved at run time, applies the configured providers
// (the configuration wins over a stored registration of the same pair),
// and serves the control plane on cfg.Listen. On error, everything it
// opened is closed again.
func startDaemon(ctx context.Context, cfg *config, log *slog.Logger, hooks daemonHooks) (_ *daemon, err error) {
	d := &daemon{cfg: cfg, log: log, served: make(chan error, 1)}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			d.cancel()
			d.bg.Wait()
			if d.m != nil {
				_ = d.m.Close()
			}
			if d.closeStore != nil {
				_ = d.closeStore()
			}
		}
	}()

	roots, err := rootCAs(cfg.Security)
	if err != nil {
		return nil, err
	}
	d.store, d.closeStore, err = openStore(cfg.Store)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", cfg.Store.describe(), err)
	}

	// Metrics: the cache's collector, and the Go runtime's and the
	// process's, on a registry of our own (never the global one).
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts := jwkscache.Options{
		AllowHTTP:        cfg.Security.AllowHTTP,
		AllowedDomains:   cfg.Security.AllowedDomains,
		AllowedAddresses: cfg.Security.AllowedAddresses,
		RootCAs:          roots,
		Logger:           log,
		OnEvent:          hooks.OnEvent,
		Registerer:       reg,
		Store:            d.store,
		StoreKeys:        cfg.Store.Keys,
	}
	if d.m, err = jwkscache.New(opts); err != nil {
		return nil, err
	}

	if d.store == nil {
		d.restored.Store(true)
	} else if !d.restore(ctx) {
		// The store is down: serve the configured providers now, and
		// bring back the runtime registrations once it answers. Until
		// then the daemon is not ready.
		d.bg.Add(1)
		go d.restoreLoop()
	}

	// Configured providers are not saved in the store: the file is their
	// source, so one removed from it does not come back from the store.
	for _, p := range cfg.Providers {
		if err := d.m.RegisterUnsaved(ctx, p.Reg); err != nil {
			return nil, fmt.Errorf("%s: %s (provider %s): %w", p.Pos, p.Path, p.name(), err)
		}
	}
	if len(cfg.Providers) > 0 {
		log.Info("configured providers registered", slog.Int("count", len(cfg.Providers)))
	}

	handler, err := newControlPlane(d.m, cpOptions{
		AdminTokens:    cfg.AdminTokens,
		TenantTokens:   cfg.TenantTokens,
		ProtectMetrics: cfg.ProtectMetrics,
		Metrics:        promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
		Ready:          d.ready,
		Logger:         log,
	})
	if err != nil {
		return nil, err
	}

	if d.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, err
	}
	d.srv = newHTTPServer(handler, log)
	go func() { d.served <- d.srv.Serve(d.ln) }()
	log.Info("listening", slog.String("addr", d.ln.Addr().String()), slog.String("store", cfg.Store.describe()))
	return d, nil
}

// newHTTPServer returns the daemon's HTTP server for handler, with the
// limits above.
func newHTTPServer(handler http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// Addr is the address the daemon listens on.
func (d *daemon) Addr() string { return d.ln.Addr().String() }

// restore brings back the registrations made at run time. It reports
// false when the store could not be read at all; refused records are
// logged and skipped.
func (d *daemon) restore(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	n, err := d.m.Restore(ctx)
	if se, whole := err.(*jwkscache.StoreError); whole {
		// LoadRegistrations itself failed; refused records come joined.
		d.log.Error("cannot read the registrations from the store; retrying", slog.String("error", se.Error()))
		return false
	}
	if err != nil {
		for _, e := range unjoin(err) {
			d.log.Warn("stored registration refused", slog.String("error", e.Error()))
		}
	}
	d.log.Info("registrations restored from the store", slog.Int("count", n))
	d.restored.Store(true)
	return true
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// restoreLoop retries restore with backoff until it succeeds or the
// daemon stops.
func (d *daemon) restoreLoop() {
	defer d.bg.Done()
	wait := time.Second
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		if d.restore(d.ctx) {
			return
		}
		wait = min(2*wait, restoreBackoffMax)
		t.Reset(wait)
	}
}

// ready is the control plane's readiness: not while restoring or shutting
// down, and not while a configured provider has no usable key (none
// loaded yet, every key denied, or keys past their stale window). A
// provider with keys keeps them through an IdP outage (stale-while-error),
// so an outage alone does not take the daemon out of a load balancer;
// providers registered at run time do not count.
func (d *daemon) ready() error {
	switch {
	case d.stopping.Load():
		return errors.New("shutting down")
	case !d.restored.Load():
		return errors.New("restoring the registrations from the store")
	}
	// Ready when every configured provider has usable keys, from the
	// network or the store: a service behind this daemon can verify every
	// token it is configured for.
	for _, p := range d.cfg.Providers {
		st, err := d.m.Status(p.Reg.TenantID, p.Reg.ProviderID)
		if err != nil {
			continue // removed at run time
		}
		if !hasUsableKeys(st, time.Now()) {
			if st.ErrorCount == 0 && len(st.Keys) == 0 {
				return fmt.Errorf("provider %s: first load in progress", p.name())
			}
			return fmt.Errorf("provider %s: no usable keys (%s)", p.name(), st.LastErrorClass)
		}
	}
	return nil
}

// hasUsableKeys reports whether st's provider serves a key: one not
// denied, from keys within their stale window.
func hasUsableKeys(st jwkscache.ProviderStatus, now time.Time) bool {
	if !st.StaleUntil.IsZero() && !now.Before(st.StaleUntil) {
		return false
	}
	for _, k := range st.Keys {
		if !slices.Contains(st.DeniedKIDs, k.KID) {
			return true
		}
	}
	return false
}

// shutdown stops accepting connections, lets the requests in flight
// finish (within ctx), then closes the Manager (which flushes pending
// store writes) and the store.
func (d *daemon) shutdown(ctx context.Context) error {
	d.stopping.Store(true)
	var errs []error
	if err := d.srv.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("http server: %w (closing the remaining connections)", err))
		_ = d.srv.Close()
	}
	if err := <-d.served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		errs = append(errs, fmt.Errorf("http server: %w", err))
	}
	d.cancel()
	d.bg.Wait()
	if err := d.m.Close(); err != nil {
		errs = append(errs, fmt.Errorf("cache: %w", err))
	}
	if d.closeStore != nil {
		if err := d.closeStore(); err != nil {
			errs = append(errs, fmt.Errorf("store: %w", err))
		}
	}
	return errors.Join(errs...)
}

// rootCAs returns the trust roots of fetches: nil (the system roots), or
// the system roots plus the certificates of rootCAFile.
func rootCAs(s securityConfig) (*x509.CertPool, error) {
	if s.RootCAs != nil {
		return s.RootCAs, nil
	}
	if s.RootCAFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(s.RootCAFile)
	if err != nil {
		return nil, fmt.Errorf("security.rootCAFile: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("security.rootCAFile: %s holds no PEM certificate", s.RootCAFile)
	}
	return pool, nil
}

// openStore opens the configured store; nil for memory.
func openStore(sc storeConfig) (jwkscache.Store, func() error, error) {
	switch sc.Kind {
	case storeMemory:
		return nil, nil, nil
	case storeBolt:
		s, err := boltstore.Open(sc.Path)
		if err != nil {
			return nil, nil, err
		}
		return s, s.Close, nil
	case storeRedis:
		o, err := redis.ParseURL(sc.URL)
		if err != nil {
			// Never the parser's text: it quotes the URL, password included.
			return nil, nil, fmt.Errorf("%s: not a valid Redis URL (percent-encode reserved characters in the password)", redactURL(sc.URL))
		}
		// The Manager bounds each store call by its context.
		o.ContextTimeoutEnabled = true
		client := redis.NewClient(o)
		s, closeStore, err := newRedisStore(client, sc.Prefix)
		if err != nil {
			_ = client.Close()
			return nil, nil, err
		}
		return s, func() error { return errors.Join(closeStore(), client.Close()) }, nil
	}
	return nil, nil, fmt.Errorf("unknown store kind %q", sc.Kind)
}

// newToken returns 32 random bytes, base64url.
func newToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

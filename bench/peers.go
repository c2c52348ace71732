// Package bench compares jwkscache with other JWKS caches (issue 11): the
// same workloads run against each peer through a small adapter that uses
// the peer's defaults, against loopback identity providers from
// jwkscachetest. It is its own module so that the library never depends on
// its peers.
package bench

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/golang-jwt/jwt/v5"
	"github.com/lestrrat-go/httprc/v3"
	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/jwkscache/jwkscache"
)

// Env is what an adapter gets to reach one IdP: its key set URL, an HTTP
// client trusting the IdP's test CA, and, for jwkscache, the same trust
// as plain values (its dial guard needs loopback allowed).
type Env struct {
	JWKSURL string
	Client  *http.Client
	RootCAs *x509.CertPool
	Allowed []netip.Prefix
}

// Cache is one peer behind the common interface.
type Cache interface {
	Name() string
	// Keyfunc returns the peer's key lookup for golang-jwt, or nil if the
	// peer has none (go-oidc only verifies).
	Keyfunc() jwt.Keyfunc
	// Get asks the peer for the key of a token: the Keyfunc on the parsed
	// token where there is one, else the peer's signature verification.
	Get(ctx context.Context, raw string, parsed *jwt.Token) error
	// Verify verifies the token's signature through the peer: jwt.Parse
	// with the Keyfunc (signature and registered claims), or go-oidc's
	// RemoteKeySet.VerifySignature (signature only).
	Verify(ctx context.Context, raw string) error
	// Refresh makes the peer refetch its key set by its own means (see
	// each adapter), or returns an error saying why it cannot.
	Refresh(ctx context.Context) error
	Close()
}

// Peer names a library and builds its adapter.
type Peer struct {
	Name string
	New  func(ctx context.Context, env Env) (Cache, error)
	// NewMany builds one cache for many providers (one per URL of
	// env.URLs) the way the library is meant to hold them: one
	// jwkscache.Manager or jwk.Cache with many registrations, or one
	// keyfunc.Keyfunc or oidc.RemoteKeySet per provider (keyfunc merges
	// the keys of all the URLs of one Keyfunc, so tenants need their own).
	NewMany func(ctx context.Context, env Env, urls []string) (Many, error)
}

// Many is a peer holding many providers.
type Many interface {
	// Verify verifies raw through provider i.
	Verify(ctx context.Context, i int, raw string) error
	Close()
}

// Peers are the libraries compared, jwkscache first.
var Peers = []Peer{
	{"jwkscache", newJWKSCache, newJWKSCacheMany},
	{"keyfunc/v3", newKeyfunc, manyOf(newKeyfunc)},
	{"jwx/v3 jwk.Cache", newJWX, newJWXMany},
	{"go-oidc/v3", newOIDC, manyOf(newOIDC)},
}

// perProvider is one Cache per provider.
type perProvider []Cache

func manyOf(newCache func(ctx context.Context, env Env) (Cache, error)) func(ctx context.Context, env Env, urls []string) (Many, error) {
	return func(ctx context.Context, env Env, urls []string) (Many, error) {
		var m perProvider
		for _, u := range urls {
			e := env
			e.JWKSURL = u
			c, err := newCache(ctx, e)
			if err != nil {
				m.Close()
				return nil, err
			}
			m = append(m, c)
		}
		return m, nil
	}
}

func (m perProvider) Verify(ctx context.Context, i int, raw string) error {
	return m[i].Verify(ctx, raw)
}
func (m perProvider) Close() {
	for _, c := range m {
		c.Close()
	}
}

type jwkscacheMany struct{ m *jwkscache.Manager }

func newJWKSCacheMany(ctx context.Context, env Env, urls []string) (Many, error) {
	m, err := jwkscache.New(jwkscache.Options{RootCAs: env.RootCAs, AllowedAddresses: env.Allowed})
	if err != nil {
		return nil, err
	}
	for i, u := range urls {
		if err := m.Register(ctx, jwkscache.Registration{TenantID: tenant, ProviderID: fmt.Sprint("p", i), JWKSURL: u}); err != nil {
			m.Close()
			return nil, err
		}
	}
	return jwkscacheMany{m}, nil
}

func (j jwkscacheMany) Verify(ctx context.Context, i int, raw string) error {
	return parseWith(raw, j.m.KeyfuncContext(ctx, tenant, fmt.Sprint("p", i)))
}
func (j jwkscacheMany) Close() { j.m.Close() }

type jwxMany struct {
	c      *jwxCache
	urls   []string
	caches []*jwxCache
}

func newJWXMany(ctx context.Context, env Env, urls []string) (Many, error) {
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c, err := jwk.NewCache(cctx, httprc.NewClient())
	if err != nil {
		cancel()
		return nil, err
	}
	m := &jwxMany{c: &jwxCache{c: c, cancel: cancel}, urls: urls}
	for _, u := range urls {
		if err := c.Register(ctx, u, jwk.WithHTTPClient(env.Client)); err != nil {
			m.Close()
			return nil, err
		}
		m.caches = append(m.caches, &jwxCache{c: c, url: u, cancel: func() {}})
	}
	return m, nil
}

func (m *jwxMany) Verify(ctx context.Context, i int, raw string) error {
	return m.caches[i].Verify(ctx, raw)
}
func (m *jwxMany) Close() { m.c.Close() }

// ValidMethods are the algorithms the golang-jwt based adapters accept.
var ValidMethods = []string{"RS256", "ES256"}

func parseWith(raw string, kf jwt.Keyfunc) error {
	_, err := jwt.Parse(raw, kf, jwt.WithValidMethods(ValidMethods))
	return err
}

// ---- jwkscache: Manager with default options and registration, plus the
// trust and dial allowance the loopback IdP needs.

type jwkscacheCache struct{ m *jwkscache.Manager }

const tenant, provider = "bench", "main"

func newJWKSCache(ctx context.Context, env Env) (Cache, error) {
	m, err := jwkscache.New(jwkscache.Options{RootCAs: env.RootCAs, AllowedAddresses: env.Allowed})
	if err != nil {
		return nil, err
	}
	if err := m.Register(ctx, jwkscache.Registration{TenantID: tenant, ProviderID: provider, JWKSURL: env.JWKSURL}); err != nil {
		m.Close()
		return nil, err
	}
	return &jwkscacheCache{m}, nil
}

func (c *jwkscacheCache) Name() string         { return "jwkscache" }
func (c *jwkscacheCache) Keyfunc() jwt.Keyfunc { return c.m.Keyfunc(tenant, provider) }
func (c *jwkscacheCache) Get(ctx context.Context, _ string, t *jwt.Token) error {
	_, err := c.m.KeyfuncContext(ctx, tenant, provider)(t)
	return err
}
func (c *jwkscacheCache) Verify(ctx context.Context, raw string) error {
	return parseWith(raw, c.m.KeyfuncContext(ctx, tenant, provider))
}

// Refresh is Manager.Refresh.
func (c *jwkscacheCache) Refresh(ctx context.Context) error {
	return c.m.Refresh(ctx, tenant, provider)
}
func (c *jwkscacheCache) Close() { c.m.Close() }

// ---- keyfunc v3: NewDefaultOverrideCtx with only Override.Client set
// (NewDefaultCtx always uses http.DefaultClient); every other value is
// the library's default (hourly refresh, unknown-kid refresh 1 per 5 min,
// first request error swallowed).

type keyfuncCache struct {
	kf     keyfunc.Keyfunc
	cancel context.CancelFunc
}

func newKeyfunc(ctx context.Context, env Env) (Cache, error) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{env.JWKSURL}, keyfunc.Override{Client: env.Client})
	if err != nil {
		cancel()
		return nil, err
	}
	return &keyfuncCache{kf, cancel}, nil
}

func (c *keyfuncCache) Name() string         { return "keyfunc/v3" }
func (c *keyfuncCache) Keyfunc() jwt.Keyfunc { return c.kf.Keyfunc }
func (c *keyfuncCache) Get(ctx context.Context, _ string, t *jwt.Token) error {
	_, err := c.kf.KeyfuncCtx(ctx)(t)
	return err
}
func (c *keyfuncCache) Verify(ctx context.Context, raw string) error {
	return parseWith(raw, c.kf.KeyfuncCtx(ctx))
}

// Refresh: keyfunc has no public refresh; an unknown kid refreshes (rate
// limited to 1 per 5 minutes by default).
func (c *keyfuncCache) Refresh(ctx context.Context) error {
	t := &jwt.Token{Header: map[string]any{"alg": "RS256", "kid": "bench-refresh-unknown"}}
	_, err := c.kf.KeyfuncCtx(ctx)(t)
	if err == nil {
		return errors.New("unknown kid found")
	}
	return nil
}
func (c *keyfuncCache) Close() { c.cancel() }

// ---- jwx v3: jwk.NewCache(ctx, httprc.NewClient()) and Register with only
// jwk.WithHTTPClient; the key is Cache.Lookup + Set.LookupKeyID +
// jwk.Export (what a golang-jwt Keyfunc over jwx has to do).

type jwxCache struct {
	c      *jwk.Cache
	url    string
	cancel context.CancelFunc
}

func newJWX(ctx context.Context, env Env) (Cache, error) {
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c, err := jwk.NewCache(cctx, httprc.NewClient())
	if err != nil {
		cancel()
		return nil, err
	}
	if err := c.Register(ctx, env.JWKSURL, jwk.WithHTTPClient(env.Client)); err != nil {
		cancel()
		return nil, err
	}
	return &jwxCache{c, env.JWKSURL, cancel}, nil
}

func (c *jwxCache) Name() string { return "jwx/v3 jwk.Cache" }
func (c *jwxCache) keyfunc(ctx context.Context) jwt.Keyfunc {
	return func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		set, err := c.c.Lookup(ctx, c.url)
		if err != nil {
			return nil, err
		}
		k, ok := set.LookupKeyID(kid)
		if !ok {
			return nil, fmt.Errorf("jwx: kid %q not found", kid)
		}
		var raw any
		if err := jwk.Export(k, &raw); err != nil {
			return nil, err
		}
		return raw, nil
	}
}
func (c *jwxCache) Keyfunc() jwt.Keyfunc { return c.keyfunc(context.Background()) }
func (c *jwxCache) Get(ctx context.Context, _ string, t *jwt.Token) error {
	_, err := c.keyfunc(ctx)(t)
	return err
}
func (c *jwxCache) Verify(ctx context.Context, raw string) error {
	return parseWith(raw, c.keyfunc(ctx))
}

// Refresh is jwk.Cache.Refresh.
func (c *jwxCache) Refresh(ctx context.Context) error {
	_, err := c.c.Refresh(ctx, c.url)
	return err
}
func (c *jwxCache) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = c.c.Shutdown(ctx)
	c.cancel()
}

// ---- go-oidc v3: oidc.NewRemoteKeySet with the client given through
// oidc.ClientContext; it has no key lookup, only VerifySignature.

type oidcCache struct{ ks *oidc.RemoteKeySet }

func newOIDC(ctx context.Context, env Env) (Cache, error) {
	return &oidcCache{oidc.NewRemoteKeySet(oidc.ClientContext(context.WithoutCancel(ctx), env.Client), env.JWKSURL)}, nil
}

func (c *oidcCache) Name() string         { return "go-oidc/v3" }
func (c *oidcCache) Keyfunc() jwt.Keyfunc { return nil }
func (c *oidcCache) Get(ctx context.Context, raw string, _ *jwt.Token) error {
	_, err := c.ks.VerifySignature(ctx, raw)
	return err
}
func (c *oidcCache) Verify(ctx context.Context, raw string) error {
	_, err := c.ks.VerifySignature(ctx, raw)
	return err
}

// Refresh: go-oidc refetches when a token's kid is not cached (no rate
// limit); a token that fails to verify triggers it.
func (c *oidcCache) Refresh(ctx context.Context) error {
	_, err := c.ks.VerifySignature(ctx, unknownKIDToken)
	if err == nil {
		return errors.New("unknown kid verified")
	}
	return nil
}
func (c *oidcCache) Close() {}

// unknownKIDToken is a syntactically valid RS256 JWS whose kid no IdP
// publishes (its signature is garbage).
const unknownKIDToken = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJlbmNoLXJlZnJlc2gtdW5rbm93biJ9.e30.c2ln"

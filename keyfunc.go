package jwkscache

import (
	"context"
	"fmt"
	"runtime"

	"github.com/golang-jwt/jwt/v5"
)

// Keyfunc returns a jwt.Keyfunc (golang-jwt v5) that finds the key of a
// token's kid and alg in the provider's key set:
//
//	tok, err := jwt.Parse(raw, m.Keyfunc("acme", "auth0"), jwt.WithValidMethods([]string{"RS256"}))
//
// Keys are found by kid and told apart by the token's algorithm family, so
// a kid shared by an RSA and an EC key is not ambiguous; a key whose JWK
// names an alg verifies only that alg. A token without a kid is accepted
// only when exactly one key of the set may verify its alg (OpenID Connect
// Core 1.0, section 10.1). The jku, x5u, jwk and x5c headers are never
// followed or trusted: keys come only from the registered URL.
//
// When the registration has an Issuer, tokens whose iss claim differs are
// refused before any key lookup. An unknown kid triggers the same
// rate-limited refresh as Key, bounded by the registration's retry Deadline.
//
// Keyfunc still returns a usable function when the provider is registered
// later; each call resolves the provider anew.
func (m *Manager) Keyfunc(tenant, providerID string) jwt.Keyfunc {
	// The Manager's own context: waits are bounded by the Deadline alone.
	return m.KeyfuncContext(m.ctx, tenant, providerID)
}

// KeyfuncContext is Keyfunc for one request: every wait for keys (a cold
// load, an unknown kid's refresh) also ends when ctx ends, and the error
// then has ctx's error in its chain. Use it where a request has a budget:
//
//	kf := m.KeyfuncContext(r.Context(), "acme", "auth0")
//
// The fetch a caller waits on is shared and runs on the Manager's context:
// a caller that gives up does not cancel it for the others.
func (m *Manager) KeyfuncContext(ctx context.Context, tenant, providerID string) jwt.Keyfunc {
	return func(t *jwt.Token) (any, error) {
		p := m.providers.get(tenant, providerID)
		if p == nil {
			return nil, m.notRegistered(tenant, providerID)
		}
		return m.tokenKey(ctx, p, t, tokenIssuer(t))
	}
}

// TenantKeyfunc returns a jwt.Keyfunc that routes each token to the
// tenant's provider whose Registration.Issuer equals the token's iss claim
// exactly, then behaves as that provider's Keyfunc. Finding the provider is
// one map lookup, whatever the tenant's number of providers. A token
// without iss, or whose iss no provider of the tenant has, is refused
// without any fetch, with an error matching jwt.ErrTokenInvalidIssuer and
// ErrNotRegistered. Providers registered without an Issuer are never
// chosen. Register refuses two providers of one tenant with the same
// Issuer, so the route is never ambiguous.
func (m *Manager) TenantKeyfunc(tenant string) jwt.Keyfunc {
	return m.tenantKeyfunc(m.ctx, tenant)
}

// TenantKeyfuncContext is TenantKeyfunc whose waits also end with ctx, as
// in KeyfuncContext.
func (m *Manager) TenantKeyfuncContext(ctx context.Context, tenant string) jwt.Keyfunc {
	return m.tenantKeyfunc(ctx, tenant)
}

// tenantKeyfunc is TenantKeyfuncContext; with the Manager's own context,
// waits are bounded by each registration's Deadline alone.
func (m *Manager) tenantKeyfunc(ctx context.Context, tenant string) jwt.Keyfunc {
	return func(t *jwt.Token) (any, error) {
		iss := tokenIssuer(t)
		var p *provider
		if iss != "" {
			p = m.providers.byIssuer(tenant, iss)
		}
		if p == nil {
			if m.closed.Load() {
				return nil, ErrClosed
			}
			return nil, &ProviderError{TenantID: tenant, Op: "keyfunc", Err: &unknownIssuerError{iss: iss}}
		}
		return m.tokenKey(ctx, p, t, iss)
	}
}

// tokenIssuer returns t's iss claim, "" when it has none or it is not a
// string.
func tokenIssuer(t *jwt.Token) string {
	if t.Claims == nil {
		return ""
	}
	iss, err := t.Claims.GetIssuer()
	if err != nil {
		return ""
	}
	return iss
}

// unknownIssuerError is a token whose issuer no provider of the tenant has.
type unknownIssuerError struct{ iss string }

func (e *unknownIssuerError) Error() string {
	if e.iss == "" {
		return "token has no iss claim to route it by"
	}
	return "no provider has the token's issuer " + showID(e.iss)
}

func (e *unknownIssuerError) Unwrap() []error {
	return []error{jwt.ErrTokenInvalidIssuer, ErrNotRegistered}
}

// tokenKey finds the key for token t in p's keys. Waits are bounded by the
// registration's retry Deadline and, when it is not nil, by ctx.
func (m *Manager) tokenKey(ctx context.Context, p *provider, t *jwt.Token, iss string) (any, error) {
	kid := ""
	if v, ok := t.Header["kid"]; ok {
		s, ok := v.(string)
		if !ok {
			return nil, p.opError("keyfunc", fmt.Errorf("%w: token kid header is not a string", ErrKeyNotFound))
		}
		kid = s
	}
	alg, _ := t.Header["alg"].(string)
	if algBit(alg) == 0 {
		// HMAC, "none" or unknown: no key of ours may verify it, and an
		// unknown kid with it must not spend the refresh budget.
		return nil, p.opError("keyfunc", fmt.Errorf("%w: unsupported algorithm %s", ErrKeyNotFound, showID(alg)))
	}
	// The issuer binding travels with the keys: while a provider switches
	// to a new source, its old keys still answer only for the old issuer,
	// and the new keys only for the new one. It is checked against the
	// snapshot the key is taken from; a token refused by the binding of
	// the keys served now is refused before any lookup, so it cannot spend
	// the refresh budget.
	s := p.snap.Load()
	var issuer string
	if s != nil {
		issuer = s.issuer
	} else {
		issuer = p.registration().Issuer
	}
	if err := checkIssuer(p, iss, issuer); err != nil {
		return nil, err
	}
	if s != nil {
		// A key found by a kid has that kid, so one denial check covers
		// both the token's kid and, for a kid-less token, the key's.
		if k, err := s.keys.lookupAlg(kid, alg); err == nil && !p.isDenied(k.jwk.KeyID) {
			m.hits.inc(p.slot)
			runtime.KeepAlive(p)
			return k.jwk.Key, nil
		}
	}
	if ctx == nil {
		ctx = m.ctx
	}
	ctx, cancel := context.WithTimeout(ctx, p.registration().Retry.Deadline)
	defer cancel()
	k, found, err := m.keySlow(ctx, p, kid, "keyfunc", func(ks *keySet) (*typedKey, error) { return ks.lookupAlg(kid, alg) })
	if err != nil {
		return nil, err
	}
	if found != s {
		if err := checkIssuer(p, iss, found.issuer); err != nil {
			return nil, err
		}
	}
	return k.jwk.Key, nil
}

// checkIssuer refuses a token whose iss claim is iss unless issuer is ""
// or equals it.
func checkIssuer(p *provider, iss, issuer string) error {
	if issuer == "" || iss == issuer {
		return nil
	}
	return p.opError("keyfunc", fmt.Errorf("%w: token issuer does not match the registered issuer %s",
		jwt.ErrTokenInvalidIssuer, showID(issuer)))
}

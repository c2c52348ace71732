// Package jwkshttp is net/http middleware that verifies bearer tokens (RFC
// 6750) with the keys of a jwkscache.Manager.
//
//	mw := jwkshttp.New(m, jwkshttp.Options{
//		Tenant:   func(r *http.Request) (string, error) { return r.PathValue("tenant"), nil },
//		Audience: "https://api.example.com",
//	})
//	mux.Handle("GET /t/{tenant}/orders", mw.Wrap(orders))
//
// A request without a valid token never reaches the wrapped handler. The
// answer follows the precedence of jwkscache.KeysUnavailable:
//
//	no Authorization header, or another
//	  scheme (Basic, ...)                 401, WWW-Authenticate: Bearer realm="..."
//	malformed Bearer header               400, error="invalid_request"
//	token at fault (signature, kid, alg,
//	  issuer, audience, expiry, tenant)   401, error="invalid_token"
//	keys unavailable (IdP down and no
//	  usable keys, Manager closed, ...)   503, Retry-After
//
// The verified claims are in the request's context (Claims, ClaimsAs). The
// token is never logged, echoed or put in an error description.
package jwkshttp

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache"
)

// DefaultValidMethods are the JWS algorithms accepted when
// Options.ValidMethods is empty: every asymmetric algorithm the cache
// verifies. HMAC and "none" are never accepted.
var DefaultValidMethods = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// DefaultRetryAfter is the Retry-After of a 503 when Options.RetryAfter is
// zero.
const DefaultRetryAfter = 5 * time.Second

// Options configures a Middleware. Tenant is required.
type Options struct {
	// Tenant returns the tenant a request belongs to (from its host, path,
	// or a header your gateway sets). An error answers 401: a request that
	// names no tenant cannot carry a valid token.
	Tenant func(*http.Request) (string, error)

	// Provider, when set, returns the provider whose keys verify the
	// request's token. When nil (the default), the token's iss claim
	// selects the tenant's provider with that Issuer
	// (Manager.TenantKeyfuncContext).
	Provider func(*http.Request) string

	// ValidMethods lists the accepted JWS algorithms. Default:
	// DefaultValidMethods.
	ValidMethods []string

	// Audience, when set, must be one of the token's aud values.
	Audience string

	// Leeway allows this much clock skew on exp, nbf and iat. Default: 0.
	Leeway time.Duration

	// NewClaims returns the claims value to decode a token into, for
	// custom claims types. Default: jwt.MapClaims.
	NewClaims func() jwt.Claims

	// Realm is the realm of WWW-Authenticate. Default: none.
	Realm string

	// RetryAfter is sent with 503 answers. Default: DefaultRetryAfter.
	RetryAfter time.Duration

	// OnError, when set, is called with every refused request and the
	// status answered (for logs and metrics). err never contains the
	// token. It runs on the request's goroutine before the answer is
	// written.
	OnError func(r *http.Request, status int, err error)
}

// Middleware verifies bearer tokens. It is safe for concurrent use.
type Middleware struct {
	m      *jwkscache.Manager
	opts   Options
	parser *jwt.Parser
	auth   string // WWW-Authenticate of a 401 without error
}

// New returns a Middleware verifying tokens with m. It panics when
// opts.Tenant is nil, a programming error.
func New(m *jwkscache.Manager, opts Options) *Middleware {
	if opts.Tenant == nil {
		panic("jwkshttp: Options.Tenant is required")
	}
	if len(opts.ValidMethods) == 0 {
		opts.ValidMethods = DefaultValidMethods
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = DefaultRetryAfter
	}
	popts := []jwt.ParserOption{jwt.WithValidMethods(opts.ValidMethods), jwt.WithExpirationRequired()}
	if opts.Audience != "" {
		popts = append(popts, jwt.WithAudience(opts.Audience))
	}
	if opts.Leeway > 0 {
		popts = append(popts, jwt.WithLeeway(opts.Leeway))
	}
	auth := "Bearer"
	if opts.Realm != "" {
		auth += ` realm=` + strconv.Quote(opts.Realm)
	}
	return &Middleware{m: m, opts: opts, parser: jwt.NewParser(popts...), auth: auth}
}

// Wrap returns a handler that verifies the request's bearer token and
// calls next with the verified claims in the request's context.
func (mw *Middleware) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		claims, status, err := mw.verify(r)
		if err != nil {
			mw.refuse(w, r, status, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), claimsKey{}, claims)))
	})
}

// Errors of the request itself (never carrying the token).
var (
	// ErrNoToken reports a request without a bearer token: no
	// Authorization header, or one of another scheme (RFC 6750, section
	// 3.1: such a request gets a challenge without an error code).
	ErrNoToken = errors.New("jwkshttp: no bearer token")
	// ErrMalformedAuthorization reports a Bearer Authorization header that
	// is not one "Bearer <token>", or several Authorization headers.
	ErrMalformedAuthorization = errors.New("jwkshttp: malformed Authorization header")
)

// verify returns the verified claims, or the status to answer and why.
func (mw *Middleware) verify(r *http.Request) (jwt.Claims, int, error) {
	raw, err := bearer(r)
	if err != nil {
		if errors.Is(err, ErrNoToken) {
			return nil, http.StatusUnauthorized, err
		}
		return nil, http.StatusBadRequest, err
	}
	tenant, err := mw.opts.Tenant(r)
	if err != nil {
		return nil, http.StatusUnauthorized, err
	}
	var kf jwt.Keyfunc
	if mw.opts.Provider != nil {
		kf = mw.m.KeyfuncContext(r.Context(), tenant, mw.opts.Provider(r))
	} else {
		kf = mw.m.TenantKeyfuncContext(r.Context(), tenant)
	}
	var claims jwt.Claims = jwt.MapClaims{}
	if mw.opts.NewClaims != nil {
		claims = mw.opts.NewClaims()
	}
	tok, err := mw.parser.ParseWithClaims(raw, claims, kf)
	if err != nil {
		if jwkscache.KeysUnavailable(err) {
			return nil, http.StatusServiceUnavailable, err
		}
		return nil, http.StatusUnauthorized, err
	}
	if !tok.Valid {
		return nil, http.StatusUnauthorized, jwt.ErrTokenUnverifiable
	}
	return tok.Claims, 0, nil
}

// bearer returns the token of the request's Authorization header (RFC
// 6750, section 2.1: the scheme is case-insensitive, one token).
func bearer(r *http.Request) (string, error) {
	vals := r.Header.Values("Authorization")
	switch len(vals) {
	case 0:
		return "", ErrNoToken
	case 1:
	default:
		return "", ErrMalformedAuthorization
	}
	scheme, tok, _ := strings.Cut(vals[0], " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", ErrNoToken
	}
	tok = strings.TrimLeft(tok, " ")
	if tok == "" || strings.ContainsAny(tok, " \t") {
		return "", ErrMalformedAuthorization
	}
	return tok, nil
}

// refuse writes the answer for a refused request. The error description
// is a fixed text per status: error texts may quote token claims.
func (mw *Middleware) refuse(w http.ResponseWriter, r *http.Request, status int, err error) {
	if mw.opts.OnError != nil {
		mw.opts.OnError(r, status, err)
	}
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	switch status {
	case http.StatusServiceUnavailable:
		h.Set("Retry-After", strconv.Itoa(int((mw.opts.RetryAfter+time.Second-1)/time.Second)))
		http.Error(w, "signing keys unavailable, try again later", status)
		return
	case http.StatusBadRequest:
		h.Set("WWW-Authenticate", mw.auth+`, error="invalid_request", error_description="malformed Authorization header"`)
	default:
		if errors.Is(err, ErrNoToken) {
			h.Set("WWW-Authenticate", mw.auth)
		} else {
			h.Set("WWW-Authenticate", mw.auth+`, error="invalid_token", error_description="`+description(err)+`"`)
		}
	}
	http.Error(w, http.StatusText(status), status)
}

// description returns a fixed, token-free description of a token fault.
func description(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "the token has expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "the token is not valid yet"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "the token is not for this audience"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "the token's issuer is not accepted"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "the token is malformed"
	}
	return "the token could not be verified"
}

type claimsKey struct{}

// Claims returns the verified claims the middleware put in ctx.
func Claims(ctx context.Context) (jwt.Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(jwt.Claims)
	return c, ok
}

// ClaimsAs returns the verified claims in ctx as T: jwt.MapClaims by
// default, or the type Options.NewClaims returns.
func ClaimsAs[T jwt.Claims](ctx context.Context) (T, bool) {
	c, ok := ctx.Value(claimsKey{}).(T)
	return c, ok
}

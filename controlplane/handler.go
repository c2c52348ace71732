package controlplane

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/api"
)

// Options configures a Handler.
type Options struct {
	// AdminTokens are bearer tokens valid on every tenant's routes (and on
	// /metrics when ProtectMetrics is set).
	AdminTokens []string
	// TenantTokens maps a tenant to the bearer tokens valid on that
	// tenant's routes only. On another tenant's routes such a token gets
	// 404 not_found, exactly as if that tenant and its providers did not
	// exist.
	TenantTokens map[string][]string
	// DisableAuth serves every route without a token. For local use only;
	// no token may be configured with it.
	DisableAuth bool
	// ProtectMetrics makes GET /metrics require an admin token.
	ProtectMetrics bool
	// Metrics is served at GET /metrics (for example promhttp.HandlerFor
	// the registry given to jwkscache.Options.Registerer). Nil: /metrics
	// answers 404.
	Metrics http.Handler
	// Ready reports readiness for GET /readyz: a nil error answers 200, an
	// error 503 not_ready with its text. Nil: ready when every registered
	// provider has usable keys.
	Ready func() error
	// Logger receives one access record per request (method, path,
	// status, duration, the kind of caller) and the unexpected errors.
	// Tokens, keys and bodies are never logged. Nil: no logging.
	Logger *slog.Logger
}

// Default waits of GET .../jwks.
const (
	// coldWait bounds how long a request waits for a provider's first load
	// before it is answered 503 loading.
	coldWait = 2 * time.Second
	// revalidateWait bounds how long a request waits for the revalidation
	// that Cache-Control: no-cache or an unknown kid asks for.
	revalidateWait = 2 * time.Second
	// retryAfterLoading is the Retry-After of a 503 loading, in seconds.
	retryAfterLoading = "1"
	// maxBody caps the body of a PUT.
	maxBody = 64 << 10
	// maxMessage caps the message of an error answer, and each of its
	// details.
	maxMessage = 1024
	// maxDetails caps the members of an error answer's details.
	maxDetails = 256
	// maxKID is the longest kid the API accepts, in bytes.
	maxKID = 1024
)

// Handler is the control plane's http.Handler. It is safe for concurrent
// use. Create it with New.
type Handler struct {
	m      *jwkscache.Manager
	opts   Options
	mux    *http.ServeMux
	admin  [][sha256.Size]byte
	tenant []tenantToken
	spec   []byte
	logger *slog.Logger
	// routes lists "METHOD pattern" of every operation served.
	routes []string

	coldWait, revalidateWait time.Duration
	jwksCache                headerCache
}

type tenantToken struct {
	tenant string
	sum    [sha256.Size]byte
}

// New returns a Handler serving the control plane of m under opts. It
// refuses options with an empty token (or one that could not be sent in an
// Authorization header), a token configured twice, an invalid tenant id,
// tokens together with DisableAuth, and ProtectMetrics without an admin
// token.
func New(m *jwkscache.Manager, opts Options) (*Handler, error) {
	var errs []string
	if m == nil {
		errs = append(errs, "nil Manager")
	}
	h := &Handler{
		m:              m,
		opts:           opts,
		spec:           api.Spec(),
		logger:         opts.Logger,
		coldWait:       coldWait,
		revalidateWait: revalidateWait,
	}
	seen := make(map[[sha256.Size]byte]bool)
	addToken := func(where, tok string) ([sha256.Size]byte, bool) {
		switch {
		case tok == "":
			errs = append(errs, where+": empty token")
			return [sha256.Size]byte{}, false
		case !validToken(tok):
			// Never quote the token: say what is wrong only.
			errs = append(errs, where+": a token must be printable ASCII without spaces")
			return [sha256.Size]byte{}, false
		}
		sum := sha256.Sum256([]byte(tok))
		if seen[sum] {
			errs = append(errs, where+": token configured more than once")
			return sum, false
		}
		seen[sum] = true
		return sum, true
	}
	for i, tok := range opts.AdminTokens {
		if sum, ok := addToken(fmt.Sprintf("AdminTokens[%d]", i), tok); ok {
			h.admin = append(h.admin, sum)
		}
	}
	tenants := make([]string, 0, len(opts.TenantTokens))
	for t := range opts.TenantTokens {
		tenants = append(tenants, t)
	}
	slices.Sort(tenants)
	for _, t := range tenants {
		if msg := checkTenantID(t); msg != "" {
			errs = append(errs, fmt.Sprintf("TenantTokens: tenant %s", msg))
			continue
		}
		for i, tok := range opts.TenantTokens[t] {
			if sum, ok := addToken(fmt.Sprintf("TenantTokens[%q][%d]", t, i), tok); ok {
				h.tenant = append(h.tenant, tenantToken{tenant: t, sum: sum})
			}
		}
	}
	if opts.DisableAuth && len(seen) > 0 {
		errs = append(errs, "DisableAuth: tokens are configured too")
	}
	if opts.ProtectMetrics && !opts.DisableAuth && len(h.admin) == 0 {
		errs = append(errs, "ProtectMetrics: no admin token could reach /metrics")
	}
	if len(errs) > 0 {
		return nil, errors.New("controlplane: invalid options: " + strings.Join(errs, "; "))
	}
	h.jwksCache.seed = maphash.MakeSeed()
	h.mux = http.NewServeMux()
	h.routeAll()
	return h, nil
}

// validToken reports whether tok can be sent as a bearer token and found
// again: printable ASCII without spaces.
func validToken(tok string) bool {
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

// The operations of the contract (api/openapi.yaml), by path.
const (
	pathList     = "/tenants/{tenantId}/providers"
	pathProvider = "/tenants/{tenantId}/providers/{providerId}"
	pathJWKS     = pathProvider + "/jwks"
	pathRefresh  = pathProvider + "/refresh"
	pathDeny     = pathProvider + "/keys/{kid}/deny"
	pathStatus   = pathProvider + "/status"
)

// routeAll registers every operation of the contract, and for each of its
// paths a method-less fallback answering 405 with Allow; "/" answers 404.
func (h *Handler) routeAll() {
	type op struct {
		method string
		fn     http.HandlerFunc
	}
	table := []struct {
		path string
		ops  []op
	}{
		{pathList, []op{{"GET", h.provider(h.list, onTenant)}}},
		{pathProvider, []op{{"PUT", h.provider(h.put, onProvider)}, {"DELETE", h.provider(h.delete, onProvider)}}},
		{pathJWKS, []op{{"GET", h.serveJWKS}}},
		{pathRefresh, []op{{"POST", h.provider(h.refresh, onProvider)}}},
		{pathDeny, []op{{"POST", h.provider(h.deny, onKID)}, {"DELETE", h.provider(h.allow, onKID)}}},
		{pathStatus, []op{{"GET", h.provider(h.status, onProvider)}}},
		{"/healthz", []op{{"GET", h.healthz}}},
		{"/readyz", []op{{"GET", h.readyz}}},
		{"/metrics", []op{{"GET", h.metrics}}},
		{"/openapi.yaml", []op{{"GET", h.openapi}}},
	}
	for _, t := range table {
		var allow []string
		for _, o := range t.ops {
			h.mux.HandleFunc(o.method+" "+t.path, o.fn)
			h.routes = append(h.routes, o.method+" "+t.path)
			allow = append(allow, o.method)
			if o.method == http.MethodGet {
				allow = append(allow, http.MethodHead) // net/http serves HEAD with GET
			}
		}
		allowed := strings.Join(allow, ", ")
		h.mux.HandleFunc(t.path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allowed)
			h.writeError(w, r, http.StatusMethodNotAllowed, codeInvalidRequest,
				fmt.Sprintf("method %s is not allowed here; use %s", capText(r.Method, 32), allowed), nil)
		})
	}
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.writeError(w, r, http.StatusNotFound, codeNotFound, "no such route", nil)
	})
}

// ServeHTTP serves the control plane.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.logger != nil {
		lw := &logWriter{ResponseWriter: w, status: http.StatusOK}
		start := time.Now()
		defer h.logAccess(lw, r, start)
		w = lw
	}
	// A path that is not in its clean form would get a redirect from the
	// ServeMux, which is no ErrorResponse: it names no route of the
	// contract.
	if p := r.URL.EscapedPath(); p != "" && !isClean(p) {
		h.writeError(w, r, http.StatusNotFound, codeNotFound, "no such route", nil)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// isClean reports whether p is an absolute path without empty, "." or ".."
// segments (a trailing slash aside), as the ServeMux wants it.
func isClean(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	for i := 1; i <= len(p); {
		j := strings.IndexByte(p[i:], '/')
		if j < 0 {
			j = len(p) - i
		}
		switch seg := p[i : i+j]; {
		case seg == "." || seg == "..":
			return false
		case seg == "" && i+j < len(p):
			return false // "//"
		}
		i += j + 1
	}
	return true
}

// logWriter records the status of a response for the access log.
type logWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *logWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *logWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *logWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush forwards to the underlying writer when it can flush.
func (w *logWriter) Flush() {
	w.wrote = true
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (h *Handler) logAccess(w *logWriter, r *http.Request, start time.Time) {
	level := slog.LevelInfo
	switch {
	case w.status >= 500:
		level = slog.LevelWarn
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
		level = slog.LevelDebug
	}
	ctx := r.Context()
	if !h.logger.Enabled(ctx, level) {
		return
	}
	// The path, never the query or a header: the Authorization header
	// stays out of logs.
	h.logger.LogAttrs(ctx, level, "controlplane: request",
		slog.String("method", capText(r.Method, 32)),
		slog.String("path", capText(r.URL.Path, 512)),
		slog.Int("status", w.status),
		slog.Duration("duration", time.Since(start)),
		slog.String("caller", h.callerKind(r)),
	)
}

// callerKind names the kind of caller for the access log, never its token.
func (h *Handler) callerKind(r *http.Request) string {
	if _, ok := r.Header["Authorization"]; !ok {
		return "anonymous"
	}
	p, fail := h.authenticate(r)
	switch {
	case fail != authOK:
		return "refused"
	case p.admin:
		return "admin"
	default:
		return "tenant " + p.tenant
	}
}

// Authentication.

type authResult int

const (
	authOK      authResult = iota
	authMissing            // no bearer token
	authInvalid            // a bearer token that is not configured
)

// principal is who a valid token belongs to.
type principal struct {
	admin  bool
	tenant string // for a tenant token
}

// authenticate finds the principal of r's bearer token. The token's
// SHA-256 digest is compared with every configured token's, in constant
// time and without an early exit, so that neither the match nor the
// token's length shows in the timing.
func (h *Handler) authenticate(r *http.Request) (principal, authResult) {
	vals := r.Header["Authorization"]
	if len(vals) == 0 {
		return principal{}, authMissing
	}
	if len(vals) > 1 {
		return principal{}, authInvalid
	}
	scheme, tok, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return principal{}, authMissing
	}
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return principal{}, authMissing
	}
	sum := sha256.Sum256([]byte(tok))
	admin := 0
	for i := range h.admin {
		admin |= subtle.ConstantTimeCompare(sum[:], h.admin[i][:])
	}
	match := -1
	for i := range h.tenant {
		match = subtle.ConstantTimeSelect(subtle.ConstantTimeCompare(sum[:], h.tenant[i].sum[:]), i, match)
	}
	switch {
	case admin == 1:
		return principal{admin: true}, authOK
	case match >= 0:
		return principal{tenant: h.tenant[match].tenant}, authOK
	}
	return principal{}, authInvalid
}

// reaches reports whether p may act on tenant.
func (p principal) reaches(tenant string) bool { return p.admin || p.tenant == tenant }

// unauthorized answers 401 with the bearer challenge.
func (h *Handler) unauthorized(w http.ResponseWriter, r *http.Request, res authResult) {
	if res == authInvalid {
		w.Header().Set("WWW-Authenticate", `Bearer realm="jwks-cache", error="invalid_token"`)
		h.writeError(w, r, http.StatusUnauthorized, codeUnauthorized, "the bearer token is not valid", nil)
		return
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="jwks-cache"`)
	h.writeError(w, r, http.StatusUnauthorized, codeUnauthorized, "a bearer token is required", nil)
}

// Path parameters.

// checkTenantID returns what is wrong with a tenant id, or "".
func checkTenantID(id string) string { return checkID(id, false) }

// checkProviderID returns what is wrong with a provider id, or "".
func checkProviderID(id string) string { return checkID(id, true) }

func checkID(id string, underscore bool) string {
	switch {
	case id == "":
		return `"": must be 1 to 64 characters`
	case len(id) > 64:
		return fmt.Sprintf("%s: must be at most 64 characters, got %d", quote(id), len(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || underscore && c == '_' {
			continue
		}
		if underscore {
			return quote(id) + ": only [A-Za-z0-9_-] allowed"
		}
		return quote(id) + ": only [A-Za-z0-9-] allowed"
	}
	return ""
}

// checkKID returns what is wrong with a kid, or "".
func checkKID(kid string) string {
	switch {
	case kid == "":
		return "empty"
	case len(kid) > maxKID:
		return fmt.Sprintf("over %d bytes (%d)", maxKID, len(kid))
	}
	return ""
}

// providerHandler handles an authenticated operation on one provider (or,
// for the list, one tenant); provider is "" for the list.
type providerHandler func(w http.ResponseWriter, r *http.Request, p principal, tenant, provider, kid string)

// target says which path parameters an operation has.
type target int

const (
	onTenant   target = iota // tenantId
	onProvider               // tenantId, providerId
	onKID                    // tenantId, providerId, kid
)

// provider wraps an operation on a tenant's path: it checks the path
// parameters (400 before any other check), the token (401) and that the
// token reaches the tenant (404, as if the tenant did not exist).
func (h *Handler) provider(fn providerHandler, on target) http.HandlerFunc {
	hasProvider, withKID := on >= onProvider, on == onKID
	return func(w http.ResponseWriter, r *http.Request) {
		tenant, provider, kid := r.PathValue("tenantId"), r.PathValue("providerId"), r.PathValue("kid")
		if !h.checkPath(w, r, tenant, provider, hasProvider, kid, withKID) {
			return
		}
		var p principal
		if h.opts.DisableAuth {
			p.admin = true
		} else {
			var res authResult
			if p, res = h.authenticate(r); res != authOK {
				h.unauthorized(w, r, res)
				return
			}
		}
		if !p.reaches(tenant) {
			if hasProvider {
				h.notFound(w, r, tenant, provider)
			} else {
				h.writeError(w, r, http.StatusNotFound, codeNotFound, "no such tenant", nil)
			}
			return
		}
		fn(w, r, p, tenant, provider, kid)
	}
}

// checkPath validates the path parameters, answering 400 with every bad
// one in details; it reports whether they are valid.
func (h *Handler) checkPath(w http.ResponseWriter, r *http.Request, tenant, provider string, hasProvider bool, kid string, withKID bool) bool {
	var details map[string]string
	add := func(name, msg string) {
		if msg == "" {
			return
		}
		if details == nil {
			details = make(map[string]string, 3)
		}
		details[name] = msg
	}
	add("tenantId", checkTenantID(tenant))
	if hasProvider {
		add("providerId", checkProviderID(provider))
	}
	if withKID {
		add("kid", checkKID(kid))
	}
	if details == nil {
		return true
	}
	h.writeError(w, r, http.StatusBadRequest, codeInvalidRequest, joinDetails(details), details)
	return false
}

// notFound answers 404 for a provider: the same answer whether it does not
// exist or the token cannot reach its tenant.
func (h *Handler) notFound(w http.ResponseWriter, r *http.Request, tenant, provider string) {
	h.writeError(w, r, http.StatusNotFound, codeNotFound, "provider "+tenant+"/"+provider+" is not registered", nil)
}

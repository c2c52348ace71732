package controlplane

import (
	"context"
	"errors"
	"hash/maphash"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jwkscache/jwkscache"
)

var (
	hdrRetryAfterLoading = []string{retryAfterLoading}
)

// GET /tenants/{tenantId}/providers/{providerId}/jwks
//
// The warm path: path checks, one Manager call that returns the served
// document as it is cached (body and strong ETag built once per key set,
// denial list and staleness), and headers from a small cache keyed by that
// document, so that a warm 200 or 304 encodes nothing.
func (h *Handler) serveJWKS(w http.ResponseWriter, r *http.Request) {
	tenant, provider := r.PathValue("tenantId"), r.PathValue("providerId")
	if !h.checkPath(w, r, tenant, provider, true, "", false) {
		return
	}
	kid, hasKID := "", false
	if r.URL.RawQuery != "" {
		var ok bool
		if kid, hasKID, ok = h.kidQuery(w, r); !ok {
			return
		}
	}
	revalidate := false
	// wait bounds every wait of a revalidating request together: the
	// revalidation, a cold load, a kid's refresh.
	wait := r.Context()
	if cc := r.Header["Cache-Control"]; len(cc) > 0 && wantsRevalidation(cc) {
		revalidate = true
		var cancel context.CancelFunc
		wait, cancel = context.WithTimeout(r.Context(), h.revalidateWait)
		defer cancel()
		// One shared conditional fetch, within the provider's unknown-kid
		// budget. Rate limited, failed or too slow: answer from memory
		// (the Age header shows how old it is).
		err := h.m.Revalidate(wait, tenant, provider)
		if errors.Is(err, jwkscache.ErrNotRegistered) {
			h.notFound(w, r, tenant, provider)
			return
		}
	}
	sj, err := h.served(wait, tenant, provider)
	if err != nil {
		h.jwksError(w, r, tenant, provider, err)
		return
	}
	if hasKID && !revalidate && !slices.Contains(sj.KIDs, kid) {
		// A kid the set lacks: a rotation seen first by this client. The
		// Manager's kid lookup refreshes once, within the unknown-kid
		// budget, unless a fetch begun after an earlier miss of the same
		// kid showed it missing (the negative cache) or the kid is denied.
		ctx, cancel := context.WithTimeout(r.Context(), h.revalidateWait)
		_, kerr := h.m.Key(ctx, tenant, provider, kid)
		cancel()
		if errors.Is(kerr, jwkscache.ErrNotRegistered) {
			h.notFound(w, r, tenant, provider)
			return
		}
		if sj, err = h.served(r.Context(), tenant, provider); err != nil {
			h.jwksError(w, r, tenant, provider, err)
			return
		}
	}
	if len(sj.KIDs) == 0 {
		h.writeErrorClass(w, r, http.StatusBadGateway, codeNoKeys, "no usable keys: every key is denied", nil, "")
		return
	}
	now := time.Now()
	e := h.jwksCache.get(tenant, provider, kid, hasKID, sj, now)
	if e == nil {
		h.writeError(w, r, http.StatusNotFound, codeNotFound, "no key "+quote(kid)+" in the set of provider "+tenant+"/"+provider, nil)
		return
	}
	hd := w.Header()
	hd["X-Content-Type-Options"] = hdrNoSniff
	hd["Etag"] = e.etag
	hd["Last-Modified"] = e.lastModified
	hd["Cache-Control"] = e.cacheControl
	hd["Age"] = e.age
	if notModified(r, e) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	hd["Content-Type"] = hdrJSON
	hd["Content-Length"] = e.contentLength
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(e.doc.Body)
	}
}

// notModified evaluates the request's preconditions (RFC 9110, section
// 13.2.2): If-None-Match when present, else If-Modified-Since.
func notModified(r *http.Request, e *servedEntry) bool {
	if inm := r.Header["If-None-Match"]; len(inm) > 0 {
		return noneMatch(inm, e.doc.ETag)
	}
	if ims := r.Header["If-Modified-Since"]; len(ims) > 0 {
		t, err := http.ParseTime(ims[0])
		return err == nil && !e.modified.After(t)
	}
	return false
}

// kidQuery reads the kid query parameter; on a bad query it answers 400
// and reports false.
func (h *Handler) kidQuery(w http.ResponseWriter, r *http.Request) (kid string, has, ok bool) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		h.writeError(w, r, http.StatusBadRequest, codeInvalidRequest, "the query string is not valid", map[string]string{"query": "not valid URL encoding"})
		return "", false, false
	}
	kids, has := q["kid"]
	if !has {
		return "", false, true
	}
	msg := ""
	if len(kids) > 1 {
		msg = "given more than once"
	} else {
		msg = checkKID(kids[0])
	}
	if msg != "" {
		h.writeError(w, r, http.StatusBadRequest, codeInvalidRequest, "kid: "+msg, map[string]string{"kid": msg})
		return "", false, false
	}
	return kids[0], true, true
}

// served returns the provider's served document, waiting at most
// h.coldWait for a first load.
func (h *Handler) served(parent context.Context, tenant, provider string) (*jwkscache.ServedJWKS, error) {
	ctx := getWaitCtx(parent, h.coldWait)
	sj, err := h.m.JWKS(ctx, tenant, provider)
	ctx.release()
	return sj, err
}

// jwksError answers a failed GET .../jwks.
func (h *Handler) jwksError(w http.ResponseWriter, r *http.Request, tenant, provider string, err error) {
	var fe *jwkscache.FetchError
	switch {
	case errors.Is(err, jwkscache.ErrNotRegistered):
		h.notFound(w, r, tenant, provider)
	case errors.Is(err, jwkscache.ErrClosed):
		h.managerError(w, r, tenant, provider, err)
	case errors.As(err, &fe):
		h.writeErrorClass(w, r, http.StatusBadGateway, codeNoKeys, noKeysMessage(err), nil, fe.Class)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		h.loading(w, r)
	case errors.Is(err, jwkscache.ErrNoKeys):
		st, serr := h.m.Status(tenant, provider)
		switch {
		case serr != nil:
			h.managerError(w, r, tenant, provider, serr)
		case st.LastError == "" && (st.State == jwkscache.StateLoading || st.State == jwkscache.StateEmpty):
			h.loading(w, r)
		default:
			h.writeErrorClass(w, r, http.StatusBadGateway, codeNoKeys, noKeysMessage(err), nil, jwkscache.ErrorClass(st.LastErrorClass))
		}
	default:
		h.managerError(w, r, tenant, provider, err)
	}
}

// loading answers 503 loading: the first load is still running.
func (h *Handler) loading(w http.ResponseWriter, r *http.Request) {
	w.Header()["Retry-After"] = hdrRetryAfterLoading
	h.writeError(w, r, http.StatusServiceUnavailable, codeLoading, "the provider's first load is still running", nil)
}

// noKeysMessage quotes the Manager's error: it names the provider and URL
// (without userinfo or query) and the cause.
func noKeysMessage(err error) string { return trimPrefixes(err.Error()) }

// The header cache.

// headerSlots is the size of the header cache: a collision only costs a
// rebuild of the headers.
const headerSlots = 1024

// headerCache keeps, per provider (and kid asked for), the response
// headers of its current served document: a document of the Manager is
// immutable, so its pointer identifies the headers, but for Age and
// Cache-Control, which move with the clock and are rebuilt when their
// whole seconds change.
type headerCache struct {
	seed  maphash.Seed
	slots [headerSlots]atomic.Pointer[servedEntry]
}

// servedEntry is a served document and its headers. It is immutable.
type servedEntry struct {
	src    *jwkscache.ServedJWKS // as the Manager returned it
	kid    string
	hasKID bool
	doc    *jwkscache.ServedJWKS // src, or src narrowed to kid

	etag, lastModified, contentLength []string
	modified                          time.Time // Last-Modified, whole seconds

	ageSec, maxAgeSec int64
	age, cacheControl []string
}

func (c *headerCache) slot(tenant, provider, kid string) *atomic.Pointer[servedEntry] {
	x := maphash.String(c.seed, tenant)
	x = x*31 ^ maphash.String(c.seed, provider)
	if kid != "" {
		x = x*31 ^ maphash.String(c.seed, kid)
	}
	return &c.slots[x%headerSlots]
}

// get returns the entry of src (narrowed to kid when hasKID) at now, or nil
// when src has no key kid.
func (c *headerCache) get(tenant, provider, kid string, hasKID bool, src *jwkscache.ServedJWKS, now time.Time) *servedEntry {
	age, maxAge := ages(src, now)
	slot := c.slot(tenant, provider, kid)
	e := slot.Load()
	if e != nil && e.src == src && e.hasKID == hasKID && e.kid == kid {
		if e.ageSec == age && e.maxAgeSec == maxAge {
			return e
		}
		ne := *e
		ne.setAges(age, maxAge)
		slot.Store(&ne)
		return &ne
	}
	doc := src
	if hasKID {
		d, ok := src.Only(kid)
		if !ok {
			return nil
		}
		doc = d
	}
	modified := src.LastModified
	if src.Stale && src.ExpiresAt.After(modified) {
		// The body changed ("stale": true) when the keys expired.
		modified = src.ExpiresAt
	}
	modified = time.Unix(modified.Unix(), 0).UTC()
	ne := &servedEntry{
		src: src, kid: kid, hasKID: hasKID, doc: doc,
		etag:          []string{doc.ETag},
		lastModified:  []string{modified.Format(http.TimeFormat)},
		contentLength: []string{strconv.Itoa(len(doc.Body))},
		modified:      modified,
	}
	ne.setAges(age, maxAge)
	slot.Store(ne)
	return ne
}

func (e *servedEntry) setAges(age, maxAge int64) {
	e.ageSec, e.maxAgeSec = age, maxAge
	e.age = []string{strconv.FormatInt(age, 10)}
	e.cacheControl = []string{"public, max-age=" + strconv.FormatInt(maxAge, 10)}
}

// ages returns the document's Age (seconds since the last exchange with the
// IdP) and max-age (the remaining freshness), in whole seconds, floored
// and at least 0.
func ages(sj *jwkscache.ServedJWKS, now time.Time) (age, maxAge int64) {
	age = int64(now.Sub(sj.FetchedAt) / time.Second)
	maxAge = int64(sj.ExpiresAt.Sub(now) / time.Second)
	return max(age, 0), max(maxAge, 0)
}

// waitCtx bounds a wait for a provider's first load. Its timer starts only
// when the Manager uses it (it does not on a warm lookup), so that the warm
// path allocates no timer; an unused one is recycled.
type waitCtx struct {
	parent context.Context
	d      time.Duration

	mu     sync.Mutex
	ctx    context.Context // the bounded context, once used
	cancel context.CancelFunc
}

var waitCtxs = sync.Pool{New: func() any { return new(waitCtx) }}

func getWaitCtx(parent context.Context, d time.Duration) *waitCtx {
	c := waitCtxs.Get().(*waitCtx)
	c.parent, c.d = parent, d
	return c
}

// release stops the timer; an unused context goes back to the pool (no one
// can hold it: nothing but its methods would have reached it).
func (c *waitCtx) release() {
	c.mu.Lock()
	used := c.ctx != nil
	if used {
		c.cancel()
	}
	c.mu.Unlock()
	if !used {
		c.parent = nil
		waitCtxs.Put(c)
	}
}

func (c *waitCtx) inner() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx == nil {
		c.ctx, c.cancel = context.WithTimeout(c.parent, c.d)
	}
	return c.ctx
}

func (c *waitCtx) Deadline() (time.Time, bool) { return c.inner().Deadline() }
func (c *waitCtx) Done() <-chan struct{}       { return c.inner().Done() }
func (c *waitCtx) Err() error                  { return c.inner().Err() }

// Value goes to the bounded context, so that context.Cause and derived
// contexts see its deadline.
func (c *waitCtx) Value(key any) any { return c.inner().Value(key) }

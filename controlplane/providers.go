package controlplane

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/jwkscache/jwkscache"
)

// statusJSON returns the ProviderStatus document of st: its JSON form with
// the provider's metric series as "metrics".
func statusJSON(st jwkscache.ProviderStatus, metrics []jwkscache.MetricSample) ([]byte, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	if metrics == nil {
		metrics = []jwkscache.MetricSample{}
	}
	for i := range metrics {
		if metrics[i].Labels == nil {
			metrics[i].Labels = map[string]string{}
		}
	}
	mb, err := json.Marshal(metrics)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSpace(b)
	if len(b) < 2 || b[len(b)-1] != '}' {
		return nil, errors.New("controlplane: status is not a JSON object")
	}
	out := make([]byte, 0, len(b)+len(mb)+16)
	out = append(out, b[:len(b)-1]...)
	if len(b) > 2 {
		out = append(out, ',')
	}
	out = append(out, `"metrics":`...)
	out = append(out, mb...)
	out = append(out, '}')
	return out, nil
}

// providerStatus returns the status document of one provider and its
// registration version.
func (h *Handler) providerStatus(tenant, provider string) ([]byte, string, error) {
	st, err := h.m.Status(tenant, provider)
	if err != nil {
		return nil, "", err
	}
	metrics, err := h.m.ProviderMetrics(tenant, provider)
	if err != nil {
		return nil, "", err
	}
	b, err := statusJSON(st, metrics)
	return b, st.RegistrationVersion, err
}

// writeStatus answers status with the provider's status and its
// registration version as ETag.
func (h *Handler) writeStatus(w http.ResponseWriter, r *http.Request, code int, tenant, provider string) {
	b, version, err := h.providerStatus(tenant, provider)
	if err != nil {
		h.managerError(w, r, tenant, provider, err)
		return
	}
	w.Header().Set("ETag", strconv.Quote(version))
	writeJSON(w, code, b)
}

// GET /tenants/{tenantId}/providers/{providerId}/status
func (h *Handler) status(w http.ResponseWriter, r *http.Request, _ principal, tenant, provider, _ string) {
	h.writeStatus(w, r, http.StatusOK, tenant, provider)
}

// GET /tenants/{tenantId}/providers
func (h *Handler) list(w http.ResponseWriter, r *http.Request, _ principal, tenant, _, _ string) {
	var b bytes.Buffer
	b.WriteString(`{"providers":[`)
	n := 0
	for _, st := range h.m.TenantStatuses(tenant) {
		metrics, err := h.m.ProviderMetrics(tenant, st.ProviderID)
		if errors.Is(err, jwkscache.ErrNotRegistered) {
			continue // removed since the list was taken
		}
		if err != nil {
			h.managerError(w, r, tenant, st.ProviderID, err)
			return
		}
		doc, err := statusJSON(st, metrics)
		if err != nil {
			h.managerError(w, r, tenant, st.ProviderID, err)
			return
		}
		if n > 0 {
			b.WriteByte(',')
		}
		b.Write(doc)
		n++
	}
	b.WriteString(`]}`)
	writeJSON(w, http.StatusOK, b.Bytes())
}

// DELETE /tenants/{tenantId}/providers/{providerId}
func (h *Handler) delete(w http.ResponseWriter, r *http.Request, _ principal, tenant, provider, _ string) {
	if err := h.m.Unregister(r.Context(), tenant, provider); err != nil {
		h.managerError(w, r, tenant, provider, err)
		return
	}
	noContent(w, http.StatusNoContent)
}

// POST /tenants/{tenantId}/providers/{providerId}/refresh
//
// RefreshAsync starts a fetch that begins after this request: it never
// joins one already running, whose answer may predate the change the
// client refreshes for.
func (h *Handler) refresh(w http.ResponseWriter, r *http.Request, _ principal, tenant, provider, _ string) {
	if err := h.m.RefreshAsync(tenant, provider); err != nil {
		h.managerError(w, r, tenant, provider, err)
		return
	}
	noContent(w, http.StatusAccepted)
}

// POST /tenants/{tenantId}/providers/{providerId}/keys/{kid}/deny
func (h *Handler) deny(w http.ResponseWriter, r *http.Request, _ principal, tenant, provider, kid string) {
	if err := h.m.DenyKey(tenant, provider, kid); err != nil {
		h.managerError(w, r, tenant, provider, err)
		return
	}
	noContent(w, http.StatusNoContent)
}

// DELETE /tenants/{tenantId}/providers/{providerId}/keys/{kid}/deny
func (h *Handler) allow(w http.ResponseWriter, r *http.Request, _ principal, tenant, provider, kid string) {
	if err := h.m.AllowKey(tenant, provider, kid); err != nil {
		h.managerError(w, r, tenant, provider, err)
		return
	}
	noContent(w, http.StatusNoContent)
}

// noContent answers a status without a body.
func noContent(w http.ResponseWriter, status int) {
	noStore(w)
	w.WriteHeader(status)
}

// Operations routes.

var healthBody = []byte(`{"status":"ok"}`)

// GET /healthz
func (h *Handler) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, healthBody)
}

// GET /readyz
func (h *Handler) readyz(w http.ResponseWriter, r *http.Request) {
	ready := h.opts.Ready
	if ready == nil {
		ready = h.providersReady
	}
	if err := ready(); err != nil {
		h.writeError(w, r, http.StatusServiceUnavailable, codeNotReady, err.Error(), nil)
		return
	}
	writeJSON(w, http.StatusOK, healthBody)
}

// providersReady is the default readiness: every registered provider has
// usable keys (served, and not all denied).
func (h *Handler) providersReady() error {
	var first string
	n := 0
	for _, st := range h.m.Statuses() {
		if usable(st) {
			continue
		}
		if n == 0 {
			first = fmt.Sprintf("provider %s/%s has no usable keys (state %s)", st.TenantID, st.ProviderID, st.State)
		}
		n++
	}
	switch n {
	case 0:
		return nil
	case 1:
		return errors.New(first)
	}
	return fmt.Errorf("%s, and %d more providers have none", first, n-1)
}

// usable reports whether st serves at least one key that is not denied.
func usable(st jwkscache.ProviderStatus) bool {
	if st.State != jwkscache.StateReady && st.State != jwkscache.StateRefreshing {
		return false
	}
	for _, k := range st.Keys {
		denied := false
		for _, d := range st.DeniedKIDs {
			if d == k.KID {
				denied = true
				break
			}
		}
		if !denied {
			return true
		}
	}
	return false
}

// GET /metrics
func (h *Handler) metrics(w http.ResponseWriter, r *http.Request) {
	if h.opts.ProtectMetrics && !h.opts.DisableAuth {
		p, res := h.authenticate(r)
		if res == authOK && !p.admin {
			res = authInvalid // a tenant token does not reach the daemon's metrics
		}
		if res != authOK {
			h.unauthorized(w, r, res)
			return
		}
	}
	if h.opts.Metrics == nil {
		h.writeError(w, r, http.StatusNotFound, codeNotFound, "no metrics are configured", nil)
		return
	}
	noStore(w)
	h.opts.Metrics.ServeHTTP(w, r)
}

// GET /openapi.yaml
func (h *Handler) openapi(w http.ResponseWriter, _ *http.Request) {
	noStore(w)
	hd := w.Header()
	hd["Content-Type"] = hdrYAML
	hd["Content-Length"] = []string{strconv.Itoa(len(h.spec))}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(h.spec)
}

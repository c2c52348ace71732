package main

// TEMPORARY: a minimal stand-in for package controlplane, which is being
// written on another branch with the API below. It serves just enough of
// api/openapi.yaml for this command's tests and demo (register, status,
// jwks with revalidation, health, readiness, metrics). Delete this file
// once controlplane is merged, and use cp.go's real adapter instead.

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jwkscache/jwkscache"
)

// cpOptions mirrors controlplane.Options.
type cpOptions struct {
	AdminTokens    []string
	TenantTokens   map[string][]string
	DisableAuth    bool
	ProtectMetrics bool
	Metrics        http.Handler
	Ready          func() error
	Logger         *slog.Logger
}

// newControlPlane mirrors controlplane.New.
func newControlPlane(m *jwkscache.Manager, o cpOptions) (http.Handler, error) {
	if m == nil {
		return nil, errors.New("controlplane: nil Manager")
	}
	if !o.DisableAuth && len(o.AdminTokens) == 0 && len(o.TenantTokens) == 0 {
		return nil, errors.New("controlplane: no tokens configured")
	}
	s := &stubCP{m: m, o: o}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		stubJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if o.Ready != nil {
			if err := o.Ready(); err != nil {
				stubErr(w, http.StatusServiceUnavailable, "not_ready", err.Error())
				return
			}
		}
		stubJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		if o.ProtectMetrics && !s.admin(r) {
			s.unauthorized(w)
			return
		}
		if o.Metrics == nil {
			http.NotFound(w, r)
			return
		}
		o.Metrics.ServeHTTP(w, r)
	})
	mux.HandleFunc("PUT /tenants/{tenant}/providers/{provider}", s.auth(s.put))
	mux.HandleFunc("DELETE /tenants/{tenant}/providers/{provider}", s.auth(s.del))
	mux.HandleFunc("GET /tenants/{tenant}/providers/{provider}/status", s.auth(s.status))
	mux.HandleFunc("POST /tenants/{tenant}/providers/{provider}/refresh", s.auth(s.refresh))
	mux.HandleFunc("GET /tenants/{tenant}/providers/{provider}/jwks", s.jwks)
	return mux, nil
}

type stubCP struct {
	m *jwkscache.Manager
	o cpOptions
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return h[7:]
	}
	return ""
}

func tokenIn(tok string, list []string) bool {
	ok := false
	for _, t := range list {
		if subtle.ConstantTimeCompare([]byte(t), []byte(tok)) == 1 {
			ok = true
		}
	}
	return ok
}

func (s *stubCP) admin(r *http.Request) bool {
	tok := bearer(r)
	return tok != "" && tokenIn(tok, s.o.AdminTokens)
}

func (s *stubCP) unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="jwks-cache"`)
	stubErr(w, http.StatusUnauthorized, "unauthorized", "a bearer token is required")
}

func (s *stubCP) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.o.DisableAuth {
			h(w, r)
			return
		}
		tok := bearer(r)
		switch {
		case tok == "":
			s.unauthorized(w)
		case tokenIn(tok, s.o.AdminTokens):
			h(w, r)
		case tokenIn(tok, s.o.TenantTokens[r.PathValue("tenant")]):
			h(w, r)
		default:
			for _, list := range s.o.TenantTokens {
				if tokenIn(tok, list) {
					stubErr(w, http.StatusNotFound, "not_found", "no such provider")
					return
				}
			}
			s.unauthorized(w)
		}
	}
}

func (s *stubCP) put(w http.ResponseWriter, r *http.Request) {
	tenant, provider := r.PathValue("tenant"), r.PathValue("provider")
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10+1))
	if err != nil {
		stubErr(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	if len(body) > 64<<10 {
		stubErr(w, http.StatusRequestEntityTooLarge, "too_large", "body over 64 KiB")
		return
	}
	var reg jwkscache.Registration
	if err := json.Unmarshal(body, &reg); err != nil {
		stubErr(w, http.StatusBadRequest, "invalid_registration", err.Error())
		return
	}
	if reg.TenantID != "" && reg.TenantID != tenant || reg.ProviderID != "" && reg.ProviderID != provider {
		stubErr(w, http.StatusBadRequest, "invalid_registration", "tenantId or providerId differs from the path")
		return
	}
	reg.TenantID, reg.ProviderID = tenant, provider
	if err := s.m.Register(r.Context(), reg); err != nil {
		code, status := "invalid_registration", http.StatusBadRequest
		if errors.Is(err, jwkscache.ErrSecurityPolicy) {
			code, status = "security_policy", http.StatusForbidden
		}
		stubErr(w, status, code, err.Error())
		return
	}
	st, err := s.m.Status(tenant, provider)
	if err != nil {
		stubErr(w, http.StatusNotFound, "not_found", err.Error())
		return
	}
	w.Header().Set("ETag", strconv.Quote(st.RegistrationVersion))
	stubJSON(w, http.StatusAccepted, st)
}

func (s *stubCP) del(w http.ResponseWriter, r *http.Request) {
	if err := s.m.Unregister(r.Context(), r.PathValue("tenant"), r.PathValue("provider")); err != nil {
		stubErr(w, http.StatusNotFound, "not_found", err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *stubCP) status(w http.ResponseWriter, r *http.Request) {
	st, err := s.m.Status(r.PathValue("tenant"), r.PathValue("provider"))
	if err != nil {
		stubErr(w, http.StatusNotFound, "not_found", err.Error())
		return
	}
	w.Header().Set("ETag", strconv.Quote(st.RegistrationVersion))
	stubJSON(w, http.StatusOK, st)
}

func (s *stubCP) refresh(w http.ResponseWriter, r *http.Request) {
	if err := s.m.RefreshAsync(r.PathValue("tenant"), r.PathValue("provider")); err != nil {
		stubErr(w, http.StatusNotFound, "not_found", err.Error())
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

func (s *stubCP) jwks(w http.ResponseWriter, r *http.Request) {
	tenant, provider := r.PathValue("tenant"), r.PathValue("provider")
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	cc := strings.ToLower(r.Header.Get("Cache-Control"))
	kid := r.URL.Query().Get("kid")
	revalidate := strings.Contains(cc, "no-cache") || strings.Contains(cc, "max-age=0")
	if !revalidate && kid != "" {
		if sj, err := s.m.JWKS(ctx, tenant, provider); err == nil {
			if _, ok := sj.Only(kid); !ok {
				revalidate = true
			}
		}
	}
	if revalidate {
		_ = s.m.Revalidate(ctx, tenant, provider) // answered from memory regardless
	}
	sj, err := s.m.JWKS(ctx, tenant, provider)
	switch {
	case errors.Is(err, jwkscache.ErrNotRegistered):
		stubErr(w, http.StatusNotFound, "not_found", err.Error())
		return
	case ctx.Err() != nil && r.Context().Err() == nil:
		w.Header().Set("Retry-After", "1")
		stubErr(w, http.StatusServiceUnavailable, "loading", "the first load is still running")
		return
	case err != nil:
		stubErr(w, http.StatusBadGateway, "no_keys", err.Error())
		return
	}
	if kid != "" {
		only, ok := sj.Only(kid)
		if !ok {
			stubErr(w, http.StatusNotFound, "not_found", "no key with this kid")
			return
		}
		sj = only
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("ETag", sj.ETag)
	h.Set("Last-Modified", sj.LastModified.UTC().Format(http.TimeFormat))
	h.Set("Cache-Control", fmt.Sprintf("max-age=%d", int(sj.ExpiresAt.Sub(sj.FetchedAt).Seconds())))
	h.Set("Age", strconv.Itoa(max(0, int(time.Since(sj.FetchedAt).Seconds()))))
	_, _ = w.Write(sj.Body)
}

func stubJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func stubErr(w http.ResponseWriter, status int, code, msg string) {
	stubJSON(w, status, map[string]string{"error": code, "message": msg})
}

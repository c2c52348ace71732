package controlplane

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/jwkscache/jwkscache"

	"github.com/jwkscache/jwkscache/internal/textcap"
)

// Error codes of ErrorResponse (api/openapi.yaml). They are stable.
const (
	codeInvalidRequest      = "invalid_request"
	codeInvalidRegistration = "invalid_registration"
	codeUnauthorized        = "unauthorized"
	codeNotFound            = "not_found"
	codeSecurityPolicy      = "security_policy"
	codeConflict            = "conflict"
	codeTooLarge            = "too_large"
	codeUnsupportedMedia    = "unsupported_media_type"
	codeNoKeys              = "no_keys"
	codeLoading             = "loading"
	codeNotReady            = "not_ready"
)

// errorResponse is the ErrorResponse schema.
type errorResponse struct {
	Error      string            `json:"error"`
	Message    string            `json:"message"`
	Details    map[string]string `json:"details,omitempty"`
	ErrorClass string            `json:"errorClass,omitempty"`
}

// Shared header values. net/http only reads them.
var (
	hdrJSON    = []string{"application/json"}
	hdrNoSniff = []string{"nosniff"}
	hdrNoStore = []string{"no-store"}
	hdrYAML    = []string{"application/yaml"}
)

// noStore sets the headers of every answer but a key set's: nosniff and
// Cache-Control: no-store.
func noStore(w http.ResponseWriter) {
	h := w.Header()
	h["X-Content-Type-Options"] = hdrNoSniff
	h["Cache-Control"] = hdrNoStore
}

// writeError answers an ErrorResponse. The message and details are capped;
// callers never put tokens, keys or request bodies in them.
func (h *Handler) writeError(w http.ResponseWriter, r *http.Request, status int, code, msg string, details map[string]string) {
	h.writeErrorClass(w, r, status, code, msg, details, "")
}

func (h *Handler) writeErrorClass(w http.ResponseWriter, _ *http.Request, status int, code, msg string, details map[string]string, class jwkscache.ErrorClass) {
	body := errorResponse{Error: code, Message: capText(msg, maxMessage), ErrorClass: string(class)}
	if body.Message == "" {
		body.Message = http.StatusText(status)
	}
	if len(details) > 0 {
		body.Details = make(map[string]string, min(len(details), maxDetails))
		keys := make([]string, 0, len(details))
		for k := range details {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i == maxDetails {
				break
			}
			body.Details[capText(k, 128)] = capText(details[k], maxMessage)
		}
	}
	b, err := json.Marshal(body)
	if err != nil { // cannot happen: strings only
		b = []byte(`{"error":"` + code + `","message":"error"}`)
	}
	noStore(w)
	hd := w.Header()
	hd["Content-Type"] = hdrJSON
	hd.Del("Etag")
	hd.Del("Last-Modified")
	hd.Del("Age")
	hd["Content-Length"] = []string{strconv.Itoa(len(b))}
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeJSON answers status with the JSON document b.
func writeJSON(w http.ResponseWriter, status int, b []byte) {
	noStore(w)
	hd := w.Header()
	hd["Content-Type"] = hdrJSON
	hd["Content-Length"] = []string{strconv.Itoa(len(b))}
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// managerError answers an error of the Manager about one provider that no
// operation-specific case handled: not registered is 404, a closed Manager
// 503 not_ready, and anything else is unexpected (logged, 503 not_ready).
func (h *Handler) managerError(w http.ResponseWriter, r *http.Request, tenant, provider string, err error) {
	switch {
	case errors.Is(err, jwkscache.ErrNotRegistered):
		h.notFound(w, r, tenant, provider)
	case errors.Is(err, jwkscache.ErrClosed):
		w.Header().Set("Retry-After", "1")
		h.writeError(w, r, http.StatusServiceUnavailable, codeNotReady, "the cache is shutting down", nil)
	default:
		if h.logger != nil {
			h.logger.LogAttrs(r.Context(), slog.LevelError, "controlplane: unexpected error",
				slog.String("method", capText(r.Method, 32)), slog.String("path", capText(r.URL.Path, 512)),
				slog.String("error", capText(err.Error(), maxMessage)))
		}
		w.Header().Set("Retry-After", "1")
		h.writeError(w, r, http.StatusServiceUnavailable, codeNotReady, "temporarily unavailable", nil)
	}
}

// capText returns s as valid UTF-8, cut at a rune boundary to at most
// about limit bytes, with a visible marker when cut.
func capText(s string, limit int) string { return textcap.Cap(s, limit) }

// quote quotes an identifier from a request for a message, capped.
func quote(s string) string { return strconv.Quote(capText(s, 64)) }

// joinDetails renders details as one message: "a: x; b: y", sorted.
func joinDetails(details map[string]string) string {
	keys := make([]string, 0, len(details))
	for k := range details {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString("; ")
		}
		if b.Len() > maxMessage {
			b.WriteString("…")
			break
		}
		b.WriteString(capText(k, 128))
		b.WriteString(": ")
		b.WriteString(capText(details[k], 256))
	}
	return b.String()
}

package jwkscache

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jwkscache/jwkscache/internal/testidp"
)

// syncBuffer is a bytes.Buffer safe for the Manager's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		out = append(out, rec)
	}
	return out
}

// Logs name the tenant, provider, URL and error class of what happened, and
// never carry key material or tokens.
func TestLoggingNamesProviderWithoutKeyMaterial(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp, keys := testidp.NewDefault()
		var buf syncBuffer
		m, err := New(Options{HTTPClient: idp.Client(), Logger: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		ctx := context.Background()
		const url = "https://idp.test/jwks.json"
		if err := m.Register(ctx, Registration{TenantID: "acme", ProviderID: "auth0", JWKSURL: url}); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Key(ctx, "acme", "auth0", keys[0].KID); err != nil {
			t.Fatal(err)
		}
		idp.SetFault(testidp.DefaultPath, testidp.Fault{Status: 503})
		if err := m.Refresh(ctx, "acme", "auth0"); err == nil {
			t.Fatal("Refresh succeeded against a failing IdP")
		}
		// A token with an unpublished kid goes through Keyfunc and makes
		// the engine refresh (and fail again, logging it): the token must
		// not reach the log.
		tok := testidp.NewKey("ES256", "ghost").Sign(jwt.MapClaims{"sub": "alice"})
		if _, err := jwt.Parse(tok, m.Keyfunc("acme", "auth0")); err == nil {
			t.Fatal("a token of an unpublished key verified")
		}

		recs := buf.records(t)
		var changed, failed map[string]any
		for _, r := range recs {
			switch r["msg"] {
			case "jwks keys changed":
				changed = r
			case "jwks refresh failed":
				failed = r
			}
		}
		if changed == nil || failed == nil {
			t.Fatalf("want a keys-changed and a refresh-failed record, got %v", recs)
		}
		for _, r := range []map[string]any{changed, failed} {
			if r["tenant"] != "acme" || r["provider"] != "auth0" || r["url"] != url {
				t.Errorf("record %v does not name acme/auth0 at %s", r["msg"], url)
			}
		}
		if failed["class"] != string(ClassStatus) || failed["level"] != "WARN" {
			t.Errorf("refresh-failed record: class=%v level=%v", failed["class"], failed["level"])
		}
		kids, _ := changed["kids"].([]any)
		if len(kids) != len(keys) {
			t.Errorf("keys-changed record lists kids %v, want %d", kids, len(keys))
		}

		// No key material: not the modulus, not an EC coordinate, not the
		// raw document, not a token.
		buf.mu.Lock()
		all := buf.b.String()
		buf.mu.Unlock()
		for _, k := range keys {
			raw, err := json.Marshal(k.Public)
			if err != nil {
				t.Fatal(err)
			}
			var members map[string]any
			json.Unmarshal(raw, &members)
			for _, name := range []string{"n", "x", "y"} {
				if v, ok := members[name].(string); ok && strings.Contains(all, v[:16]) {
					t.Errorf("log contains member %q of key %s", name, k.KID)
				}
			}
		}
		for _, part := range strings.Split(tok, ".") {
			if strings.Contains(all, part) {
				t.Errorf("log contains a part of the token: %.20s...", part)
			}
		}
	})
}

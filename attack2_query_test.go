package jwkscache

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// atk2RT answers every request with fn.
type atk2RT func(*http.Request) *http.Response

func (f atk2RT) RoundTrip(r *http.Request) (*http.Response, error) { return f(r), nil }

func atk2Resp(r *http.Request, status int, hdr map[string]string, body string) *http.Response {
	h := http.Header{}
	for k, v := range hdr {
		h.Set(k, v)
	}
	return &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader(body)), Request: r, ContentLength: int64(len(body))}
}

const atk2Secret = "SAS-SIG-s3cr3t"

// atk2Failures registers a provider answered by rt and returns the error of
// a cold lookup and the errors carried by refresh_failed events.
func atk2Failures(t *testing.T, rt http.RoundTripper, reg Registration) (evErrs []string, lookup error) {
	t.Helper()
	var mu sync.Mutex
	m, err := New(Options{HTTPClient: &http.Client{Transport: rt}, OnEvent: func(e Event) {
		if e.Err != nil {
			mu.Lock()
			evErrs = append(evErrs, e.Err.Error())
			mu.Unlock()
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Register(t.Context(), reg); err != nil {
		t.Fatal(err)
	}
	_, lookup = m.Key(t.Context(), reg.TenantID, reg.ProviderID, "k")
	for i := 0; i < 200; i++ {
		mu.Lock()
		n := len(evErrs)
		mu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]string(nil), evErrs...), lookup
}

func atk2CheckNoSecret(t *testing.T, lookup error, evErrs []string) {
	t.Helper()
	if lookup == nil {
		t.Fatal("lookup succeeded")
	}
	if strings.Contains(lookup.Error(), atk2Secret) {
		t.Errorf("lookup error shows the query string: %v", lookup)
	}
	if len(evErrs) == 0 {
		t.Fatal("no refresh_failed event")
	}
	for _, e := range evErrs {
		if strings.Contains(e, atk2Secret) {
			t.Errorf("event error shows the query string: %s", e)
		}
	}
}

// A redirect hop refused by the URL policy (http) is quoted with its query
// string in the cause (checkParsed shows u.Redacted(), which keeps the
// query), so FetchError.Error(), the lookup error and Event.Err show it.
func TestAttack2RefusedRedirectShowsQuery(t *testing.T) {
	rt := atk2RT(func(r *http.Request) *http.Response {
		return atk2Resp(r, http.StatusFound, map[string]string{"Location": "http://idp.test/keys?sig=" + atk2Secret}, "")
	})
	evs, lookup := atk2Failures(t, rt, Registration{TenantID: "t", ProviderID: "p", JWKSURL: "https://idp.test/jwks"})
	atk2CheckNoSecret(t, lookup, evs)
}

// A discovered jwks_uri that the policy refuses is quoted whole, query
// string included.
func TestAttack2RefusedDiscoveredJWKSURIShowsQuery(t *testing.T) {
	rt := atk2RT(func(r *http.Request) *http.Response {
		return atk2Resp(r, 200, map[string]string{"Content-Type": "application/json"},
			`{"issuer":"https://idp.test","jwks_uri":"http://idp.test/keys?sig=`+atk2Secret+`"}`)
	})
	evs, lookup := atk2Failures(t, rt, Registration{TenantID: "t", ProviderID: "p", Issuer: "https://idp.test"})
	atk2CheckNoSecret(t, lookup, evs)
}

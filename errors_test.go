package jwkscache

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// sentinels are every exported sentinel error, for checking that an error
// matches exactly the expected ones.
var sentinels = map[string]error{
	"ErrNotRegistered":       ErrNotRegistered,
	"ErrKeyNotFound":         ErrKeyNotFound,
	"ErrInvalidRegistration": ErrInvalidRegistration,
	"ErrSecurityPolicy":      ErrSecurityPolicy,
	"ErrUpstream":            ErrUpstream,
	"ErrNoKeys":              ErrNoKeys,
	"ErrKeyDenied":           ErrKeyDenied,
	"ErrTooLarge":            ErrTooLarge,
	"ErrClosed":              ErrClosed,
}

// wantSentinels fails unless err matches exactly the named sentinels.
func wantSentinels(t *testing.T, err error, want ...string) {
	t.Helper()
	set := make(map[string]bool)
	for _, w := range want {
		set[w] = true
	}
	for name, s := range sentinels {
		if got := errors.Is(err, s); got != set[name] {
			t.Errorf("errors.Is(%v, %s) = %v, want %v", err, name, got, set[name])
		}
	}
}

func TestFetchErrorIs(t *testing.T) {
	cause := errors.New("the cause")
	for _, c := range []struct {
		name  string
		class ErrorClass
		err   error
		want  []string
	}{
		{"timeout", ClassTimeout, cause, []string{"ErrUpstream"}},
		{"tls", ClassTLS, cause, []string{"ErrUpstream"}},
		{"pin", ClassPin, cause, []string{"ErrSecurityPolicy"}},
		{"blocked address", ClassBlockedAddress, cause, []string{"ErrSecurityPolicy"}},
		{"too many redirects", ClassRedirect, fmt.Errorf("%w: stopped", errTooManyRedirects), []string{"ErrUpstream"}},
		{"policy-refused redirect", ClassRedirect, fmt.Errorf("%w: %w", errPolicyHop, &policyError{"http refused"}), []string{"ErrSecurityPolicy"}},
		{"policy-refused redirect, plain cause", ClassRedirect, fmt.Errorf("%w: bad scheme", errPolicyHop), []string{"ErrSecurityPolicy"}},
		{"too large", ClassTooLarge, cause, []string{"ErrTooLarge"}},
		{"parse", ClassParse, cause, []string{"ErrUpstream"}},
		{"no keys", ClassNoKeys, fmt.Errorf("%w: 2 keys skipped", ErrNoKeys), []string{"ErrNoKeys"}},
		{"no keys, plain cause", ClassNoKeys, cause, []string{"ErrNoKeys"}},
		{"status", ClassStatus, cause, []string{"ErrUpstream"}},
		{"network", ClassNetwork, cause, []string{"ErrUpstream"}},
		// A policy refusal inside a parse failure (a discovery document's
		// jwks_uri) matches through the wrapped cause as documented.
		{"parse wrapping policy", ClassParse, fmt.Errorf("jwks_uri: %w", &policyError{"http refused"}), []string{"ErrUpstream", "ErrSecurityPolicy"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			fe := &FetchError{TenantID: "acme", ProviderID: "auth0", URL: "https://idp.test/jwks.json", Class: c.class, Err: c.err}
			wantSentinels(t, fe, c.want...)
			if !errors.Is(fe, c.err) {
				t.Errorf("errors.Is(fe, cause) = false")
			}
			// Wrapping keeps the matches.
			wrapped := fmt.Errorf("refresh: %w", fe)
			wantSentinels(t, wrapped, c.want...)
			var got *FetchError
			if !errors.As(wrapped, &got) || got != fe {
				t.Errorf("errors.As through a wrapper failed")
			}
		})
	}
}

func TestFetchErrorText(t *testing.T) {
	for _, c := range []struct {
		fe   FetchError
		want string
	}{
		{
			FetchError{TenantID: "acme", ProviderID: "auth0", URL: "https://idp.test/jwks.json", Class: ClassStatus,
				StatusCode: http.StatusServiceUnavailable, Err: errors.New(`unexpected status "503 Service Unavailable"`)},
			`jwkscache: acme/auth0: fetch https://idp.test/jwks.json: status 503: unexpected status "503 Service Unavailable"`,
		},
		{
			FetchError{TenantID: "t-1", ProviderID: "p_2", URL: "https://idp.test/x", Class: ClassTimeout, Err: errors.New("context deadline exceeded")},
			"jwkscache: t-1/p_2: fetch https://idp.test/x: timeout: context deadline exceeded",
		},
		{
			FetchError{TenantID: "acme", ProviderID: "auth0", URL: "https://idp.test/x", Class: ClassNetwork},
			"jwkscache: acme/auth0: fetch https://idp.test/x: network",
		},
	} {
		if got := c.fe.Error(); got != c.want {
			t.Errorf("Error() =\n  %s\nwant\n  %s", got, c.want)
		}
	}
}

func TestProviderErrorText(t *testing.T) {
	for _, c := range []struct {
		pe   ProviderError
		want string
	}{
		{
			ProviderError{TenantID: "acme", ProviderID: "auth0", URL: "https://idp.test/jwks.json", Op: "key", Err: ErrKeyNotFound},
			"jwkscache: acme/auth0 (https://idp.test/jwks.json): key: key not found",
		},
		{
			ProviderError{TenantID: "acme", ProviderID: "auth0", Op: "resolve", Err: ErrNotRegistered},
			"jwkscache: acme/auth0: resolve: provider not registered",
		},
		{
			ProviderError{TenantID: "acme", ProviderID: "auth0", Err: errors.New("boom")},
			"jwkscache: acme/auth0: boom",
		},
		{
			ProviderError{TenantID: "acme", ProviderID: "auth0"},
			"jwkscache: acme/auth0",
		},
	} {
		if got := c.pe.Error(); got != c.want {
			t.Errorf("Error() = %q, want %q", got, c.want)
		}
	}
	pe := &ProviderError{TenantID: "acme", ProviderID: "auth0", Op: "key", Err: ErrKeyNotFound}
	wantSentinels(t, pe, "ErrKeyNotFound")
	if errors.Unwrap(pe) != ErrKeyNotFound {
		t.Errorf("Unwrap = %v", errors.Unwrap(pe))
	}
}

func TestNoKeysErrorMatchesBoth(t *testing.T) {
	fe := &FetchError{TenantID: "acme", ProviderID: "auth0", URL: "https://idp.test/jwks.json", Class: ClassStatus, StatusCode: 503, Err: errors.New("unexpected status")}
	err := error(&noKeysError{cause: fe})
	wantSentinels(t, err, "ErrNoKeys", "ErrUpstream")
	var got *FetchError
	if !errors.As(err, &got) || got.StatusCode != 503 {
		t.Errorf("errors.As(*FetchError) failed")
	}
	// The cause's own "jwkscache: " prefix is not repeated.
	if want := ErrNoKeys.Error() + ": " + strings.TrimPrefix(fe.Error(), "jwkscache: "); err.Error() != want {
		t.Errorf("Error() = %q", err.Error())
	}

	blocked := &FetchError{TenantID: "acme", ProviderID: "auth0", URL: "https://idp.test/jwks.json", Class: ClassBlockedAddress, Err: errors.New("address 127.0.0.1 is loopback")}
	err = &ProviderError{TenantID: "acme", ProviderID: "auth0", Op: "key", Err: &noKeysError{cause: blocked}}
	// The design's promise: a lookup on a provider blocked by the address
	// policy wraps both ErrNoKeys and ErrSecurityPolicy.
	wantSentinels(t, err, "ErrNoKeys", "ErrSecurityPolicy")

	err = &noKeysError{}
	wantSentinels(t, err, "ErrNoKeys")
	if err.Error() != ErrNoKeys.Error() {
		t.Errorf("Error() = %q, want %q", err.Error(), ErrNoKeys.Error())
	}
}

func TestErrorClassValuesStable(t *testing.T) {
	// The classes are metric labels and status fields: their values are
	// part of the contract (design section 8).
	for class, want := range map[ErrorClass]string{
		ClassTimeout: "timeout", ClassTLS: "tls", ClassPin: "pin", ClassBlockedAddress: "blocked_address",
		ClassRedirect: "redirect", ClassTooLarge: "too_large", ClassParse: "parse", ClassNoKeys: "no_keys",
		ClassStatus: "status", ClassNetwork: "network",
	} {
		if string(class) != want {
			t.Errorf("class %q, want %q", class, want)
		}
	}
}

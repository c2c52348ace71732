package jwkscache

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/netip"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

// validRegistration is a registration that passes Validate; tests change
// one thing at a time.
func validRegistration() Registration {
	return Registration{TenantID: "acme", ProviderID: "auth0", JWKSURL: "https://acme.eu.auth0.com/.well-known/jwks.json"}
}

func TestRegistrationDefaults(t *testing.T) {
	d := Registration{}.WithDefaults()
	tests := []struct {
		field     string
		got, want any
	}{
		{"TenantID", d.TenantID, ""},
		{"ProviderID", d.ProviderID, ""},
		{"JWKSURL", d.JWKSURL, ""},
		{"Issuer", d.Issuer, ""},
		{"AllowHTTP", d.AllowHTTP, false},
		{"AllowedDomains", d.AllowedDomains, []string(nil)},
		{"RefreshEarly", d.RefreshEarly, 30 * time.Second},
		{"StaleWhileError", d.StaleWhileError, time.Hour},
		{"MinTTL", d.MinTTL, 30 * time.Second},
		{"MaxTTL", d.MaxTTL, 24 * time.Hour},
		{"MaxResponseBytes", d.MaxResponseBytes, int64(1 << 20)},
		{"NegativeCacheTTL", d.NegativeCacheTTL, 30 * time.Second},
		{"MaxRedirects", d.MaxRedirects, 3},
		{"PinnedSPKI", d.PinnedSPKI, []string(nil)},
		{"PrefetchJitter", d.PrefetchJitter, 5 * time.Second},
		{"Retry.MaxRetries", d.Retry.MaxRetries, 2},
		{"Retry.AttemptTimeout", d.Retry.AttemptTimeout, 3 * time.Second},
		{"Retry.InitialBackoff", d.Retry.InitialBackoff, 250 * time.Millisecond},
		{"Retry.MaxBackoff", d.Retry.MaxBackoff, 2 * time.Second},
		{"Retry.Deadline", d.Retry.Deadline, 8 * time.Second},
		{"Retry.Jitter", d.Retry.Jitter, JitterFull},
		{"DefaultTTL", DefaultTTL, 10 * time.Minute},
		{"attempts", d.Retry.attempts(), 3},
		{"staleWindow", d.staleWindow(), time.Hour},
		{"jitterWindow", d.jitterWindow(), 5 * time.Second},
		{"redirectLimit", d.redirectLimit(), 3},
	}
	for _, tt := range tests {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("%s = %#v, want %#v", tt.field, tt.got, tt.want)
		}
	}
	// Every field of the type is in the table (a new field needs a default).
	if n := reflect.TypeFor[Registration]().NumField() + reflect.TypeFor[RetryPolicy]().NumField() - 1; n != 21 {
		t.Errorf("Registration and RetryPolicy have %d fields; update the table", n)
	}
}

func TestRegistrationWithDefaultsKeeps(t *testing.T) {
	off := Registration{StaleWhileError: -1, PrefetchJitter: -1, MaxRedirects: -1, Retry: RetryPolicy{MaxRetries: -1}}.WithDefaults()
	if off.StaleWhileError != -1 || off.PrefetchJitter != -1 || off.MaxRedirects != -1 || off.Retry.MaxRetries != -1 {
		t.Errorf("off values not kept: %+v", off)
	}
	if off.staleWindow() != 0 || off.jitterWindow() != 0 || off.redirectLimit() != 0 || off.Retry.attempts() != 1 {
		t.Errorf("effective off values: stale %v jitter %v redirects %d attempts %d",
			off.staleWindow(), off.jitterWindow(), off.redirectLimit(), off.Retry.attempts())
	}
	set := fullRegistration()
	if got := set.WithDefaults(); !reflect.DeepEqual(got, set) {
		t.Errorf("WithDefaults changed set fields:\n got %+v\nwant %+v", got, set)
	}
	// WithDefaults is idempotent.
	d := validRegistration().WithDefaults()
	if !reflect.DeepEqual(d.WithDefaults(), d) {
		t.Error("WithDefaults is not idempotent")
	}
}

func TestRegistrationWithDefaultsDoesNotAlias(t *testing.T) {
	in := Registration{AllowedDomains: []string{"example.com"}, PinnedSPKI: []string{"pin"}}
	out := in.WithDefaults()
	out.AllowedDomains[0] = "evil.example"
	out.PinnedSPKI[0] = "other"
	if in.AllowedDomains[0] != "example.com" || in.PinnedSPKI[0] != "pin" {
		t.Errorf("changing the result changed the caller's slices: %q %q", in.AllowedDomains, in.PinnedSPKI)
	}
	in.AllowedDomains[0] = "changed.example"
	if out.AllowedDomains[0] != "evil.example" {
		t.Error("changing the caller's slice changed the result")
	}
	// Appending to the result must not write into spare capacity of the
	// caller's array either.
	backing := make([]string, 1, 4)
	backing[0] = "example.com"
	out = Registration{AllowedDomains: backing}.WithDefaults()
	out.AllowedDomains = append(out.AllowedDomains, "x.example")
	if got := backing[:2][1]; got != "" {
		t.Errorf("append wrote into the caller's array: %q", got)
	}
}

// pin32 is a 32-byte digest whose base64 forms use every special
// character: '+' and '/' (std), '-' and '_' (url) and '=' padding.
var pin32 = func() []byte {
	b := bytes.Repeat([]byte{0xfb, 0xff, 0xbf}, 11)[:32]
	return b
}()

func TestRegistrationValidateRules(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		name     string
		change   func(r *Registration)
		field    string // "" when valid
		security bool
	}{
		{"valid", func(r *Registration) {}, "", false},
		{"tenant required", func(r *Registration) { r.TenantID = "" }, "tenantId", false},
		{"tenant 64 chars", func(r *Registration) { r.TenantID = long }, "", false},
		{"tenant 65 chars", func(r *Registration) { r.TenantID = long + "a" }, "tenantId", false},
		{"tenant charset", func(r *Registration) { r.TenantID = "Acme-01" }, "", false},
		{"tenant underscore", func(r *Registration) { r.TenantID = "acme_corp" }, "tenantId", false},
		{"tenant dot", func(r *Registration) { r.TenantID = "acme.corp" }, "tenantId", false},
		{"tenant slash", func(r *Registration) { r.TenantID = "acme/x" }, "tenantId", false},
		{"tenant non-ASCII", func(r *Registration) { r.TenantID = "ácme" }, "tenantId", false},
		{"tenant space", func(r *Registration) { r.TenantID = "ac me" }, "tenantId", false},
		{"provider required", func(r *Registration) { r.ProviderID = "" }, "providerId", false},
		{"provider 64 chars", func(r *Registration) { r.ProviderID = long }, "", false},
		{"provider 65 chars", func(r *Registration) { r.ProviderID = long + "a" }, "providerId", false},
		{"provider underscore", func(r *Registration) { r.ProviderID = "auth0_prod-EU" }, "", false},
		{"provider dot", func(r *Registration) { r.ProviderID = "auth0.prod" }, "providerId", false},
		{"provider percent", func(r *Registration) { r.ProviderID = "a%2Fb" }, "providerId", false},

		{"jwksUrl required", func(r *Registration) { r.JWKSURL = "" }, "jwksUrl", false},
		{"issuer instead of jwksUrl", func(r *Registration) { r.JWKSURL, r.Issuer = "", "https://acme.eu.auth0.com/" }, "", false},
		{"issuer http", func(r *Registration) { r.JWKSURL, r.Issuer = "", "http://acme.eu.auth0.com/" }, "issuer", true},
		{"issuer relative", func(r *Registration) { r.JWKSURL, r.Issuer = "", "acme.eu.auth0.com" }, "issuer", false},
		{"http refused", func(r *Registration) { r.JWKSURL = "http://acme.eu.auth0.com/jwks" }, "jwksUrl", true},
		{"http with AllowHTTP", func(r *Registration) { r.JWKSURL, r.AllowHTTP = "http://acme.eu.auth0.com/jwks", true }, "", false},
		{"upper-case scheme", func(r *Registration) { r.JWKSURL = "HTTPS://acme.eu.auth0.com/jwks" }, "", false},
		{"other scheme", func(r *Registration) { r.JWKSURL = "ftp://acme.eu.auth0.com/jwks" }, "jwksUrl", false},
		{"file scheme", func(r *Registration) { r.JWKSURL = "file:///etc/passwd" }, "jwksUrl", false},
		{"relative", func(r *Registration) { r.JWKSURL = "/.well-known/jwks.json" }, "jwksUrl", false},
		{"no host", func(r *Registration) { r.JWKSURL = "https:///jwks" }, "jwksUrl", false},
		{"opaque", func(r *Registration) { r.JWKSURL = "https:acme.eu.auth0.com" }, "jwksUrl", false},
		{"port only", func(r *Registration) { r.JWKSURL = "https://:443/jwks" }, "jwksUrl", false},
		{"unparsable", func(r *Registration) { r.JWKSURL = "https://acme.example/%zz" }, "jwksUrl", false},
		{"control character", func(r *Registration) { r.JWKSURL = "https://acme.example/\n" }, "jwksUrl", false},
		{"userinfo", func(r *Registration) { r.JWKSURL = "https://user:secret@acme.eu.auth0.com/jwks" }, "jwksUrl", true},
		{"user only", func(r *Registration) { r.JWKSURL = "https://user@acme.eu.auth0.com/jwks" }, "jwksUrl", true},
		{"IPv4 literal", func(r *Registration) { r.JWKSURL = "https://10.0.0.1/jwks" }, "jwksUrl", true},
		{"IPv4 public literal", func(r *Registration) { r.JWKSURL = "https://8.8.8.8/jwks" }, "jwksUrl", true},
		{"IPv6 literal", func(r *Registration) { r.JWKSURL = "https://[::1]:8443/jwks" }, "jwksUrl", true},
		{"IPv4-mapped IPv6 literal", func(r *Registration) { r.JWKSURL = "https://[::ffff:169.254.169.254]/jwks" }, "jwksUrl", true},
		{"port", func(r *Registration) { r.JWKSURL = "https://acme.eu.auth0.com:8443/jwks" }, "", false},

		{"domain equal", func(r *Registration) { r.AllowedDomains = []string{"acme.eu.auth0.com"} }, "", false},
		{"domain suffix", func(r *Registration) { r.AllowedDomains = []string{"auth0.com"} }, "", false},
		{"domain suffix needs a dot", func(r *Registration) {
			r.JWKSURL, r.AllowedDomains = "https://badexample.com/jwks", []string{"example.com"}
		}, "jwksUrl", true},
		{"domain subdomain passes", func(r *Registration) {
			r.JWKSURL, r.AllowedDomains = "https://a.example.com/jwks", []string{"example.com"}
		}, "", false},
		{"domain apex passes", func(r *Registration) {
			r.JWKSURL, r.AllowedDomains = "https://example.com/jwks", []string{"example.com"}
		}, "", false},
		{"domain as a prefix does not pass", func(r *Registration) {
			r.JWKSURL, r.AllowedDomains = "https://example.com.evil.net/jwks", []string{"example.com"}
		}, "jwksUrl", true},
		{"host case ignored", func(r *Registration) {
			r.JWKSURL, r.AllowedDomains = "https://A.Example.COM/jwks", []string{"example.com"}
		}, "", false},
		{"host trailing dot", func(r *Registration) {
			r.JWKSURL, r.AllowedDomains = "https://a.example.com./jwks", []string{"example.com"}
		}, "", false},
		{"host outside", func(r *Registration) { r.AllowedDomains = []string{"okta.com", "example.com"} }, "jwksUrl", true},
		{"issuer host outside", func(r *Registration) {
			r.JWKSURL, r.Issuer, r.AllowedDomains = "", "https://evil.example/", []string{"auth0.com"}
		}, "issuer", true},
		{"domain upper-case", func(r *Registration) { r.AllowedDomains = []string{"auth0.com", "Example.com"} }, "allowedDomains[1]", false},
		{"domain trailing dot", func(r *Registration) { r.AllowedDomains = []string{"auth0.com", "example.com."} }, "allowedDomains[1]", false},
		{"domain leading dot", func(r *Registration) { r.AllowedDomains = []string{"auth0.com", ".example.com"} }, "allowedDomains[1]", false},
		{"domain empty", func(r *Registration) { r.AllowedDomains = []string{"auth0.com", ""} }, "allowedDomains[1]", false},
		{"domain wildcard", func(r *Registration) { r.AllowedDomains = []string{"auth0.com", "*.example.com"} }, "allowedDomains[1]", false},
		{"domain URL", func(r *Registration) { r.AllowedDomains = []string{"auth0.com", "https://example.com"} }, "allowedDomains[1]", false},

		{"minTtl 30s", func(r *Registration) { r.MinTTL = 30 * time.Second }, "", false},
		{"minTtl 29s", func(r *Registration) { r.MinTTL = 29 * time.Second }, "minTtl", false},
		{"minTtl negative", func(r *Registration) { r.MinTTL = -time.Minute }, "minTtl", false},
		{"maxTtl below minTtl", func(r *Registration) { r.MinTTL, r.MaxTTL = time.Hour, 30*time.Minute }, "maxTtl", false},
		{"maxTtl equal minTtl", func(r *Registration) { r.MinTTL, r.MaxTTL = time.Hour, time.Hour }, "", false},
		{"maxTtl below default minTtl", func(r *Registration) { r.MaxTTL = 10 * time.Second }, "maxTtl", false},
		{"minTtl above default maxTtl", func(r *Registration) { r.MinTTL = 25 * time.Hour }, "maxTtl", false},
		{"refreshEarly 1s", func(r *Registration) { r.RefreshEarly = time.Second }, "", false},
		{"refreshEarly below 1s", func(r *Registration) { r.RefreshEarly = 999 * time.Millisecond }, "refreshEarly", false},
		{"refreshEarly negative", func(r *Registration) { r.RefreshEarly = -time.Second }, "refreshEarly", false},
		{"maxResponseBytes negative", func(r *Registration) { r.MaxResponseBytes = -1 }, "maxResponseBytes", false},
		{"maxResponseBytes 1", func(r *Registration) { r.MaxResponseBytes = 1 }, "", false},
		{"negativeCacheTtl 1s", func(r *Registration) { r.NegativeCacheTTL = time.Second }, "", false},
		{"negativeCacheTtl below 1s", func(r *Registration) { r.NegativeCacheTTL = 500 * time.Millisecond }, "negativeCacheTtl", false},
		{"negativeCacheTtl negative", func(r *Registration) { r.NegativeCacheTTL = -time.Second }, "negativeCacheTtl", false},
		{"maxRedirects 10", func(r *Registration) { r.MaxRedirects = 10 }, "", false},
		{"maxRedirects 11", func(r *Registration) { r.MaxRedirects = 11 }, "maxRedirects", false},
		{"maxRedirects off", func(r *Registration) { r.MaxRedirects = -1 }, "", false},
		{"staleWhileError off", func(r *Registration) { r.StaleWhileError = -1 }, "", false},
		{"prefetchJitter off", func(r *Registration) { r.PrefetchJitter = -time.Second }, "", false},
		{"prefetchJitter large", func(r *Registration) { r.PrefetchJitter = time.Hour }, "", false},

		{"pin std padded", func(r *Registration) { r.PinnedSPKI = []string{base64.StdEncoding.EncodeToString(pin32)} }, "", false},
		{"pin std unpadded", func(r *Registration) { r.PinnedSPKI = []string{base64.RawStdEncoding.EncodeToString(pin32)} }, "", false},
		{"pin url padded", func(r *Registration) { r.PinnedSPKI = []string{base64.URLEncoding.EncodeToString(pin32)} }, "", false},
		{"pin url unpadded", func(r *Registration) { r.PinnedSPKI = []string{base64.RawURLEncoding.EncodeToString(pin32)} }, "", false},
		{"pin of a real SPKI digest", func(r *Registration) {
			sum := sha256.Sum256([]byte("spki"))
			r.PinnedSPKI = []string{base64.StdEncoding.EncodeToString(sum[:])}
		}, "", false},
		{"pin 31 bytes", func(r *Registration) { r.PinnedSPKI = []string{base64.StdEncoding.EncodeToString(pin32[:31])} }, "pinnedSpki", false},
		{"pin 33 bytes", func(r *Registration) {
			r.PinnedSPKI = []string{base64.StdEncoding.EncodeToString(append(pin32[:32:32], 0))}
		}, "pinnedSpki", false},
		{"pin hex", func(r *Registration) { r.PinnedSPKI = []string{strings.Repeat("ab", 32)} }, "pinnedSpki", false},
		{"pin not base64", func(r *Registration) { r.PinnedSPKI = []string{"not base64!"} }, "pinnedSpki", false},
		{"pin empty", func(r *Registration) { r.PinnedSPKI = []string{""} }, "pinnedSpki", false},
		{"second pin bad", func(r *Registration) {
			r.PinnedSPKI = []string{base64.StdEncoding.EncodeToString(pin32), "AAAA"}
		}, "pinnedSpki", false},

		{"maxRetries 10", func(r *Registration) { r.Retry.MaxRetries = 10 }, "", false},
		{"maxRetries 11", func(r *Registration) { r.Retry.MaxRetries = 11 }, "retryPolicy.maxRetries", false},
		{"maxRetries off", func(r *Registration) { r.Retry.MaxRetries = -1 }, "", false},
		{"attemptTimeout negative", func(r *Registration) { r.Retry.AttemptTimeout = -time.Second }, "retryPolicy.attemptTimeout", false},
		{"initialBackoff negative", func(r *Registration) { r.Retry.InitialBackoff = -time.Second }, "retryPolicy.initialBackoff", false},
		{"maxBackoff below initialBackoff", func(r *Registration) { r.Retry.InitialBackoff = 3 * time.Second }, "retryPolicy.maxBackoff", false},
		{"maxBackoff equal initialBackoff", func(r *Registration) {
			r.Retry.InitialBackoff, r.Retry.MaxBackoff = time.Second, time.Second
		}, "", false},
		{"deadline below attemptTimeout", func(r *Registration) { r.Retry.AttemptTimeout = 10 * time.Second }, "retryPolicy.deadline", false},
		{"deadline equal attemptTimeout", func(r *Registration) {
			r.Retry.AttemptTimeout, r.Retry.Deadline = 5*time.Second, 5*time.Second
		}, "", false},
		{"jitter none", func(r *Registration) { r.Retry.Jitter = JitterNone }, "", false},
		{"jitter full", func(r *Registration) { r.Retry.Jitter = JitterFull }, "", false},
		{"jitter decorrelated", func(r *Registration) { r.Retry.Jitter = JitterDecorrelated }, "", false},
		{"jitter unknown", func(r *Registration) { r.Retry.Jitter = "random" }, "retryPolicy.jitter", false},
		{"jitter case", func(r *Registration) { r.Retry.Jitter = "Full" }, "retryPolicy.jitter", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := validRegistration()
			tt.change(&r)
			err := r.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			var re *RegistrationError
			if !errors.As(err, &re) {
				t.Fatalf("Validate() = %v, want a *RegistrationError", err)
			}
			if len(re.Fields) != 1 || re.Fields[0].Field != tt.field || re.Fields[0].Security != tt.security {
				t.Fatalf("fields = %+v, want one on %s (security %v)", re.Fields, tt.field, tt.security)
			}
			if errors.Is(err, ErrSecurityPolicy) != tt.security || errors.Is(err, ErrInvalidRegistration) == tt.security {
				t.Errorf("errors.Is: security %v, invalid %v; want security %v",
					errors.Is(err, ErrSecurityPolicy), errors.Is(err, ErrInvalidRegistration), tt.security)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "jwkscache: registration "+r.TenantID+"/"+r.ProviderID+": "+tt.field+": ") {
				t.Errorf("message %q does not name the registration and the field", msg)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("message leaks the URL password: %q", err)
			}
		})
	}
}

// TestRegistrationValidateEveryField: one error lists every bad field.
func TestRegistrationValidateEveryField(t *testing.T) {
	r := Registration{
		TenantID:     "acme corp",
		ProviderID:   "auth0",
		JWKSURL:      "http://acme.eu.auth0.com/jwks",
		MinTTL:       time.Second,
		MaxRedirects: 11,
		Retry:        RetryPolicy{Jitter: "sometimes"},
	}
	err := r.Validate()
	var re *RegistrationError
	if !errors.As(err, &re) {
		t.Fatalf("Validate() = %v", err)
	}
	want := []FieldError{
		{Field: "tenantId"}, {Field: "jwksUrl", Security: true}, {Field: "minTtl"}, {Field: "maxRedirects"}, {Field: "retryPolicy.jitter"},
	}
	if len(re.Fields) != len(want) {
		t.Fatalf("got %d field errors %+v, want %d", len(re.Fields), re.Fields, len(want))
	}
	for i, f := range re.Fields {
		if f.Field != want[i].Field || f.Security != want[i].Security || f.Message == "" {
			t.Errorf("field %d = %+v, want %+v with a message", i, f, want[i])
		}
		if !strings.Contains(err.Error(), f.Field+": ") {
			t.Errorf("message does not name %s: %q", f.Field, err)
		}
	}
	if !errors.Is(err, ErrInvalidRegistration) || !errors.Is(err, ErrSecurityPolicy) {
		t.Error("a mixed error must match both ErrInvalidRegistration and ErrSecurityPolicy")
	}
	if errors.Is(err, ErrNoKeys) || errors.Is(err, ErrUpstream) {
		t.Error("the error matches an unrelated sentinel")
	}
	// Validate does not change the caller's registration.
	if r.RefreshEarly != 0 || r.Retry.MaxRetries != 0 {
		t.Error("Validate applied defaults to the caller's value")
	}
}

// fullRegistration sets every field, with "off" where allowed.
func fullRegistration() Registration {
	return Registration{
		TenantID:         "acme",
		ProviderID:       "okta_prod",
		JWKSURL:          "https://acme.okta.com/oauth2/v1/keys",
		Issuer:           "https://acme.okta.com",
		AllowHTTP:        true,
		AllowedDomains:   []string{"okta.com", "oktapreview.com"},
		RefreshEarly:     45 * time.Second,
		StaleWhileError:  -1,
		MinTTL:           time.Minute,
		MaxTTL:           12 * time.Hour,
		MaxResponseBytes: 512 << 10,
		NegativeCacheTTL: 10 * time.Second,
		MaxRedirects:     -1,
		PinnedSPKI:       []string{base64.StdEncoding.EncodeToString(pin32), base64.RawURLEncoding.EncodeToString(pin32)},
		PrefetchJitter:   -1,
		Retry: RetryPolicy{
			MaxRetries:     -1,
			AttemptTimeout: 1500 * time.Millisecond,
			InitialBackoff: 100 * time.Millisecond,
			MaxBackoff:     time.Second,
			Deadline:       5 * time.Second,
			Jitter:         JitterDecorrelated,
		},
	}
}

func TestRegistrationJSONRoundTrip(t *testing.T) {
	on := fullRegistration()
	on.StaleWhileError, on.MaxRedirects, on.PrefetchJitter, on.Retry.MaxRetries = 2*time.Hour, 5, 250*time.Millisecond, 4
	on.MaxTTL = 2600*time.Hour + time.Nanosecond // needs exact duration parsing
	for name, r := range map[string]Registration{
		"off":      fullRegistration(),
		"on":       on,
		"defaults": validRegistration(),
		"zero":     {},
	} {
		t.Run(name, func(t *testing.T) {
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			var got Registration
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatalf("Unmarshal(%s): %v", b, err)
			}
			if !reflect.DeepEqual(got, r) {
				t.Errorf("round trip through %s:\n got %+v\nwant %+v", b, got, r)
			}
			// A pointer marshals the same way.
			if bp, _ := json.Marshal(&r); !bytes.Equal(bp, b) {
				t.Errorf("json.Marshal(&r) = %s, want %s", bp, b)
			}
		})
	}
}

func TestRegistrationJSONText(t *testing.T) {
	r := Registration{
		TenantID:        "acme",
		ProviderID:      "auth0",
		JWKSURL:         "https://acme.eu.auth0.com/.well-known/jwks.json",
		StaleWhileError: -1,
		MinTTL:          30 * time.Second,
		MaxTTL:          24 * time.Hour,
		PrefetchJitter:  250 * time.Millisecond,
		MaxRedirects:    -7, // any negative value is "off", written 0
		Retry:           RetryPolicy{InitialBackoff: 250 * time.Millisecond, MaxRetries: -1},
	}
	const want = `{"tenantId":"acme","providerId":"auth0","jwksUrl":"https://acme.eu.auth0.com/.well-known/jwks.json",` +
		`"staleWhileError":"PT0S","minTtl":"PT30S","maxTtl":"PT24H","maxRedirects":0,"prefetchJitter":"PT0.25S",` +
		`"retryPolicy":{"maxRetries":0,"initialBackoff":"PT0.25S"}}`
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != want {
		t.Errorf("Marshal =\n%s\nwant\n%s", b, want)
	}
	if b, _ := json.Marshal(Registration{}); string(b) != "{}" {
		t.Errorf("zero Registration = %s, want {}", b)
	}
	full, _ := json.Marshal(fullRegistration())
	for _, key := range []string{"tenantId", "providerId", "jwksUrl", "issuer", "allowHttp", "allowedDomains", "refreshEarly",
		"staleWhileError", "minTtl", "maxTtl", "maxResponseBytes", "negativeCacheTtl", "maxRedirects", "pinnedSpki",
		"prefetchJitter", "retryPolicy", "maxRetries", "attemptTimeout", "initialBackoff", "maxBackoff", "deadline", "jitter"} {
		if !bytes.Contains(full, []byte(`"`+key+`":`)) {
			t.Errorf("JSON lacks %q: %s", key, full)
		}
	}

	var got Registration
	if err := json.Unmarshal([]byte(want), &got); err != nil {
		t.Fatal(err)
	}
	r.MaxRedirects = -1 // read back as the canonical "off"
	if !reflect.DeepEqual(got, r) {
		t.Errorf("Unmarshal = %+v, want %+v", got, r)
	}
}

func TestRegistrationJSONRefused(t *testing.T) {
	tests := []struct {
		name, in string
		mention  string // a substring the error must contain
	}{
		{"unknown field", `{"tenantId":"acme","minTtlSeconds":30}`, `"minTtlSeconds"`},
		{"unknown retry field", `{"retryPolicy":{"maxAttempts":3}}`, `"maxAttempts"`},
		{"Go field name with its own spelling", `{"JWKSURLs":"x"}`, `"JWKSURLs"`},
		{"bad duration", `{"minTtl":"30s"}`, `"30s"`},
		{"years", `{"maxTtl":"P1Y"}`, `"P1Y"`},
		{"negative duration", `{"refreshEarly":"-PT1S"}`, `"-PT1S"`},
		{"duration as a number", `{"minTtl":30}`, "ISO-8601"},
		{"duration null is the default", `{"minTtl":null,"x":1}`, `"x"`},
		{"wrong type", `{"maxRedirects":"3"}`, "maxRedirects"},
		{"allowHttp string", `{"allowHttp":"true"}`, "allowHttp"},
		{"not an object", `["acme"]`, ""},
		{"trailing object", `{"tenantId":"acme"} {"tenantId":"evil"}`, "trailing"},
		{"trailing garbage", `{"tenantId":"acme"} x`, "trailing"},
		// Regression: dec.More() is false before '}' and ']', so these
		// trailing bytes were accepted.
		{"trailing brace", `{"tenantId":"acme"}}`, "trailing"},
		{"trailing bracket", `{"tenantId":"acme"}]`, "trailing"},
		{"truncated", `{"tenantId":"acme"`, ""},
		{"empty", ``, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r Registration
			err := r.UnmarshalJSON([]byte(tt.in))
			if err == nil {
				t.Fatalf("UnmarshalJSON(%s) succeeded: %+v", tt.in, r)
			}
			if !errors.Is(err, ErrInvalidRegistration) {
				t.Errorf("error %v does not match ErrInvalidRegistration", err)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("error %q does not mention %s", err, tt.mention)
			}
			if !reflect.DeepEqual(r, Registration{}) {
				t.Errorf("a failed UnmarshalJSON changed the registration: %+v", r)
			}
		})
	}
	// Trailing white space is fine.
	var r Registration
	if err := r.UnmarshalJSON([]byte("{\"tenantId\":\"acme\"}\n \t")); err != nil || r.TenantID != "acme" {
		t.Errorf("trailing white space: %v", err)
	}
}

func TestRegistrationJSONOffValues(t *testing.T) {
	var r Registration
	in := `{"staleWhileError":"PT0S","prefetchJitter":"PT0S","maxRedirects":0,"retryPolicy":{"maxRetries":0},"minTtl":"PT0S","refreshEarly":"PT0S"}`
	if err := json.Unmarshal([]byte(in), &r); err != nil {
		t.Fatal(err)
	}
	want := Registration{StaleWhileError: -1, PrefetchJitter: -1, MaxRedirects: -1, Retry: RetryPolicy{MaxRetries: -1}}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("got %+v, want %+v (zero means off where off exists, else default)", r, want)
	}
}

// TestURLPolicyAddresses: IP-literal hosts pass only inside the Manager's
// AllowedAddresses (IPv4-mapped IPv6 included), and the Manager's domain
// list applies on top of the registration's.
func TestURLPolicyAddresses(t *testing.T) {
	pol := urlPolicy{
		allowedAddresses: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")},
	}
	for raw, ok := range map[string]bool{
		"https://10.1.2.3/jwks":              true,
		"https://[::ffff:10.1.2.3]/jwks":     true,
		"https://[::1]:8443/jwks":            true,
		"https://11.1.2.3/jwks":              false,
		"https://[::ffff:169.254.169.254]/x": false,
		"https://127.0.0.1/jwks":             false,
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		err = pol.checkParsed(u)
		if ok != (err == nil) {
			t.Errorf("%s: err = %v, want allowed %v", raw, err, ok)
		}
		if !ok && !errors.Is(err, ErrSecurityPolicy) {
			t.Errorf("%s: %v does not match ErrSecurityPolicy", raw, err)
		}
	}
	both := urlPolicy{domains: []string{"example.com"}, regDomains: []string{"idp.example.com"}}
	for raw, ok := range map[string]bool{
		"https://idp.example.com/jwks":   true,
		"https://a.idp.example.com/jwks": true,
		"https://other.example.com/jwks": false, // outside the registration's list
		"https://idp.example.org/jwks":   false,
	} {
		fields := both.checkURL("jwksUrl", raw)
		if ok != (len(fields) == 0) || !ok && !fields[0].Security {
			t.Errorf("%s: %+v, want allowed %v", raw, fields, ok)
		}
	}
}

func TestRegistrationHelpers(t *testing.T) {
	r := fullRegistration()
	pins := r.pins()
	if len(pins) != 2 || !bytes.Equal(pins[0][:], pin32) || pins[1] != pins[0] {
		t.Errorf("pins() = %x, want the same digest twice", pins)
	}
	if got := r.key(); got != (providerKey{"acme", "okta_prod"}) {
		t.Errorf("key() = %+v", got)
	}
	for issuer, want := range map[string]string{
		"https://accounts.google.com":          "https://accounts.google.com/.well-known/openid-configuration",
		"https://acme.eu.auth0.com/":           "https://acme.eu.auth0.com/.well-known/openid-configuration",
		"https://login.example.com/realms/foo": "https://login.example.com/realms/foo/.well-known/openid-configuration",
	} {
		r := Registration{Issuer: issuer}
		if got := r.discoveryURL(); got != want {
			t.Errorf("discoveryURL(%q) = %q, want %q", issuer, got, want)
		}
	}
}

// TestURLPolicyIPv4Spellings: a host that some resolver (inet_aton, hence
// getaddrinfo and Go's cgo resolver; WHATWG URL parsing; Go's IDNA mapping)
// reads as an IPv4 address in a spelling other than dotted decimal is
// refused, even when the address it stands for is within AllowedAddresses.
// Dotted decimal within AllowedAddresses still passes, and names that only
// look numeric in part still pass.
func TestURLPolicyIPv4Spellings(t *testing.T) {
	pol := urlPolicy{allowedAddresses: []netip.Prefix{
		netip.MustParsePrefix("8.8.8.0/24"),
		netip.MustParsePrefix("127.0.0.0/8"),
	}}
	for _, c := range []struct {
		name, host string
		ok         bool
		mention    string
	}{
		{"dotted decimal within AllowedAddresses", "8.8.8.8", true, ""},
		{"dotted decimal outside AllowedAddresses", "9.9.9.9", false, "IP-literal"},
		{"IPv4-mapped IPv6 within AllowedAddresses", "[::ffff:8.8.8.8]", true, ""},

		{"one decimal part", "134744072", false, "IPv4"},
		{"one hex part", "0x08080808", false, "IPv4"},
		{"one hex part, upper case", "0X08080808", false, "IPv4"},
		{"one octal part", "01002004010", false, "IPv4"},
		{"four octal parts", "010.010.010.010", false, "IPv4"},
		{"octal-looking parts with 8", "08.08.08.08", false, "IPv4"},
		{"two parts", "8.526344", false, "IPv4"},
		{"three parts", "8.8.2056", false, "IPv4"},
		{"four hex parts", "0x8.0x8.0x8.0x8", false, "IPv4"},
		{"mixed radixes", "0x8.010.8.8", false, "IPv4"},
		{"leading zeros", "008.008.008.008", false, "IPv4"},
		{"dotted decimal with a trailing dot", "8.8.8.8.", false, "IPv4"},
		{"decimal with a trailing dot", "134744072.", false, "IPv4"},
		{"loopback in hex", "0x7f000001", false, "IPv4"},
		{"loopback in two parts", "127.1", false, "IPv4"},
		{"bare 0x", "0x", false, "IPv4"},
		{"name ending in a hex label", "example.0x10", false, "IPv4"},
		{"name ending in a decimal label", "example.123", false, "IPv4"},
		{"name ending in a number and a dot", "idp.example.08.", false, "IPv4"},
		{"out of range", "4294967296", false, "IPv4"},
		{"fullwidth digits", "\uff18.\uff18.\uff18.\uff18", false, "A-label"},
		{"ideographic full stops", "8\u30028\u30028\u30028", false, "A-label"},
		{"mathematical digits", "\U0001d7d6.\U0001d7d6.\U0001d7d6.\U0001d7d6", false, "A-label"},
		{"soft hyphen inside a number", "8.8.8.\u00ad8", false, "A-label"},
		{"internationalised name in Unicode", "b\u00fccher.example", false, "A-label"},

		{"internationalised name as A-label", "xn--bcher-kva.example", true, ""},
		{"hex-looking top-level domain", "idp.cafe", true, ""},
		{"number inside a label", "1e100.net", true, ""},
		{"numeric labels before a name", "8.8.8.8.example", true, ""},
		{"0x label in the middle", "idp.0x10.example", true, ""},
		{"0x with a non-hex digit", "example.0xg", true, ""},
		{"digits then letters", "example.123abc", true, ""},
		{"trailing dot on a name", "idp.example.", true, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			raw := "https://" + c.host + "/jwks.json"
			u, err := url.Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			err = pol.checkParsed(u)
			if c.ok {
				if err != nil {
					t.Fatalf("%s refused: %v", raw, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("%s allowed", raw)
			}
			if !errors.Is(err, ErrSecurityPolicy) || !strings.Contains(err.Error(), c.mention) {
				t.Errorf("%s: error %q, want ErrSecurityPolicy mentioning %q", raw, err, c.mention)
			}
			// Register applies the same rule, as a security field error.
			fields := pol.checkURL("jwksUrl", raw)
			if len(fields) != 1 || !fields[0].Security || fields[0].Field != "jwksUrl" {
				t.Errorf("checkURL = %+v, want one security error on jwksUrl", fields)
			}
		})
	}
}

// TestRegistrationJSONExactNames: encoding/json matches names without
// regard to case (and folds ſ to s and K to k); the JSON form does not.
// Every member name must be one of the documented ones exactly, once.
func TestRegistrationJSONExactNames(t *testing.T) {
	for _, c := range []struct {
		name, in string
		mention  []string
	}{
		{"minTTL", `{"tenantId":"acme","minTTL":"PT1M"}`, []string{`"minTTL"`, `did you mean "minTtl"`}},
		{"upper case", `{"TENANTID":"acme"}`, []string{`"TENANTID"`, `"tenantId"`}},
		{"Go field name", `{"JWKSURL":"https://idp.example/jwks"}`, []string{`"JWKSURL"`, `"jwksUrl"`}},
		{"jwksURL", `{"jwksURL":"https://idp.example/jwks"}`, []string{`"jwksURL"`, `"jwksUrl"`}},
		{"capitalised nested object", `{"RetryPolicy":{"maxRetries":1}}`, []string{`"RetryPolicy"`, `"retryPolicy"`}},
		{"nested case", `{"retryPolicy":{"MaxRetries":1}}`, []string{`"MaxRetries"`, `in "retryPolicy"`, `"maxRetries"`}},
		{"long s folds to s", `{"retryPolicy":{"maxRetrie\u017f":1}}`, []string{`"maxRetrieſ"`, `"maxRetries"`}},
		{"Kelvin sign folds to k", `{"tenantId":"acme","pinnedSp\u212ai":[]}`, []string{"\"pinnedSp\u212ai\"", `"pinnedSpki"`}},
		{"unknown nested", `{"retryPolicy":{"maxAttempts":3}}`, []string{`"maxAttempts"`, `in "retryPolicy"`}},
		{"repeated", `{"tenantId":"acme","tenantId":"evil"}`, []string{`"tenantId"`, "more than once"}},
		{"repeated nested", `{"retryPolicy":{"deadline":"PT1S","deadline":"PT9S"}}`, []string{`"retryPolicy.deadline"`, "more than once"}},
		{"escaped name in another case", `{"min\u0054TL":"PT1M"}`, []string{`"minTTL"`}},
		{"huge unknown name", `{"` + strings.Repeat("x", 100<<10) + `":1}`, []string{"unknown field", "more bytes"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var r Registration
			err := r.UnmarshalJSON([]byte(c.in))
			if err == nil {
				t.Fatalf("UnmarshalJSON accepted it: %+v", r)
			}
			if !errors.Is(err, ErrInvalidRegistration) {
				t.Errorf("error %v does not match ErrInvalidRegistration", err)
			}
			for _, m := range c.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %.300q does not mention %s", err, m)
				}
			}
			if len(err.Error()) > 300 {
				t.Errorf("error text of %d bytes", len(err.Error()))
			}
			if !reflect.DeepEqual(r, Registration{}) {
				t.Errorf("a failed UnmarshalJSON changed the registration: %+v", r)
			}
		})
	}
	// Exact names, escaped or not, null objects, and every field of the
	// full registration still read.
	for name, in := range map[string]string{
		"escaped exact name": `{"tenant\u0049d":"acme"}`,
		"null retryPolicy":   `{"tenantId":"acme","retryPolicy":null}`,
		"empty retryPolicy":  `{"tenantId":"acme","retryPolicy":{}}`,
	} {
		t.Run("accepted "+name, func(t *testing.T) {
			var r Registration
			if err := r.UnmarshalJSON([]byte(in)); err != nil || r.TenantID != "acme" {
				t.Errorf("UnmarshalJSON(%s) = %v, %+v", in, err, r)
			}
		})
	}
	t.Run("accepted every field", func(t *testing.T) {
		b, err := json.Marshal(fullRegistration())
		if err != nil {
			t.Fatal(err)
		}
		var r Registration
		if err := r.UnmarshalJSON(b); err != nil {
			t.Fatalf("UnmarshalJSON(%s): %v", b, err)
		}
	})
}

// A value that does not decode names its member, nested ones with their
// path, so a config file's author knows which line to fix.
func TestRegistrationJSONErrorNamesMember(t *testing.T) {
	for _, c := range []struct{ doc, want string }{
		{`{"tenantId":"a","providerId":"b","staleWhileError":"1h"}`, "staleWhileError: "},
		{`{"tenantId":"a","providerId":"b","minTtl":30}`, "minTtl: "},
		{`{"tenantId":"a","providerId":"b","retryPolicy":{"maxRetries":2,"deadline":"8s"}}`, "retryPolicy.deadline: "},
		{`{"tenantId":"a","providerId":"b","maxRedirects":"three"}`, "maxRedirects: "},
	} {
		var r Registration
		err := json.Unmarshal([]byte(c.doc), &r)
		if !errors.Is(err, ErrInvalidRegistration) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an ErrInvalidRegistration naming %q", c.doc, err, c.want)
		}
	}
}

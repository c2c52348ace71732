package jwkscache

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Registration defaults. A zero field of Registration or RetryPolicy means
// the default below; see each field for its rule.
const (
	DefaultRefreshEarly     = 30 * time.Second
	DefaultStaleWhileError  = time.Hour
	DefaultMinTTL           = 30 * time.Second
	DefaultMaxTTL           = 24 * time.Hour
	DefaultTTL              = 10 * time.Minute // when the response carries no freshness information
	DefaultMaxResponseBytes = 1 << 20
	DefaultNegativeCacheTTL = 30 * time.Second
	DefaultMaxRedirects     = 3
	DefaultPrefetchJitter   = 5 * time.Second

	DefaultMaxRetries     = 2
	DefaultAttemptTimeout = 3 * time.Second
	DefaultInitialBackoff = 250 * time.Millisecond
	DefaultMaxBackoff     = 2 * time.Second
	DefaultDeadline       = 8 * time.Second

	// maxKeysPerSet bounds the keys parsed from one document.
	maxKeysPerSet = 100
	maxIDLen      = 64
)

// Jitter selects how retry backoff is randomised.
type Jitter string

// Jitter modes. See https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/.
const (
	JitterNone         Jitter = "none"         // exact exponential backoff
	JitterFull         Jitter = "full"         // uniform in [0, backoff]
	JitterDecorrelated Jitter = "decorrelated" // uniform in [initial, 3 x previous], capped
)

// RetryPolicy bounds the attempts of one fetch. A zero field means its default.
type RetryPolicy struct {
	// MaxRetries is the number of retries after the first attempt; a
	// negative value means none. Only network errors, timeouts, 408, 429
	// and 5xx are retried. Default: 2 (3 attempts).
	MaxRetries int
	// AttemptTimeout bounds one attempt, from dial to the end of the body.
	// Default: 3s.
	AttemptTimeout time.Duration
	// InitialBackoff is the delay before the first retry. Default: 250ms.
	InitialBackoff time.Duration
	// MaxBackoff caps the delay between attempts. A Retry-After header on a
	// 429 or 503 is honoured when it fits in the remaining Deadline. Default: 2s.
	MaxBackoff time.Duration
	// Deadline bounds the whole fetch, retries and backoff included. Default: 8s.
	Deadline time.Duration
	// Jitter randomises backoff: none, full or decorrelated. Default: full.
	Jitter Jitter
}

// Registration describes one identity provider of one tenant. The zero
// value of every optional field means its default, so a caller writes only
// what it changes; where zero is a meaningful setting (StaleWhileError,
// PrefetchJitter, MaxRedirects), a negative value means "off".
//
// Its JSON form uses camelCase names and ISO-8601 durations ("PT30S"); there
// "off" is written as zero ("PT0S", or 0 for maxRedirects).
type Registration struct {
	// TenantID is 1-64 characters of [A-Za-z0-9-]. Required.
	TenantID string
	// ProviderID is 1-64 characters of [A-Za-z0-9_-]. Required.
	ProviderID string
	// JWKSURL is the absolute https URL of the key set. Required unless
	// Issuer is set, in which case it is found by OIDC discovery.
	JWKSURL string
	// Issuer, when set, binds the provider's Keyfunc to tokens whose iss
	// claim equals it exactly. With no JWKSURL, the key set URL comes from
	// Issuer + "/.well-known/openid-configuration", whose issuer member must
	// equal Issuer exactly (OpenID Connect Discovery 1.0, section 4.3).
	Issuer string
	// AllowHTTP permits an http URL. It takes effect only when the
	// Manager's Options.AllowHTTP is also true. Default: false.
	AllowHTTP bool
	// AllowedDomains restricts the hosts this provider may be fetched from
	// (on every redirect hop too): a host passes when it equals an entry or
	// ends with "." + entry. Entries are lower-case without a trailing dot.
	// A host must pass both this list and Options.AllowedDomains when each is
	// non-empty. Default: empty (only the Manager's list applies).
	AllowedDomains []string
	// RefreshEarly is how long before expiry the background refresh starts
	// (minus jitter). At least 1s. Default: 30s.
	RefreshEarly time.Duration
	// StaleWhileError is how long expired keys keep serving while refreshes
	// fail. Negative: off (keys stop serving at expiry). Default: 1h.
	StaleWhileError time.Duration
	// MinTTL is the lower clamp of the freshness lifetime; it is also the
	// lifetime of no-cache and no-store responses. At least 30s. Default: 30s.
	MinTTL time.Duration
	// MaxTTL is the upper clamp of the freshness lifetime. At least MinTTL.
	// Default: 24h.
	MaxTTL time.Duration
	// MaxResponseBytes caps the body, enforced while reading and again
	// after decompression. Default: 1 MiB.
	MaxResponseBytes int64
	// NegativeCacheTTL is the refill interval of the per-provider bucket of
	// unknown-kid refreshes (burst 2), and how long a kid missing from a
	// fresh fetch is remembered. At least 1s. Default: 30s.
	NegativeCacheTTL time.Duration
	// MaxRedirects is the most redirects one fetch follows, 0-10; every hop
	// is re-checked against the URL and address policy. Negative: none.
	// Default: 3.
	MaxRedirects int
	// PinnedSPKI lists base64 (standard or URL-safe, padded or not)
	// SHA-256 digests of SubjectPublicKeyInfo. When non-empty, a TLS
	// connection is accepted only if a certificate of its verified chain
	// matches one, in addition to the normal chain checks. Default: empty.
	PinnedSPKI []string
	// PrefetchJitter is the upper bound of the random amount subtracted
	// from each scheduled refresh, so that providers registered together do
	// not refresh together. Negative: no jitter. Default: 5s.
	PrefetchJitter time.Duration
	// Retry bounds the attempts of each fetch.
	Retry RetryPolicy
}

// WithDefaults returns a copy of r with every zero field set to its default.
// Negative "off" values are kept; slices are copied, so the result shares no
// memory with r.
func (r Registration) WithDefaults() Registration {
	r.AllowedDomains = cloneStrings(r.AllowedDomains)
	r.PinnedSPKI = cloneStrings(r.PinnedSPKI)
	setDefault(&r.RefreshEarly, DefaultRefreshEarly)
	setDefault(&r.StaleWhileError, DefaultStaleWhileError)
	setDefault(&r.MinTTL, DefaultMinTTL)
	setDefault(&r.MaxTTL, DefaultMaxTTL)
	setDefault(&r.MaxResponseBytes, DefaultMaxResponseBytes)
	setDefault(&r.NegativeCacheTTL, DefaultNegativeCacheTTL)
	setDefault(&r.MaxRedirects, DefaultMaxRedirects)
	setDefault(&r.PrefetchJitter, DefaultPrefetchJitter)
	setDefault(&r.Retry.MaxRetries, DefaultMaxRetries)
	setDefault(&r.Retry.AttemptTimeout, DefaultAttemptTimeout)
	setDefault(&r.Retry.InitialBackoff, DefaultInitialBackoff)
	setDefault(&r.Retry.MaxBackoff, DefaultMaxBackoff)
	setDefault(&r.Retry.Deadline, DefaultDeadline)
	setDefault(&r.Retry.Jitter, JitterFull)
	return r
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

func cloneStrings(s []string) []string {
	if s == nil {
		return nil
	}
	return append([]string(nil), s...)
}

// Effective values of the fields where negative means off. They expect a
// registration with defaults applied.
func (r *Registration) staleWindow() time.Duration  { return max(r.StaleWhileError, 0) }
func (r *Registration) jitterWindow() time.Duration { return max(r.PrefetchJitter, 0) }
func (r *Registration) redirectLimit() int          { return max(r.MaxRedirects, 0) }
func (r *RetryPolicy) attempts() int                { return max(r.MaxRetries, 0) + 1 }
func (r *Registration) key() providerKey            { return providerKey{r.TenantID, r.ProviderID} }

// discoveryURL is the OIDC discovery document of r.Issuer.
func (r *Registration) discoveryURL() string {
	return strings.TrimSuffix(r.Issuer, "/") + "/.well-known/openid-configuration"
}

// maxResponseBytesCap bounds MaxResponseBytes: no JWKS is a gigabyte, and
// the bound keeps every size derived from it (stored records) in range.
const maxResponseBytesCap = 1 << 30

// ttlFloor is the hard floor of MinTTL: no setting makes the cache fetch a
// provider more often than this in the steady state. It is a variable only
// so that the package's own tests can run refresh cycles of real stores in
// seconds (see export_test.go); nothing else changes it.
var ttlFloor atomic.Int64

const defaultTTLFloor = 30 * time.Second

func minTTLFloor() time.Duration {
	if f := ttlFloor.Load(); f > 0 {
		return time.Duration(f)
	}
	return defaultTTLFloor
}

// providerKey addresses one provider.
type providerKey struct{ tenant, provider string }

// FieldError describes one bad field of a Registration.
type FieldError struct {
	Field   string // JSON name, e.g. "minTtl" or "retryPolicy.deadline"
	Message string
	// Security is true when the field breaks the security policy rather
	// than a format rule; the error then matches ErrSecurityPolicy.
	Security bool
}

// RegistrationError lists every bad field of a Registration. It matches
// ErrInvalidRegistration when a field breaks a format rule, and
// ErrSecurityPolicy when one breaks the security policy.
type RegistrationError struct {
	TenantID   string
	ProviderID string
	Fields     []FieldError
}

func (e *RegistrationError) Error() string {
	var b strings.Builder
	b.WriteString("jwkscache: registration ")
	b.WriteString(e.TenantID)
	b.WriteByte('/')
	b.WriteString(e.ProviderID)
	b.WriteString(": ")
	writeFields(&b, e.Fields)
	return b.String()
}

// Is matches ErrInvalidRegistration and ErrSecurityPolicy as described above.
func (e *RegistrationError) Is(target error) bool {
	for _, f := range e.Fields {
		if target == ErrSecurityPolicy && f.Security || target == ErrInvalidRegistration && !f.Security {
			return true
		}
	}
	return false
}

// urlPolicy is the part of the security policy that checks URLs: the
// registration's own settings merged with the Manager's Options.
type urlPolicy struct {
	allowHTTP        bool     // both Options.AllowHTTP and Registration.AllowHTTP
	domains          []string // Options.AllowedDomains
	regDomains       []string // Registration.AllowedDomains
	allowedAddresses []netip.Prefix
}

// Validate checks r (with defaults applied to a copy) and reports every bad
// field in one *RegistrationError. It judges the URL against r's own
// AllowHTTP and AllowedDomains; a Manager also applies its Options.
func (r Registration) Validate() error {
	d := r.WithDefaults()
	return d.validate(urlPolicy{allowHTTP: r.AllowHTTP, regDomains: r.AllowedDomains})
}

func (r *Registration) validate(pol urlPolicy) error {
	e := &RegistrationError{TenantID: r.TenantID, ProviderID: r.ProviderID}
	bad := func(field, format string, args ...any) {
		e.Fields = append(e.Fields, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
	}
	if msg := checkID(r.TenantID, false); msg != "" {
		bad("tenantId", "%s", msg)
	}
	if msg := checkID(r.ProviderID, true); msg != "" {
		bad("providerId", "%s", msg)
	}
	for i, d := range r.AllowedDomains {
		if msg := checkDomain(d); msg != "" {
			bad(fmt.Sprintf("allowedDomains[%d]", i), "%s: %s", showURL(d), msg)
		}
	}
	switch {
	case r.JWKSURL != "":
		e.Fields = append(e.Fields, pol.checkURL("jwksUrl", r.JWKSURL)...)
	case r.Issuer != "":
		e.Fields = append(e.Fields, pol.checkURL("issuer", r.Issuer)...)
	default:
		bad("jwksUrl", "required unless issuer is set")
	}
	if r.RefreshEarly < time.Second {
		bad("refreshEarly", "must be at least 1s, got %v", r.RefreshEarly)
	}
	if floor := minTTLFloor(); r.MinTTL < floor {
		bad("minTtl", "must be at least %v, got %v", floor, r.MinTTL)
	}
	if r.MaxTTL < r.MinTTL {
		bad("maxTtl", "must be at least minTtl (%v), got %v", r.MinTTL, r.MaxTTL)
	}
	if r.MaxResponseBytes <= 0 || r.MaxResponseBytes > maxResponseBytesCap {
		bad("maxResponseBytes", "must be in 1..%d, got %d", int64(maxResponseBytesCap), r.MaxResponseBytes)
	}
	if r.NegativeCacheTTL < time.Second {
		bad("negativeCacheTtl", "must be at least 1s, got %v", r.NegativeCacheTTL)
	}
	if r.MaxRedirects > 10 {
		bad("maxRedirects", "must be 0-10, got %d", r.MaxRedirects)
	}
	if _, err := decodePins(r.PinnedSPKI); err != nil {
		bad("pinnedSpki", "%v", err)
	} else if len(r.PinnedSPKI) > 0 && strings.HasPrefix(strings.ToLower(r.sourceURL()), "http:") {
		e.Fields = append(e.Fields, FieldError{Field: "pinnedSpki", Message: "pins need https: a plain http fetch has no certificate to check", Security: true})
	}
	rp := &r.Retry
	if rp.MaxRetries > 10 {
		bad("retryPolicy.maxRetries", "must be at most 10, got %d", rp.MaxRetries)
	}
	if rp.AttemptTimeout <= 0 {
		bad("retryPolicy.attemptTimeout", "must be positive, got %v", rp.AttemptTimeout)
	}
	if rp.InitialBackoff <= 0 {
		bad("retryPolicy.initialBackoff", "must be positive, got %v", rp.InitialBackoff)
	}
	if rp.MaxBackoff < rp.InitialBackoff {
		bad("retryPolicy.maxBackoff", "must be at least initialBackoff (%v), got %v", rp.InitialBackoff, rp.MaxBackoff)
	}
	if rp.Deadline < rp.AttemptTimeout {
		bad("retryPolicy.deadline", "must be at least attemptTimeout (%v), got %v", rp.AttemptTimeout, rp.Deadline)
	}
	switch rp.Jitter {
	case JitterNone, JitterFull, JitterDecorrelated:
	default:
		bad("retryPolicy.jitter", "must be none, full or decorrelated, got %q", rp.Jitter)
	}
	if len(e.Fields) == 0 {
		// A registration is persisted (Options.Store) in its JSON form.
		if b, err := json.Marshal(r); err == nil && len(b) > maxRegistrationJSON {
			bad("registration", "its JSON form is %d bytes, over %d (too many allowedDomains or pinnedSpki?)", len(b), maxRegistrationJSON)
		}
	}
	if len(e.Fields) > 0 {
		return e
	}
	return nil
}

// maxRegistrationJSON bounds a registration's JSON form, so that every
// registration can be stored and restored (see maxRegistrationRecord).
const maxRegistrationJSON = 256 << 10

func checkID(id string, underscore bool) string {
	if id == "" {
		return "required"
	}
	if len(id) > maxIDLen {
		return fmt.Sprintf("at most %d characters, got %d", maxIDLen, len(id))
	}
	for _, c := range []byte(id) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || underscore && c == '_'
		if !ok {
			if underscore {
				return fmt.Sprintf("%q: only [A-Za-z0-9_-] allowed", id)
			}
			return fmt.Sprintf("%q: only [A-Za-z0-9-] allowed", id)
		}
	}
	return ""
}

func checkDomain(d string) string {
	switch {
	case d == "":
		return "empty"
	case d != strings.ToLower(d):
		return "must be lower-case"
	case strings.HasSuffix(d, "."):
		return "must not end with a dot"
	case strings.HasPrefix(d, "."), strings.ContainsAny(d, "/:*@ "):
		return "must be a bare host name such as example.com"
	}
	return ""
}

// checkURL returns the problems of one URL under the policy. Security
// problems are marked so the error matches ErrSecurityPolicy.
func (p *urlPolicy) checkURL(field, raw string) []FieldError {
	u, err := url.Parse(raw)
	if err != nil {
		return []FieldError{{Field: field, Message: "not a URL: " + capText(err.Error())}}
	}
	if err := p.checkParsed(u); err != nil {
		var pe *policyError
		return []FieldError{{Field: field, Message: err.Error(), Security: errors.As(err, &pe)}}
	}
	return nil
}

// policyError is a URL refused by the security policy.
type policyError struct{ msg string }

func (e *policyError) Error() string { return e.msg }
func (e *policyError) Is(target error) bool {
	return target == ErrSecurityPolicy
}

// checkParsed applies the URL policy to u. It returns a *policyError for a
// security refusal and a plain error for a malformed URL. URLs and hosts are
// shown capped: on a redirect hop or a discovered jwks_uri they are
// upstream data.
func (p *urlPolicy) checkParsed(u *url.URL) error {
	shown := showURL(u.String())
	if !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("%s: must be an absolute URL with a host", shown)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !p.allowHTTP {
			return &policyError{fmt.Sprintf("%s: http is refused; use https (or set AllowHTTP on both the Registration and the Options)", shown)}
		}
	default:
		return fmt.Errorf("%s: scheme must be https", shown)
	}
	if u.User != nil {
		return &policyError{fmt.Sprintf("%s: userinfo in the URL is refused", shown)}
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return fmt.Errorf("%s: missing host", shown)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if !prefixesContain(p.allowedAddresses, ip) {
			return &policyError{fmt.Sprintf("%s: IP-literal host %s is refused unless within Options.AllowedAddresses", shown, ip)}
		}
	} else if msg := hostSpellingProblem(host); msg != "" {
		return &policyError{fmt.Sprintf("%s: host %s %s", shown, showURL(host), msg)}
	}
	if !domainAllowed(p.domains, host) || !domainAllowed(p.regDomains, host) {
		return &policyError{fmt.Sprintf("%s: host %s is outside the allowed domains", shown, showURL(host))}
	}
	return nil
}

// maxShownURL caps a URL or host quoted in an error text.
const maxShownURL = 256

// showURL returns a URL or host quoted for an error text: without
// userinfo, query string and fragment (they may carry secrets), valid
// UTF-8, and cut visibly after maxShownURL bytes.
func showURL(s string) string { return strconv.Quote(shownURL(s)) }

// hostSpellingProblem explains why a host that is not a canonical IP
// literal (netip.ParseAddr refused it) is refused, or returns "".
//
// IP-literal hosts pass only within Options.AllowedAddresses, so a host
// that some resolver reads as an IPv4 address in another spelling must not
// pass as a name. inet_aton, which getaddrinfo applies to numeric hosts
// (so Go's cgo resolver and many other clients do), reads 1 to 4 parts,
// each decimal, octal with a leading 0 or hex with 0x: 134744072, 0x08080808, 010.010.010.010,
// 8.526344, 0x8.0x8.0x8.0x8 are all 8.8.8.8. The WHATWG URL standard
// parses a host whose last label (after one trailing dot) is such a number
// as IPv4 too, and refuses it when the other labels are not numbers
// (example.0x10). Both cases are refused: the last label decides, as in
// WHATWG's "ends in a number" rule, which every inet_aton spelling meets.
//
// A host with non-ASCII characters is refused as well: Go's HTTP client,
// like browsers, maps it with IDNA (UTS 46) before resolving, and the
// mapping folds fullwidth, mathematical, circled or superscript digits and
// ideographic full stops to ASCII, so "１２７。０。０。１" dials 127.0.0.1.
// The standard library has no IDNA mapping to check the result against, so
// an internationalised name must be written in its A-label (xn--) form.
func hostSpellingProblem(host string) string {
	for i := 0; i < len(host); i++ {
		if host[i] >= utf8.RuneSelf {
			return "is not ASCII; write an internationalised domain name in its A-label (xn--) form"
		}
	}
	if endsInNumber(host) {
		return "is read as an IPv4 address by some resolvers (a decimal, octal or hex spelling); only dotted-decimal IP literals within Options.AllowedAddresses are accepted"
	}
	return ""
}

// endsInNumber is WHATWG URL's "ends in a number" check of an ASCII host:
// its last label, ignoring one trailing dot, is all decimal digits or a
// hexadecimal number with a 0x prefix (digits optional: "0x" is 0).
func endsInNumber(host string) bool {
	host = strings.TrimSuffix(host, ".")
	last := host[strings.LastIndexByte(host, '.')+1:]
	if last == "" {
		return false
	}
	digits := "0123456789"
	if len(last) >= 2 && last[0] == '0' && (last[1] == 'x' || last[1] == 'X') {
		last, digits = last[2:], "0123456789abcdefABCDEF"
	}
	for i := 0; i < len(last); i++ {
		if strings.IndexByte(digits, last[i]) < 0 {
			return false
		}
	}
	return true
}

func domainAllowed(list []string, host string) bool {
	if len(list) == 0 {
		return true
	}
	host = strings.TrimSuffix(host, ".")
	for _, d := range list {
		if host == d || strings.HasSuffix(host, "."+d) {
			return true
		}
	}
	return false
}

func prefixesContain(ps []netip.Prefix, ip netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(ip) || ip.Is4In6() && p.Contains(ip.Unmap()) {
			return true
		}
	}
	return false
}

// decodePins decodes SPKI pins given in standard or URL-safe base64,
// padded or not.
func decodePins(pins []string) ([][sha256.Size]byte, error) {
	out := make([][sha256.Size]byte, 0, len(pins))
	for i, p := range pins {
		s := strings.TrimRight(strings.TrimSpace(p), "=")
		s = strings.NewReplacer("-", "+", "_", "/").Replace(s)
		b, err := base64.RawStdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("pin %d: not base64: %v", i, err)
		}
		if len(b) != sha256.Size {
			return nil, fmt.Errorf("pin %d: a SHA-256 digest has 32 bytes, got %d", i, len(b))
		}
		out = append(out, [sha256.Size]byte(b))
	}
	return out, nil
}

// registrationFields are the member names of the JSON form, from the struct
// tags, with the nested object retryPolicy.
var registrationFields = jsonNames(reflect.TypeFor[registrationJSON](), map[string]jsonObject{
	"retryPolicy": jsonNames(reflect.TypeFor[retryPolicyJSON](), nil),
})

// jsonObject lists the member names of a JSON object, and the members that
// are objects with names of their own.
type jsonObject struct {
	names  map[string]bool
	nested map[string]jsonObject
}

// jsonNames returns the names of struct type t's JSON fields.
func jsonNames(t reflect.Type, nested map[string]jsonObject) jsonObject {
	o := jsonObject{names: make(map[string]bool), nested: nested}
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			o.names[name] = true
		}
	}
	return o
}

// checkMemberNames refuses a member of the JSON object raw whose name is not
// exactly one of obj's, or that appears twice; members listed in
// obj.nested are checked the same way when they are objects. A raw value
// that is not an object passes: decoding it reports the problem. path
// prefixes names in errors ("retryPolicy.").
func checkMemberNames(raw json.RawMessage, obj jsonObject, path string) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		name, ok := tok.(string)
		if !ok { // cannot happen in a valid object
			return fmt.Errorf("member name %v is not a string", tok)
		}
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return err
		}
		switch {
		case !obj.names[name]:
			msg := fmt.Sprintf("unknown field %s", showID(name))
			if path != "" {
				msg += " in " + strconv.Quote(strings.TrimSuffix(path, "."))
			}
			for known := range obj.names {
				if strings.EqualFold(known, name) {
					msg += fmt.Sprintf(" (names are case-sensitive: did you mean %q?)", known)
					break
				}
			}
			return errors.New(msg)
		case seen[name]:
			return fmt.Errorf("field %q appears more than once", path+name)
		}
		seen[name] = true
		if sub, ok := obj.nested[name]; ok {
			if err := checkMemberNames(val, sub, path+name+"."); err != nil {
				return err
			}
		}
	}
	return nil
}

// registrationJSON is the wire form of Registration.
type registrationJSON struct {
	TenantID         string           `json:"tenantId,omitempty"`
	ProviderID       string           `json:"providerId,omitempty"`
	JWKSURL          string           `json:"jwksUrl,omitempty"`
	Issuer           string           `json:"issuer,omitempty"`
	AllowHTTP        bool             `json:"allowHttp,omitempty"`
	AllowedDomains   []string         `json:"allowedDomains,omitempty"`
	RefreshEarly     *isoDuration     `json:"refreshEarly,omitempty"`
	StaleWhileError  *isoDuration     `json:"staleWhileError,omitempty"`
	MinTTL           *isoDuration     `json:"minTtl,omitempty"`
	MaxTTL           *isoDuration     `json:"maxTtl,omitempty"`
	MaxResponseBytes int64            `json:"maxResponseBytes,omitempty"`
	NegativeCacheTTL *isoDuration     `json:"negativeCacheTtl,omitempty"`
	MaxRedirects     *int             `json:"maxRedirects,omitempty"`
	PinnedSPKI       []string         `json:"pinnedSpki,omitempty"`
	PrefetchJitter   *isoDuration     `json:"prefetchJitter,omitempty"`
	Retry            *retryPolicyJSON `json:"retryPolicy,omitempty"`
}

type retryPolicyJSON struct {
	MaxRetries     *int         `json:"maxRetries,omitempty"`
	AttemptTimeout *isoDuration `json:"attemptTimeout,omitempty"`
	InitialBackoff *isoDuration `json:"initialBackoff,omitempty"`
	MaxBackoff     *isoDuration `json:"maxBackoff,omitempty"`
	Deadline       *isoDuration `json:"deadline,omitempty"`
	Jitter         Jitter       `json:"jitter,omitempty"`
}

// blameMember returns "name: " for the first member of the registration
// object raw (retryPolicy's members included, as "retryPolicy.name") whose
// value does not decode on its own, so that an error from a value's own
// decoder (an ISO-8601 duration, say) names its member; "" when none is
// found. It runs only on the error path.
func blameMember(raw []byte) string {
	var top map[string]json.RawMessage
	if json.Unmarshal(raw, &top) != nil {
		return ""
	}
	names := make([]string, 0, len(top))
	for name := range top {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		var one registrationJSON
		member, _ := json.Marshal(map[string]json.RawMessage{name: top[name]})
		if json.Unmarshal(member, &one) == nil {
			continue
		}
		if name == "retryPolicy" {
			var inner map[string]json.RawMessage
			if json.Unmarshal(top[name], &inner) == nil {
				for _, in := range slices.Sorted(maps.Keys(inner)) {
					var rp retryPolicyJSON
					m, _ := json.Marshal(map[string]json.RawMessage{in: inner[in]})
					if json.Unmarshal(m, &rp) != nil {
						return "retryPolicy." + in + ": "
					}
				}
			}
		}
		return name + ": "
	}
	return ""
}

// isoDuration is a duration written as an ISO-8601 string in JSON.
type isoDuration time.Duration

func (d isoDuration) MarshalJSON() ([]byte, error) {
	return json.Marshal(formatISODuration(time.Duration(d)))
}

func (d *isoDuration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be an ISO-8601 string such as \"PT30S\", got %s", showID(string(b)))
	}
	v, err := parseISODuration(s)
	if err != nil {
		return err
	}
	*d = isoDuration(v)
	return nil
}

// Wire conversions. A zero Go value (default) is omitted; a negative Go value
// (off) is written as zero, and read back as -1.
func durToJSON(d time.Duration, offable bool) *isoDuration {
	switch {
	case d == 0:
		return nil
	case d < 0 && offable:
		v := isoDuration(0)
		return &v
	}
	v := isoDuration(d)
	return &v
}

func durFromJSON(d *isoDuration, offable bool) time.Duration {
	switch {
	case d == nil:
		return 0
	case *d == 0 && offable:
		return -1
	}
	return time.Duration(*d)
}

func intToJSON(n int) *int {
	switch {
	case n == 0:
		return nil
	case n < 0:
		n = 0
	}
	return &n
}

func intFromJSON(n *int) int {
	switch {
	case n == nil:
		return 0
	case *n == 0:
		return -1
	}
	return *n
}

// MarshalJSON writes r in its JSON form (camelCase, ISO-8601 durations).
func (r Registration) MarshalJSON() ([]byte, error) {
	w := registrationJSON{
		TenantID: r.TenantID, ProviderID: r.ProviderID, JWKSURL: r.JWKSURL, Issuer: r.Issuer,
		AllowHTTP: r.AllowHTTP, AllowedDomains: r.AllowedDomains,
		RefreshEarly:     durToJSON(r.RefreshEarly, false),
		StaleWhileError:  durToJSON(r.StaleWhileError, true),
		MinTTL:           durToJSON(r.MinTTL, false),
		MaxTTL:           durToJSON(r.MaxTTL, false),
		MaxResponseBytes: r.MaxResponseBytes,
		NegativeCacheTTL: durToJSON(r.NegativeCacheTTL, false),
		MaxRedirects:     intToJSON(r.MaxRedirects),
		PinnedSPKI:       r.PinnedSPKI,
		PrefetchJitter:   durToJSON(r.PrefetchJitter, true),
	}
	rp := retryPolicyJSON{
		MaxRetries:     intToJSON(r.Retry.MaxRetries),
		AttemptTimeout: durToJSON(r.Retry.AttemptTimeout, false),
		InitialBackoff: durToJSON(r.Retry.InitialBackoff, false),
		MaxBackoff:     durToJSON(r.Retry.MaxBackoff, false),
		Deadline:       durToJSON(r.Retry.Deadline, false),
		Jitter:         r.Retry.Jitter,
	}
	if rp != (retryPolicyJSON{}) {
		w.Retry = &rp
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads r from its JSON form. Member names must match
// exactly: an unknown name, a name in another case (encoding/json alone
// would accept "minTTL" or "MINTTL" for "minTtl") and a repeated name are
// refused, so a misspelt setting is an error rather than a silent default.
// Trailing data after the object is refused too.
func (r *Registration) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidRegistration, err)
	}
	// dec.More would miss a stray '}' or ']': read to the end instead.
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: trailing data after the registration object", ErrInvalidRegistration)
	}
	if err := checkMemberNames(raw, registrationFields, ""); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidRegistration, err)
	}
	var w registrationJSON
	dec = json.NewDecoder(bytes.NewReader(raw))
	// Redundant after checkMemberNames; kept as a second line of defence.
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return fmt.Errorf("%w: %s%v", ErrInvalidRegistration, blameMember(raw), err)
	}
	out := Registration{
		TenantID: w.TenantID, ProviderID: w.ProviderID, JWKSURL: w.JWKSURL, Issuer: w.Issuer,
		AllowHTTP: w.AllowHTTP, AllowedDomains: w.AllowedDomains,
		RefreshEarly:     durFromJSON(w.RefreshEarly, false),
		StaleWhileError:  durFromJSON(w.StaleWhileError, true),
		MinTTL:           durFromJSON(w.MinTTL, false),
		MaxTTL:           durFromJSON(w.MaxTTL, false),
		MaxResponseBytes: w.MaxResponseBytes,
		NegativeCacheTTL: durFromJSON(w.NegativeCacheTTL, false),
		MaxRedirects:     intFromJSON(w.MaxRedirects),
		PinnedSPKI:       w.PinnedSPKI,
		PrefetchJitter:   durFromJSON(w.PrefetchJitter, true),
	}
	if rp := w.Retry; rp != nil {
		out.Retry = RetryPolicy{
			MaxRetries:     intFromJSON(rp.MaxRetries),
			AttemptTimeout: durFromJSON(rp.AttemptTimeout, false),
			InitialBackoff: durFromJSON(rp.InitialBackoff, false),
			MaxBackoff:     durFromJSON(rp.MaxBackoff, false),
			Deadline:       durFromJSON(rp.Deadline, false),
			Jitter:         rp.Jitter,
		}
	}
	*r = out
	return nil
}

// pins returns the decoded PinnedSPKI of a validated registration.
func (r *Registration) pins() [][sha256.Size]byte {
	p, _ := decodePins(r.PinnedSPKI)
	return p
}

// sourceURL is the URL fetches start from: the JWKS URL, or the issuer for
// discovery.
func (r *Registration) sourceURL() string {
	if r.JWKSURL != "" {
		return r.JWKSURL
	}
	return r.Issuer
}

// usesDiscovery reports whether the JWKS URL comes from OIDC discovery.
func (r *Registration) usesDiscovery() bool { return r.JWKSURL == "" && r.Issuer != "" }

package jwkscache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors. Errors about registrations, providers, keys and fetches
// wrap at least one of them, so callers match with errors.Is and never
// compare strings; a caller's own context error is returned as it is.
var (
	// ErrInvalidOptions reports Options that break the rules of their
	// documentation. The *OptionsError names every bad field.
	ErrInvalidOptions = errors.New("jwkscache: invalid options")

	// ErrNotRegistered reports a (tenant, provider) pair that is not registered.
	ErrNotRegistered = errors.New("jwkscache: provider not registered")

	// ErrKeyNotFound reports a kid that the provider's key set does not hold,
	// even after the rate-limited refresh an unknown kid may trigger.
	ErrKeyNotFound = errors.New("jwkscache: key not found")

	// ErrInvalidRegistration reports a Registration with a field that breaks
	// the rules of its documentation. The error names every bad field.
	ErrInvalidRegistration = errors.New("jwkscache: invalid registration")

	// ErrSecurityPolicy reports a URL, redirect, address or certificate that
	// the security policy refuses: http without AllowHTTP on both sides, a
	// host outside the allowlists, userinfo in the URL, an IP-literal or
	// resolved address in a blocked range, or an SPKI pin mismatch.
	ErrSecurityPolicy = errors.New("jwkscache: refused by security policy")

	// ErrUpstream reports a failed exchange with the identity provider: a
	// network error, a timeout, a TLS failure, an unexpected status code or
	// a body that is not a JWKS. The wrapping *FetchError carries the status
	// code and URL.
	ErrUpstream = errors.New("jwkscache: upstream error")

	// ErrNoKeys reports that no usable signing key is available: a fetched
	// set held none, or the provider has no keys to serve (never loaded, or
	// its stale window ran out). It wraps the cause when one is known.
	ErrNoKeys = errors.New("jwkscache: no usable keys")

	// ErrKeyDenied reports a kid refused by DenyKey.
	ErrKeyDenied = errors.New("jwkscache: key denied")

	// ErrRateLimited reports a Revalidate refused because the provider's
	// unknown-kid budget is spent; the keys in memory still serve.
	ErrRateLimited = errors.New("jwkscache: revalidation rate limited")

	// ErrVersionMismatch reports a RegisterIfVersion whose version is not
	// the registration's current one.
	ErrVersionMismatch = errors.New("jwkscache: registration version mismatch")

	// ErrTooLarge reports a response body over MaxResponseBytes, counted
	// both as received and after decompression.
	ErrTooLarge = errors.New("jwkscache: response too large")

	// ErrClosed reports a call on a Manager after Close.
	ErrClosed = errors.New("jwkscache: manager closed")
)

// ErrorClass names the kind of a fetch failure. The values are stable: they
// appear in ProviderStatus.LastErrorClass, in logs and in metric labels.
type ErrorClass string

// Fetch error classes.
const (
	ClassTimeout        ErrorClass = "timeout"         // attempt timeout, deadline, or a network timeout
	ClassTLS            ErrorClass = "tls"             // handshake or certificate verification failure
	ClassPin            ErrorClass = "pin"             // no certificate in the chain matched PinnedSPKI
	ClassBlockedAddress ErrorClass = "blocked_address" // the dialled address is in a refused range
	ClassRedirect       ErrorClass = "redirect"        // too many redirects, or a hop the URL policy refuses
	ClassTooLarge       ErrorClass = "too_large"       // body over MaxResponseBytes (raw or decompressed)
	ClassParse          ErrorClass = "parse"           // not JSON, HTML, bad encoding, not a JWKS or discovery document
	ClassNoKeys         ErrorClass = "no_keys"         // a valid JWKS without a single usable signing key
	ClassStatus         ErrorClass = "status"          // an HTTP status other than 200 or 304
	ClassNetwork        ErrorClass = "network"         // connection refused, reset, DNS failure
	ClassPanic          ErrorClass = "panic"           // the refresh panicked (a bug); the panic was recovered and logged
	ClassClosed         ErrorClass = "closed"          // the Manager was closed while the refresh ran
)

// FetchError is the error of a failed fetch. It names the tenant, provider
// and URL, carries the failure class and, for ClassStatus, the status code.
//
// errors.Is matches ErrSecurityPolicy for ClassPin, ClassBlockedAddress and
// policy-refused redirects, ErrTooLarge for ClassTooLarge, ErrNoKeys for
// ClassNoKeys and ErrUpstream for every other class, in addition to the
// wrapped cause.
type FetchError struct {
	TenantID   string
	ProviderID string
	URL        string     // the URL of the request that failed (after redirects when known)
	Class      ErrorClass // what went wrong
	StatusCode int        // the HTTP status for ClassStatus, else 0
	// RetryAfter is the delay the server asked for with Retry-After on a
	// 429 or 503 response; 0 when it sent none.
	RetryAfter time.Duration
	Err        error // the cause
}

func (e *FetchError) Error() string {
	var b strings.Builder
	b.WriteString("jwkscache: ")
	b.WriteString(e.TenantID)
	b.WriteByte('/')
	b.WriteString(e.ProviderID)
	b.WriteString(": fetch ")
	b.WriteString(shownURL(e.URL))
	b.WriteString(": ")
	b.WriteString(string(e.Class))
	if e.StatusCode != 0 {
		b.WriteString(" ")
		b.WriteString(strconv.Itoa(e.StatusCode))
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *FetchError) Unwrap() error { return e.Err }

// Is reports whether target is the sentinel of e's class.
func (e *FetchError) Is(target error) bool {
	switch target {
	case ErrSecurityPolicy:
		return e.Class == ClassPin || e.Class == ClassBlockedAddress || errors.Is(e.Err, errPolicyHop)
	case ErrTooLarge:
		return e.Class == ClassTooLarge
	case ErrNoKeys:
		return e.Class == ClassNoKeys
	case ErrUpstream:
		switch e.Class {
		case ClassPin, ClassBlockedAddress, ClassTooLarge, ClassNoKeys:
			return false
		case ClassRedirect:
			return !errors.Is(e.Err, errPolicyHop)
		}
		return true
	}
	return false
}

// errPolicyHop marks a redirect refused by the URL policy (as opposed to one
// too many hops).
var errPolicyHop = errors.New("redirect target refused")

// ProviderError is the error of a lookup or operation on one provider. It
// names the tenant and provider, and the URL when one is known.
type ProviderError struct {
	TenantID   string
	ProviderID string
	URL        string
	Op         string // "key", "resolve", "refresh", "register", ...
	Err        error
}

func (e *ProviderError) Error() string {
	s := "jwkscache: " + e.TenantID + "/" + e.ProviderID
	if e.URL != "" {
		s += " (" + shownURL(e.URL) + ")"
	}
	if e.Op != "" {
		s += ": " + e.Op
	}
	if e.Err != nil {
		// The cause usually names the pair again ("jwkscache: t/p: ..."):
		// say it once.
		msg := strings.TrimPrefix(e.Err.Error(), "jwkscache: ")
		msg = strings.TrimPrefix(msg, e.TenantID+"/"+e.ProviderID+": ")
		s += ": " + msg
	}
	return s
}

// Unwrap returns the cause.
func (e *ProviderError) Unwrap() error { return e.Err }

// noKeysError wraps ErrNoKeys together with the cause of the missing keys, so
// that errors.Is matches both.
type noKeysError struct{ cause error }

func (e *noKeysError) Error() string {
	if e.cause == nil {
		return ErrNoKeys.Error()
	}
	return fmt.Sprintf("%v: %s", ErrNoKeys, strings.TrimPrefix(e.cause.Error(), "jwkscache: "))
}

func (e *noKeysError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrNoKeys}
	}
	return []error{ErrNoKeys, e.cause}
}

// OptionsError lists every bad field of an Options value. It matches
// ErrInvalidOptions.
type OptionsError struct {
	Fields []FieldError
}

func (e *OptionsError) Error() string {
	var b strings.Builder
	b.WriteString("jwkscache: invalid options: ")
	writeFields(&b, e.Fields)
	return b.String()
}

// writeFields writes "field: message; field: message".
func writeFields(b *strings.Builder, fields []FieldError) {
	for i, f := range fields {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(f.Field)
		b.WriteString(": ")
		b.WriteString(f.Message)
	}
}

// Is matches ErrInvalidOptions.
func (e *OptionsError) Is(target error) bool { return target == ErrInvalidOptions }

// KeysUnavailable reports whether err, from a lookup or a Keyfunc, means
// that the keys needed to verify a token are unavailable for now (answer
// 503 with Retry-After: try later) rather than that the token is at fault
// (answer 401). An error can match several sentinels at once (an unknown
// kid during an outage is both ErrKeyNotFound and ErrUpstream), so the
// order of the checks decides; this is the order, first match wins:
//
//	ErrNoKeys                no usable keys: never loaded, stale window over,
//	                         a set without usable keys, a refused address   unavailable
//	a failed fetch           a refresh the token needed failed: *FetchError
//	                         (ErrUpstream, ErrTooLarge, a pin mismatch)     unavailable
//	ErrClosed                the Manager is closed                          unavailable
//	context errors           the caller's budget ran out waiting for keys   unavailable
//	anything else            ErrKeyNotFound, ErrKeyDenied, ErrNotRegistered,
//	                         jwt validation errors (issuer, expiry, ...)    the token
//
// A nil error is not unavailable.
func KeysUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var (
		fe *FetchError
		pe *panicError
	)
	return errors.Is(err, ErrNoKeys) || errors.As(err, &fe) || errors.Is(err, ErrUpstream) ||
		errors.As(err, &pe) || errors.Is(err, ErrClosed) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// shownURL returns a URL for an error text: without userinfo, query string
// and fragment (they may carry secrets; the URL field keeps the whole URL
// for programs), and capped.
func shownURL(raw string) string { return capTo(spanURL(raw), maxShownURL) }

package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jwkscache/jwkscache"
)

// The pair the one-shot commands register their provider as.
const (
	cliTenant   = "cli"
	cliProvider = "cli"
)

// loopbackPrefixes are what --allow-loopback lets through the dial guard.
var loopbackPrefixes = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// policyFlags are the fetch policy flags shared by fetch and verify.
type policyFlags struct {
	allowHTTP     bool
	allowLoopback bool
	addresses     listFlag
	domains       listFlag
	caFile        string
	timeout       time.Duration
}

// options builds the Manager's Options from the flags.
func (p *policyFlags) options() (jwkscache.Options, error) {
	o := jwkscache.Options{AllowHTTP: p.allowHTTP, AllowedDomains: p.domains}
	if p.allowLoopback {
		o.AllowedAddresses = append(o.AllowedAddresses, loopbackPrefixes...)
	}
	for _, a := range p.addresses {
		pfx, err := parsePrefix(a)
		if err != nil {
			return o, fmt.Errorf("--allow-address: %v", err)
		}
		o.AllowedAddresses = append(o.AllowedAddresses, pfx)
	}
	if p.caFile != "" {
		pem, err := os.ReadFile(p.caFile)
		if err != nil {
			return o, fmt.Errorf("--ca-file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return o, fmt.Errorf("--ca-file: %s holds no PEM certificate", p.caFile)
		}
		o.RootCAs = pool
	}
	return o, nil
}

// fetchReport is fetch's result; with --json it is printed as is, and its
// shape is stable: members are only ever added.
type fetchReport struct {
	URL string `json:"url"`
	// Discovery is true when URL is an issuer whose JWKS URL came from
	// its OpenID Connect discovery document.
	Discovery bool   `json:"discovery"`
	JWKSURL   string `json:"jwksUrl"` // the key set's URL (discovered, for an issuer)
	OK        bool   `json:"ok"`
	// Policy lists the checks of the fetch policy, in order.
	Policy      []policyCheck          `json:"policy"`
	Keys        []jwkscache.KeyInfo    `json:"keys"`
	SkippedKeys []jwkscache.SkippedKey `json:"skippedKeys"`
	TTL         *ttlReport             `json:"ttl,omitempty"`
	Validators  validatorsReport       `json:"validators"`
	Error       *fetchErrorReport      `json:"error,omitempty"`
}

type policyCheck struct {
	Check   string `json:"check"`   // scheme, domains, address, tls, url
	Verdict string `json:"verdict"` // pass, fail, skipped
	Detail  string `json:"detail"`
}

type ttlReport struct {
	Seconds   int64     `json:"seconds"`
	Source    string    `json:"source"` // max-age, expires, no-cache, no-store, default
	ExpiresAt time.Time `json:"expiresAt"`
	// Clamp is "min" or "max" when the lifetime sits at minTtl or maxTtl:
	// the IdP asked for that much or less (more), "" otherwise.
	Clamp string `json:"clamp,omitempty"`
}

type validatorsReport struct {
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"lastModified,omitempty"`
}

type fetchErrorReport struct {
	Class      string `json:"class,omitempty"`
	StatusCode int    `json:"statusCode,omitempty"`
	Message    string `json:"message"`
}

func cmdFetch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("fetch", "fetch URL [flags]", stderr)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	discovery := fs.Bool("issuer", false, "URL is an issuer: find its key set by OpenID Connect discovery")
	var pf policyFlags
	pf.define(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return flagExit(err)
	}
	if len(pos) != 1 {
		fs.Usage()
		return exitUsage
	}
	opts, err := pf.options()
	if err != nil {
		fmt.Fprintln(stderr, "jwks-cache fetch:", err)
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(ctx, pf.timeout)
	defer cancel()
	rep, err := fetchOnce(ctx, pos[0], *discovery, opts)
	if err != nil {
		fmt.Fprintln(stderr, "jwks-cache fetch:", err)
		return exitFailure
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	} else {
		printFetch(stdout, rep)
	}
	if !rep.OK {
		return exitFailure
	}
	return exitOK
}

// define declares the policy flags on fs.
func (p *policyFlags) define(fs *flag.FlagSet) {
	fs.BoolVar(&p.allowHTTP, "allow-http", false, "allow an http URL (https only by default)")
	fs.BoolVar(&p.allowLoopback, "allow-loopback", false, "let the dial guard through to loopback (127.0.0.0/8, ::1), for a local IdP")
	fs.Var(&p.addresses, "allow-address", "a CIDR `prefix` the dial guard lets through although it is private or loopback (repeatable)")
	fs.Var(&p.domains, "allow-domain", "allow only hosts in this `domain` and its subdomains (repeatable)")
	fs.StringVar(&p.caFile, "ca-file", "", "trust the PEM certificates of this `file` as well as the system roots")
	fs.DurationVar(&p.timeout, "timeout", 15*time.Second, "give up after this `duration`")
}

// fetchOnce registers rawURL with a fresh Manager, waits for its first
// load and reports what the cache made of it.
func fetchOnce(ctx context.Context, rawURL string, discovery bool, opts jwkscache.Options) (*fetchReport, error) {
	m, err := jwkscache.New(opts)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	reg := jwkscache.Registration{TenantID: cliTenant, ProviderID: cliProvider, AllowHTTP: opts.AllowHTTP}
	if discovery {
		reg.Issuer = rawURL
	} else {
		reg.JWKSURL = rawURL
	}
	rep := &fetchReport{URL: rawURL, Discovery: discovery, Keys: []jwkscache.KeyInfo{}, SkippedKeys: []jwkscache.SkippedKey{}}
	rep.Policy = urlChecks(rawURL, opts)

	if err := m.Register(ctx, reg); err != nil {
		var re *jwkscache.RegistrationError
		if !errors.As(err, &re) {
			return nil, err
		}
		msgs := make([]string, 0, len(re.Fields))
		for _, f := range re.Fields {
			msgs = append(msgs, f.Message)
		}
		msg := strings.Join(msgs, "; ")
		if errors.Is(err, jwkscache.ErrSecurityPolicy) {
			rep.Policy = append(rep.Policy, policyCheck{"url", "fail", "refused: " + msg})
		} else {
			rep.Policy = append(rep.Policy, policyCheck{"url", "fail", "invalid URL: " + msg})
		}
		rep.Policy = append(rep.Policy, policyCheck{"address", "skipped", "refused before any connection"})
		rep.Error = &fetchErrorReport{Message: cliText(err.Error())}
		return rep, nil
	}
	rep.Policy = append(rep.Policy, policyCheck{"url", "pass", "the cache accepts the URL"})

	_, rerr := m.Resolve(ctx, cliTenant, cliProvider)
	st, err := m.Status(cliTenant, cliProvider)
	if err != nil {
		return nil, err
	}
	rep.JWKSURL = st.JWKSURL
	rep.Keys = append(rep.Keys, st.Keys...)
	rep.SkippedKeys = append(rep.SkippedKeys, st.SkippedKeys...)
	if rerr != nil {
		rep.Error = describeFetchError(rerr, st)
		rep.Policy = append(rep.Policy, connectionChecks(rawURL, rep.Error.Class, rep.Error.Message)...)
		return rep, nil
	}
	rep.OK = true
	rep.Policy = append(rep.Policy, connectionChecks(rawURL, "", "")...)
	ttl := st.ExpiresAt.Sub(st.LastRefresh)
	d := reg.WithDefaults()
	t := &ttlReport{Seconds: int64(ttl.Round(time.Second) / time.Second), Source: st.TTLSource, ExpiresAt: st.ExpiresAt.UTC()}
	switch {
	case st.TTLSource == "no-cache" || st.TTLSource == "no-store":
		// minTtl by definition, not a clamp
	case ttl <= d.MinTTL:
		t.Clamp = "min"
	case ttl >= d.MaxTTL:
		t.Clamp = "max"
	}
	rep.TTL = t
	rep.Validators = validatorsReport{ETag: st.ETag, LastModified: st.LastModified}
	return rep, nil
}

// urlChecks judges the scheme and the domain allowlist as the cache does
// (the cache's own verdict follows as the "url" check).
func urlChecks(rawURL string, o jwkscache.Options) []policyCheck {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil
	}
	var out []policyCheck
	switch u.Scheme {
	case "https":
		out = append(out, policyCheck{"scheme", "pass", "https"})
	case "http":
		if o.AllowHTTP {
			out = append(out, policyCheck{"scheme", "pass", "http, allowed by --allow-http"})
		} else {
			out = append(out, policyCheck{"scheme", "fail", "http is refused (--allow-http allows it)"})
		}
	default:
		out = append(out, policyCheck{"scheme", "fail", fmt.Sprintf("scheme %q: https only", u.Scheme)})
	}
	host := strings.ToLower(u.Hostname())
	if len(o.AllowedDomains) == 0 {
		out = append(out, policyCheck{"domains", "pass", "no allowlist (--allow-domain sets one)"})
	} else {
		ok := false
		for _, d := range o.AllowedDomains {
			if host == d || strings.HasSuffix(host, "."+d) {
				ok = true
			}
		}
		if ok {
			out = append(out, policyCheck{"domains", "pass", host + " is within " + strings.Join(o.AllowedDomains, ", ")})
		} else {
			out = append(out, policyCheck{"domains", "fail", host + " is outside " + strings.Join(o.AllowedDomains, ", ")})
		}
	}
	return out
}

// connectionChecks judges the address and TLS checks from the fetch's
// error class ("" for a successful fetch).
func connectionChecks(rawURL, class, msg string) []policyCheck {
	https := strings.HasPrefix(strings.ToLower(rawURL), "https:")
	var out []policyCheck
	switch class {
	case string(jwkscache.ClassBlockedAddress):
		return append(out, policyCheck{"address", "fail", msg},
			policyCheck{"tls", "skipped", "no connection was made"})
	case string(jwkscache.ClassNetwork), string(jwkscache.ClassTimeout):
		return append(out, policyCheck{"address", "skipped", "no connection could be made"},
			policyCheck{"tls", "skipped", "no connection was made"})
	}
	out = append(out, policyCheck{"address", "pass", "the dial guard let the connection through (a public address, or one within --allow-address)"})
	switch {
	case !https:
		out = append(out, policyCheck{"tls", "skipped", "plain http"})
	case class == string(jwkscache.ClassTLS):
		out = append(out, policyCheck{"tls", "fail", msg})
	case class == string(jwkscache.ClassPin):
		out = append(out, policyCheck{"tls", "fail", msg})
	default:
		out = append(out, policyCheck{"tls", "pass", "certificate chain verified"})
	}
	return out
}

func describeFetchError(err error, st jwkscache.ProviderStatus) *fetchErrorReport {
	r := &fetchErrorReport{Class: st.LastErrorClass, Message: err.Error()}
	var fe *jwkscache.FetchError
	if errors.As(err, &fe) {
		r.Class, r.StatusCode, r.Message = string(fe.Class), fe.StatusCode, fe.Error()
	} else if st.LastError != "" {
		r.Message = st.LastError
	}
	r.Message = cliText(r.Message)
	if errors.Is(err, context.DeadlineExceeded) && r.Class == "" {
		r.Class = string(jwkscache.ClassTimeout)
	}
	return r
}

func printFetch(w io.Writer, r *fetchReport) {
	if r.Discovery {
		fmt.Fprintf(w, "issuer   %s\n", r.URL)
		if r.JWKSURL != "" {
			fmt.Fprintf(w, "jwks     %s (discovered)\n", r.JWKSURL)
		}
	} else {
		fmt.Fprintf(w, "url      %s\n", r.URL)
	}
	fmt.Fprintln(w, "policy")
	for _, c := range r.Policy {
		fmt.Fprintf(w, "  %-8s %-7s %s\n", c.Check, c.Verdict, c.Detail)
	}
	if r.Error != nil {
		what := "refused"
		if r.Error.Class != "" {
			what = r.Error.Class
		}
		if r.Error.StatusCode != 0 {
			what += fmt.Sprintf(" %d", r.Error.StatusCode)
		}
		fmt.Fprintf(w, "FAILED   %s: %s\n", what, r.Error.Message)
	}
	if len(r.Keys) > 0 || r.OK {
		fmt.Fprintf(w, "keys     %d usable\n", len(r.Keys))
		for _, k := range r.Keys {
			fmt.Fprintf(w, "  kid %-24q kty %-3s alg %-6s use %-3s verifies %s\n", k.KID, k.KTY, dash(k.Alg), dash(k.Use), strings.Join(k.Algs, " "))
		}
	}
	if len(r.SkippedKeys) > 0 {
		fmt.Fprintf(w, "skipped  %d\n", len(r.SkippedKeys))
		for _, k := range r.SkippedKeys {
			fmt.Fprintf(w, "  kid %-24q #%d: %s\n", k.KID, k.Index, k.Reason)
		}
	}
	if r.TTL != nil {
		ttl := time.Duration(r.TTL.Seconds) * time.Second
		note := ""
		switch r.TTL.Clamp {
		case "min":
			note = ", at minTtl (the IdP asked for this or less)"
		case "max":
			note = ", at maxTtl (the IdP asked for this or more)"
		}
		fmt.Fprintf(w, "ttl      %s from %s%s; fresh until %s\n", ttl, r.TTL.Source, note, r.TTL.ExpiresAt.Format(time.RFC3339))
	}
	if r.OK {
		fmt.Fprintf(w, "etag     %s\n", dash(r.Validators.ETag))
		fmt.Fprintf(w, "modified %s\n", dash(r.Validators.LastModified))
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

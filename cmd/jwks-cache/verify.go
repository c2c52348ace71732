package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"github.com/jwkscache/jwkscache"
)

// supportedAlgs are the JWS algorithms the cache's keys verify.
var supportedAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// maxTokenBytes bounds a token read from stdin.
const maxTokenBytes = 64 << 10

type verifyFlags struct {
	policyFlags
	jwks     string
	issuer   string
	daemon   string
	tenant   string
	provider string
	audience string
	algs     listFlag
	leeway   time.Duration
}

// verdict is the outcome of verify.
type verdict struct {
	Valid  bool
	Reason string // why not, for people
	Keys   string // where the keys came from
	KID    string // the key that verified the token
	// Unavailable is true when the keys could not be had: the token was
	// not judged.
	Unavailable bool
}

func cmdVerify(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := newFlagSet("verify", "verify TOKEN|- (--jwks URL | --issuer ISSUER | --daemon URL --tenant T --provider P) [flags]", stderr)
	var vf verifyFlags
	vf.define(fs)
	fs.StringVar(&vf.jwks, "jwks", "", "verify with the key set at this `URL`")
	fs.StringVar(&vf.issuer, "issuer", "", "the `issuer` the token must have; alone, its key set is found by OpenID Connect discovery")
	fs.StringVar(&vf.daemon, "daemon", "", "verify with the keys a jwks-cache daemon at this `URL` serves (with --tenant and --provider)")
	fs.StringVar(&vf.tenant, "tenant", "", "the daemon's `tenant`")
	fs.StringVar(&vf.provider, "provider", "", "the daemon's `provider`")
	fs.StringVar(&vf.audience, "audience", "", "the `audience` the token must have")
	fs.Var(&vf.algs, "alg", "the allowed `algorithms`, comma-separated (default: every asymmetric one the cache supports)")
	fs.DurationVar(&vf.leeway, "leeway", 0, "clock skew `duration` allowed on exp, nbf and iat")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return flagExit(err)
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "jwks-cache verify: give the token as the one argument, or - to read it from standard input")
		return exitUsage
	}
	modes := 0
	for _, set := range []bool{vf.jwks != "", vf.daemon != "", vf.jwks == "" && vf.daemon == "" && vf.issuer != ""} {
		if set {
			modes++
		}
	}
	switch {
	case modes != 1:
		fmt.Fprintln(stderr, "jwks-cache verify: give one of --jwks URL, --issuer ISSUER or --daemon URL")
		return exitUsage
	case vf.daemon != "" && (vf.tenant == "" || vf.provider == ""):
		fmt.Fprintln(stderr, "jwks-cache verify: --daemon needs --tenant and --provider")
		return exitUsage
	}
	if len(vf.algs) == 0 {
		vf.algs = supportedAlgs
	}
	for _, a := range vf.algs {
		if !slices.Contains(supportedAlgs, a) {
			fmt.Fprintf(stderr, "jwks-cache verify: --alg %s: not one of %s\n", a, strings.Join(supportedAlgs, " "))
			return exitUsage
		}
	}
	raw := pos[0]
	if raw == "-" {
		raw, err = readToken(stdin)
		if err != nil {
			fmt.Fprintln(stderr, "jwks-cache verify:", err)
			return exitUsage
		}
	}
	ctx, cancel := context.WithTimeout(ctx, vf.timeout)
	defer cancel()

	// What the token says, before any check: never the token itself.
	tok, _, perr := jwt.NewParser().ParseUnverified(raw, jwt.MapClaims{})
	if perr != nil {
		fmt.Fprintf(stdout, "INVALID  malformed: %s\n", cleanJWTError(perr))
		return exitFailure
	}
	describeToken(stdout, tok)
	alg, _ := tok.Header["alg"].(string)
	if !slices.Contains(vf.algs, alg) {
		fmt.Fprintf(stdout, "INVALID  alg not allowed: the token is signed with %q; allowed: %s\n", alg, strings.Join(vf.algs, " "))
		return exitFailure
	}

	var v verdict
	if vf.daemon != "" {
		v, err = verifyWithDaemon(ctx, raw, tok, &vf)
	} else {
		v, err = verifyWithManager(ctx, raw, &vf)
	}
	if err != nil {
		fmt.Fprintln(stderr, "jwks-cache verify:", err)
		return exitUsage
	}
	if v.Keys != "" {
		fmt.Fprintf(stdout, "keys     %s\n", v.Keys)
	}
	switch {
	case v.Valid:
		fmt.Fprintf(stdout, "VALID    signature verified with key %q; claims valid\n", v.KID)
		return exitOK
	case v.Unavailable:
		fmt.Fprintf(stdout, "UNKNOWN  keys unavailable: %s\n", v.Reason)
		return exitUnavailable
	}
	fmt.Fprintf(stdout, "INVALID  %s\n", v.Reason)
	return exitFailure
}

func readToken(r io.Reader) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxTokenBytes+1))
	if err != nil {
		return "", err
	}
	if len(b) > maxTokenBytes {
		return "", fmt.Errorf("token on standard input is over %d bytes", maxTokenBytes)
	}
	s := bufio.NewScanner(strings.NewReader(string(b)))
	s.Buffer(nil, maxTokenBytes+1)
	for s.Scan() {
		if t := strings.TrimSpace(s.Text()); t != "" {
			return t, nil
		}
	}
	return "", errors.New("no token on standard input")
}

// describeToken prints the token's header and registered claims.
func describeToken(w io.Writer, tok *jwt.Token) {
	alg, _ := tok.Header["alg"].(string)
	kid, hasKID := tok.Header["kid"].(string)
	if !hasKID {
		kid = "(none)"
	}
	fmt.Fprintf(w, "token    alg %s, kid %s\n", alg, kid)
	c := tok.Claims
	if iss, err := c.GetIssuer(); err == nil && iss != "" {
		fmt.Fprintf(w, "  iss    %s\n", iss)
	}
	if sub, err := c.GetSubject(); err == nil && sub != "" {
		fmt.Fprintf(w, "  sub    %s\n", sub)
	}
	if aud, err := c.GetAudience(); err == nil && len(aud) > 0 {
		fmt.Fprintf(w, "  aud    %s\n", strings.Join(aud, " "))
	}
	now := time.Now()
	if exp, err := c.GetExpirationTime(); err == nil && exp != nil {
		fmt.Fprintf(w, "  exp    %s (%s)\n", exp.UTC().Format(time.RFC3339), relTime(exp.Time, now))
	}
	if nbf, err := c.GetNotBefore(); err == nil && nbf != nil {
		fmt.Fprintf(w, "  nbf    %s (%s)\n", nbf.UTC().Format(time.RFC3339), relTime(nbf.Time, now))
	}
}

func relTime(t, now time.Time) string {
	d := t.Sub(now).Round(time.Second)
	if d >= 0 {
		return "in " + d.String()
	}
	return (-d).String() + " ago"
}

// parserOptions are the claim checks of verify.
func (vf *verifyFlags) parserOptions() []jwt.ParserOption {
	opts := []jwt.ParserOption{jwt.WithValidMethods(vf.algs), jwt.WithLeeway(vf.leeway), jwt.WithIssuedAt()}
	if vf.audience != "" {
		opts = append(opts, jwt.WithAudience(vf.audience))
	}
	if vf.issuer != "" {
		opts = append(opts, jwt.WithIssuer(vf.issuer))
	}
	return opts
}

// verifyWithManager verifies raw with a Manager's Keyfunc: the key set of
// --jwks, or the one --issuer's discovery names.
func verifyWithManager(ctx context.Context, raw string, vf *verifyFlags) (verdict, error) {
	opts, err := vf.options()
	if err != nil {
		return verdict{}, err
	}
	m, err := jwkscache.New(opts)
	if err != nil {
		return verdict{}, err
	}
	defer m.Close()
	reg := jwkscache.Registration{TenantID: cliTenant, ProviderID: cliProvider, JWKSURL: vf.jwks, Issuer: vf.issuer, AllowHTTP: vf.allowHTTP}
	if err := m.Register(ctx, reg); err != nil {
		return verdict{}, err
	}
	var kid string
	kf := m.KeyfuncContext(ctx, cliTenant, cliProvider)
	tok, err := jwt.Parse(raw, func(t *jwt.Token) (any, error) {
		k, err := kf(t)
		if err == nil {
			kid, _ = t.Header["kid"].(string)
		}
		return k, err
	}, vf.parserOptions()...)
	v := verdict{KID: kid}
	if st, serr := m.Status(cliTenant, cliProvider); serr == nil && st.JWKSURL != "" {
		v.Keys = fmt.Sprintf("%s (%d usable)", st.JWKSURL, len(st.Keys))
		if len(st.Keys) == 0 && st.ErrorCount == 0 {
			v.Keys = st.JWKSURL + " (not fetched: the token was refused first)"
		}
	}
	if err == nil && tok.Valid {
		v.Valid = true
		return v, nil
	}
	v.Reason, v.Unavailable = explain(err, vf.issuer)
	return v, nil
}

// verifyWithDaemon verifies raw with the keys a daemon serves: its GET
// .../jwks (asking for the token's kid, so that a kid the daemon lacks
// makes it revalidate), then go-jose for the signature and golang-jwt's
// validator for the claims.
func verifyWithDaemon(ctx context.Context, raw string, tok *jwt.Token, vf *verifyFlags) (verdict, error) {
	base, err := url.Parse(strings.TrimSuffix(vf.daemon, "/"))
	if err != nil || base.Host == "" || base.Scheme != "http" && base.Scheme != "https" {
		return verdict{}, fmt.Errorf("--daemon %q: want http://host:port or https://host:port", vf.daemon)
	}
	u := base.JoinPath("tenants", vf.tenant, "providers", vf.provider, "jwks")
	kid, hasKID := tok.Header["kid"].(string)
	if hasKID && kid != "" {
		q := url.Values{"kid": {kid}}
		u.RawQuery = q.Encode()
	}
	client := &http.Client{Timeout: vf.timeout}
	if vf.caFile != "" {
		o, err := vf.options()
		if err != nil {
			return verdict{}, err
		}
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: o.RootCAs, MinVersion: tls.VersionTLS12}}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return verdict{}, err
	}
	v := verdict{Keys: u.Redacted()}
	resp, err := client.Do(req)
	if err != nil {
		v.Unavailable, v.Reason = true, "daemon: "+err.Error()
		return v, nil
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		v.Unavailable, v.Reason = true, "daemon: reading the answer: "+err.Error()
		return v, nil
	}
	switch {
	case resp.StatusCode == http.StatusNotFound && hasKID:
		var e struct{ Message string }
		_ = json.Unmarshal(body, &e)
		v.Reason = fmt.Sprintf("unknown kid: the daemon has no key %q for %s/%s (%s)", kid, vf.tenant, vf.provider, e.Message)
		return v, nil
	case resp.StatusCode != http.StatusOK:
		var e struct{ Error, Message string }
		_ = json.Unmarshal(body, &e)
		v.Unavailable, v.Reason = true, fmt.Sprintf("daemon answered %s: %s %s", resp.Status, e.Error, e.Message)
		return v, nil
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		v.Unavailable, v.Reason = true, "daemon: the answer is not a JWK set: "+err.Error()
		return v, nil
	}
	v.Keys = fmt.Sprintf("%s (%d keys)", u.Redacted(), len(set.Keys))
	payload, keyID, err := verifyJWS(raw, &set, vf.algs)
	if err != nil {
		v.Reason = err.Error()
		return v, nil
	}
	v.KID = keyID
	var claims jwt.MapClaims
	if err := json.Unmarshal(payload, &claims); err != nil {
		v.Reason = "malformed: the payload is not a JSON object"
		return v, nil
	}
	if err := jwt.NewValidator(vf.parserOptions()...).Validate(claims); err != nil {
		v.Reason, _ = explain(err, vf.issuer)
		return v, nil
	}
	v.Valid = true
	return v, nil
}

// explain says why a token failed, for people, and whether the failure
// is the keys' unavailability rather than the token's fault. Several
// claim failures are all listed.
func explain(err error, issuer string) (reason string, unavailable bool) {
	if err == nil {
		return "not valid", false
	}
	var reasons []string
	add := func(s string) {
		if !slices.Contains(reasons, s) {
			reasons = append(reasons, s)
		}
	}
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed: " + cleanJWTError(err), false
	case errors.Is(err, jwt.ErrTokenUnverifiable) || errors.Is(err, jwt.ErrTokenSignatureInvalid):
		// The key lookup or the signature: say which.
		switch {
		case errors.Is(err, jwt.ErrTokenInvalidIssuer):
			return "wrong issuer: " + issuerDetail(err, issuer), false
		case errors.Is(err, jwkscache.ErrKeyDenied):
			return "key denied: " + cleanJWTError(err), false
		case errors.Is(err, jwkscache.ErrKeyNotFound):
			return "unknown kid: " + cleanJWTError(err), false
		case jwkscache.KeysUnavailable(err):
			return cleanJWTError(err), true
		case errors.Is(err, jwt.ErrTokenSignatureInvalid) && strings.Contains(err.Error(), "signing method"):
			return "alg not allowed: " + cleanJWTError(err), false
		case errors.Is(err, jwt.ErrTokenSignatureInvalid):
			return "bad signature: the key with this kid does not verify it", false
		}
		return cleanJWTError(err), false
	}
	if errors.Is(err, jwt.ErrTokenExpired) {
		add("expired")
	}
	if errors.Is(err, jwt.ErrTokenNotValidYet) {
		add("not valid yet (nbf is in the future)")
	}
	if errors.Is(err, jwt.ErrTokenUsedBeforeIssued) {
		add("issued in the future (iat)")
	}
	if errors.Is(err, jwt.ErrTokenInvalidIssuer) {
		add("wrong issuer: " + issuerDetail(err, issuer))
	}
	if errors.Is(err, jwt.ErrTokenInvalidAudience) {
		add("wrong audience")
	}
	if errors.Is(err, jwt.ErrTokenRequiredClaimMissing) {
		add("a required claim is missing")
	}
	if len(reasons) == 0 {
		return cleanJWTError(err), false
	}
	return strings.Join(reasons, "; ") + " (" + cleanJWTError(err) + ")", false
}

func issuerDetail(err error, issuer string) string {
	if issuer != "" {
		return "expected " + issuer
	}
	return cleanJWTError(err)
}

// cleanJWTError is an error's text without golang-jwt's "token is
// unverifiable: error while executing keyfunc: " preamble.
func cleanJWTError(err error) string {
	s := err.Error()
	for _, p := range []string{"token is unverifiable: ", "error while executing keyfunc: ", "token is malformed: "} {
		s = strings.Replace(s, p, "", 1)
	}
	return cliText(s)
}

// cliText removes the one-off Manager's tenant and provider ("cli/cli")
// from an error text: they mean nothing to the user.
func cliText(s string) string {
	pair := cliTenant + "/" + cliProvider
	if rest, ok := strings.CutPrefix(s, "jwkscache: "+pair+" ("); ok {
		if _, after, ok := strings.Cut(rest, "): "); ok {
			s = after
		}
	}
	for _, p := range []string{"jwkscache: " + pair + ": ", pair + ": ", "keyfunc: "} {
		s = strings.ReplaceAll(s, p, "")
	}
	return s
}

// verifyJWS checks raw's signature with the keys of set that match its kid
// (any key when it has none) and alg, with go-jose, and returns its
// payload and the kid of the key that verified it. Its errors say why,
// for people: "malformed", "unknown kid" or "bad signature".
func verifyJWS(raw string, set *jose.JSONWebKeySet, allowed []string) ([]byte, string, error) {
	algs := make([]jose.SignatureAlgorithm, 0, len(allowed))
	for _, a := range allowed {
		algs = append(algs, jose.SignatureAlgorithm(a))
	}
	jws, err := jose.ParseSignedCompact(raw, algs)
	if err != nil {
		return nil, "", fmt.Errorf("malformed: %v", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, "", errors.New("malformed: not exactly one signature")
	}
	h := jws.Signatures[0].Header
	var candidates []jose.JSONWebKey
	for _, k := range set.Keys {
		if (h.KeyID == "" || k.KeyID == h.KeyID) && (k.Algorithm == "" || k.Algorithm == h.Algorithm) {
			candidates = append(candidates, k)
		}
	}
	if len(candidates) == 0 {
		return nil, "", fmt.Errorf("unknown kid: no key %q for alg %s among %d keys", h.KeyID, h.Algorithm, len(set.Keys))
	}
	for _, k := range candidates {
		if p, err := jws.Verify(k.Key); err == nil {
			return p, k.KeyID, nil
		}
	}
	return nil, "", fmt.Errorf("bad signature: no key %q verifies it", h.KeyID)
}

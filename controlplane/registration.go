package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/jwkscache/jwkscache"
)

// dryRunVersion is a registration version that no registration has (they
// are hex digests): RegisterIfVersion with it validates a registration
// against the Manager's policy (its own rules, the Options' allowlists and
// address ranges, issuer uniqueness) and changes nothing, whatever the
// outcome.
const dryRunVersion = "\x00controlplane-dry-run"

// PUT /tenants/{tenantId}/providers/{providerId}
func (h *Handler) put(w http.ResponseWriter, r *http.Request, _ principal, tenant, provider, _ string) {
	cond, ok := h.parseIfMatch(w, r)
	if !ok {
		return
	}
	if msg := checkJSONContentType(r.Header.Values("Content-Type")); msg != "" {
		h.writeError(w, r, http.StatusUnsupportedMediaType, codeUnsupportedMedia, msg, nil)
		return
	}
	if r.ContentLength > maxBody {
		h.writeError(w, r, http.StatusRequestEntityTooLarge, codeTooLarge, "the body is over 64 KiB", nil)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			h.writeError(w, r, http.StatusRequestEntityTooLarge, codeTooLarge, "the body is over 64 KiB", nil)
			return
		}
		h.writeError(w, r, http.StatusBadRequest, codeInvalidRequest, "reading the body failed", nil)
		return
	}
	reg, details, msg := parseRegistration(body)
	// The path is authoritative: a member that contradicts it is an error.
	if reg.TenantID != "" && reg.TenantID != tenant {
		addDetail(details, "tenantId", fmt.Sprintf("%s differs from the path's %s", quote(reg.TenantID), quote(tenant)))
	}
	if reg.ProviderID != "" && reg.ProviderID != provider {
		addDetail(details, "providerId", fmt.Sprintf("%s differs from the path's %s", quote(reg.ProviderID), quote(provider)))
	}
	reg.TenantID, reg.ProviderID = tenant, provider
	ctx := r.Context()
	if msg != "" {
		h.writeError(w, r, http.StatusBadRequest, codeInvalidRegistration, "invalid registration: "+msg, nil)
		return
	}
	security := false
	merge := func(err error) {
		var re *jwkscache.RegistrationError
		if errors.As(err, &re) {
			for _, f := range re.Fields {
				addDetail(details, f.Field, f.Message)
				security = security || f.Security
			}
		}
		if errors.Is(err, jwkscache.ErrSecurityPolicy) {
			security = true
		}
	}
	if len(details) > 0 {
		// Refused already; name the other bad fields too, from the
		// Manager's own checks, without applying anything.
		merge(h.m.RegisterIfVersion(ctx, reg, dryRunVersion))
		h.refuseRegistration(w, r, details, security)
		return
	}
	err = h.register(ctx, reg, cond)
	var re *jwkscache.RegistrationError
	switch {
	case err == nil:
		h.writeStatus(w, r, http.StatusAccepted, tenant, provider)
	case errors.As(err, &re):
		merge(err)
		h.refuseRegistration(w, r, details, security)
	case errors.Is(err, jwkscache.ErrSecurityPolicy):
		h.writeError(w, r, http.StatusForbidden, codeSecurityPolicy, trimPrefixes(err.Error()), nil)
	case errors.Is(err, jwkscache.ErrInvalidRegistration):
		h.writeError(w, r, http.StatusBadRequest, codeInvalidRegistration, trimPrefixes(err.Error()), nil)
	case cond.present && errors.Is(err, jwkscache.ErrNotRegistered):
		h.writeError(w, r, http.StatusConflict, codeConflict, "If-Match names a registration, but the provider does not exist", nil)
	case errors.Is(err, errConflict), errors.Is(err, jwkscache.ErrVersionMismatch):
		h.writeError(w, r, http.StatusConflict, codeConflict, "If-Match does not match the registration's current version; read the status again", nil)
	default:
		h.managerError(w, r, tenant, provider, err)
	}
}

// refuseRegistration answers 403 security_policy when a refused field
// breaks the security policy, else 400 invalid_registration; details name
// every bad field either way.
func (h *Handler) refuseRegistration(w http.ResponseWriter, r *http.Request, details map[string]string, security bool) {
	msg := joinDetails(details)
	if len(details) > maxDetails {
		msg = fmt.Sprintf("%d bad fields (the first %d in details): %s", len(details), maxDetails, msg)
	}
	if security {
		h.writeError(w, r, http.StatusForbidden, codeSecurityPolicy, "registration refused by the security policy: "+msg, details)
		return
	}
	h.writeError(w, r, http.StatusBadRequest, codeInvalidRegistration, "invalid registration: "+msg, details)
}

// addDetail records msg for field unless the field has one already.
func addDetail(details map[string]string, field, msg string) {
	if _, ok := details[field]; !ok {
		details[field] = msg
	}
}

// trimPrefixes drops the package prefixes of an error text.
func trimPrefixes(s string) string { return strings.ReplaceAll(s, "jwkscache: ", "") }

// errConflict is an If-Match that cannot match.
var errConflict = errors.New("controlplane: If-Match does not match")

// precondition is a parsed If-Match.
type precondition struct {
	present bool
	any     bool     // *
	tags    []string // the strong entity tags' opaque values
}

// parseIfMatch parses If-Match (RFC 9110, section 13.1.1): "*" or a list
// of entity tags. A malformed one answers 400 and reports false.
func (h *Handler) parseIfMatch(w http.ResponseWriter, r *http.Request) (precondition, bool) {
	vals := r.Header.Values("If-Match")
	if len(vals) == 0 {
		return precondition{}, true
	}
	c := precondition{present: true}
	joined := strings.Join(vals, ",")
	bad := func(why string) (precondition, bool) {
		details := map[string]string{"If-Match": why}
		h.writeError(w, r, http.StatusBadRequest, codeInvalidRequest, "If-Match: "+why, details)
		return precondition{}, false
	}
	if len(joined) > 1024 {
		return bad("over 1024 characters")
	}
	if strings.TrimSpace(joined) == "*" {
		c.any = true
		return c, true
	}
	n := 0
	err := eachETag(joined, func(tag string, weak bool) {
		n++
		if !weak { // If-Match compares strongly: a weak tag never matches
			c.tags = append(c.tags, tag)
		}
	})
	if err != nil {
		return bad(err.Error())
	}
	if n == 0 {
		return bad("empty; send a quoted registrationVersion, a list of them, or *")
	}
	return c, true
}

// register applies reg under the precondition c. A precondition that
// cannot match still has reg validated first, so that a bad registration
// is 400 whatever its If-Match, as with a single tag.
func (h *Handler) register(ctx context.Context, reg jwkscache.Registration, c precondition) error {
	switch {
	case !c.present:
		return h.m.Register(ctx, reg)
	case c.any:
		return h.m.RegisterIfVersion(ctx, reg, "*")
	}
	version := dryRunVersion
	switch len(c.tags) {
	case 0:
	case 1:
		version = c.tags[0]
	default:
		if st, err := h.m.Status(reg.TenantID, reg.ProviderID); err == nil {
			for _, t := range c.tags {
				if t == st.RegistrationVersion {
					version = t
					break
				}
			}
		}
	}
	// A tag "*" (quoted) or "" names no version; RegisterIfVersion would
	// take the first for the wildcard, and refuse the second unvalidated.
	if version == "" || version == "*" {
		version = dryRunVersion
	}
	err := h.m.RegisterIfVersion(ctx, reg, version)
	if err == nil && version == dryRunVersion { // cannot happen
		return errConflict
	}
	return err
}

// checkJSONContentType returns why a Content-Type is not JSON, or "".
func checkJSONContentType(vals []string) string {
	if len(vals) != 1 {
		return "the body must be application/json"
	}
	mt, params, err := mime.ParseMediaType(vals[0])
	if err != nil || mt != "application/json" {
		return "the body must be application/json"
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return "the body must be application/json in UTF-8"
	}
	return ""
}

// Registration bodies.

// memberKind is what the contract's Registration schema wants of a member.
type memberKind int

const (
	kindString   memberKind = iota // a non-empty string
	kindBool                       // a boolean
	kindInt                        // an integer
	kindPositive                   // an integer of at least 1
	kindDuration                   // an ISO-8601 duration string
	kindStrings                    // an array of strings
	kindObject                     // an object (retryPolicy)
	kindJitter                     // none, full or decorrelated
)

var memberKinds = map[string]memberKind{
	"tenantId": kindString, "providerId": kindString, "jwksUrl": kindString, "issuer": kindString,
	"allowHttp": kindBool, "allowedDomains": kindStrings, "refreshEarly": kindDuration,
	"staleWhileError": kindDuration, "minTtl": kindDuration, "maxTtl": kindDuration,
	"maxResponseBytes": kindPositive, "negativeCacheTtl": kindDuration, "maxRedirects": kindInt,
	"pinnedSpki": kindStrings, "prefetchJitter": kindDuration, "retryPolicy": kindObject,
	"retryPolicy.maxRetries": kindInt, "retryPolicy.attemptTimeout": kindDuration,
	"retryPolicy.initialBackoff": kindDuration, "retryPolicy.maxBackoff": kindDuration,
	"retryPolicy.deadline": kindDuration, "retryPolicy.jitter": kindJitter,
}

var kindNames = map[memberKind]string{
	kindString: "a non-empty string", kindBool: "a boolean", kindInt: "an integer",
	kindPositive: "an integer of at least 1", kindDuration: `an ISO-8601 duration string such as "PT30S"`,
	kindStrings: "an array of strings", kindObject: "an object", kindJitter: "none, full or decorrelated",
}

// member is one member of a JSON object, in document order.
type member struct {
	name string
	raw  json.RawMessage
}

// objectMembers reads the members of the JSON object doc. It fails when doc
// is not exactly one object.
func objectMembers(doc []byte) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	tok, err := dec.Token()
	if err != nil {
		return nil, errors.New("not JSON")
	}
	if tok != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	var out []member
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, errors.New("not JSON")
		}
		name, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, errors.New("not JSON")
		}
		out = append(out, member{name, raw})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, errors.New("not JSON")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the registration object")
	}
	return out, nil
}

// parseRegistration reads a registration body. It returns the registration
// made of the members that are valid on their own, the problems of the
// others by field (every one of them), and a message for a body that is
// not a registration object at all.
func parseRegistration(body []byte) (jwkscache.Registration, map[string]string, string) {
	details := make(map[string]string)
	var reg jwkscache.Registration
	if len(bytes.TrimSpace(body)) == 0 {
		return reg, details, "the body is empty; send a registration object"
	}
	fullErr := json.Unmarshal(body, &reg)
	members, err := objectMembers(body)
	if err != nil {
		return jwkscache.Registration{}, details, "the body is not a registration object: " + err.Error()
	}
	good := checkMembers(members, "", details)
	if fullErr == nil && len(details) == 0 {
		return reg, details, ""
	}
	// Decode what is valid, so that the Manager's checks can name the
	// remaining problems.
	reg = jwkscache.Registration{}
	if err := json.Unmarshal(encodeMembers(good), &reg); err != nil {
		return jwkscache.Registration{}, details, cleanJSONError(err.Error())
	}
	if len(details) == 0 { // cannot happen: fullErr has a member to blame
		return reg, details, cleanJSONError(fullErr.Error())
	}
	return reg, details, ""
}

// checkMembers checks each member of a registration object (prefix "") or
// of its retryPolicy ("retryPolicy.") on its own, records the problems in
// details and returns the members without problems.
func checkMembers(members []member, prefix string, details map[string]string) []member {
	seen := make(map[string]bool, len(members))
	var good []member
	for _, m := range members {
		field := prefix + m.name
		if seen[m.name] {
			details[field] = "appears more than once"
			continue
		}
		seen[m.name] = true
		kind, known := memberKinds[field]
		if !known {
			msg := "unknown field"
			for name := range memberKinds {
				if n, ok := strings.CutPrefix(name, prefix); ok && !strings.Contains(n, ".") && strings.EqualFold(n, m.name) {
					msg += fmt.Sprintf(" (names are case-sensitive: did you mean %q?)", n)
					break
				}
			}
			details[field] = msg
			continue
		}
		raw := bytes.TrimSpace(m.raw)
		if string(raw) == "null" {
			details[field] = "must be " + kindNames[kind] + ", not null"
			continue
		}
		if msg := checkKind(kind, raw); msg != "" {
			details[field] = msg
			continue
		}
		if kind == kindObject {
			sub, err := objectMembers(raw)
			if err != nil {
				details[field] = "must be an object"
				continue
			}
			before := len(details)
			subGood := checkMembers(sub, field+".", details)
			if len(details) > before {
				m = member{m.name, encodeMembers(subGood)}
			}
		}
		// The member on its own, as the Registration's decoder reads it.
		var one jwkscache.Registration
		if err := json.Unmarshal(encodeMembers(wrapMember(prefix, m)), &one); err != nil {
			details[field] = memberError(field, kind, err)
			continue
		}
		good = append(good, m)
	}
	return good
}

// wrapMember returns m as a member of the registration object: itself, or
// for a retryPolicy member, retryPolicy holding it.
func wrapMember(prefix string, m member) []member {
	if prefix == "" {
		return []member{m}
	}
	return []member{{strings.TrimSuffix(prefix, "."), encodeMembers([]member{m})}}
}

// checkKind checks what the Go decoder would accept but the contract does
// not: empty strings, an empty jitter and a maxResponseBytes of 0 (which
// Go would read as "default").
func checkKind(kind memberKind, raw []byte) string {
	switch kind {
	case kindString, kindJitter:
		if string(raw) == `""` {
			return "must be " + kindNames[kind] + ", not empty"
		}
	case kindPositive:
		if n, err := strconv.ParseInt(string(raw), 10, 64); err == nil && n < 1 {
			return "must be " + kindNames[kind] + ", got " + strconv.FormatInt(n, 10)
		}
	}
	return ""
}

// memberError turns the decoder's error about one member into a message.
func memberError(field string, kind memberKind, err error) string {
	msg := cleanJSONError(err.Error())
	name := field[strings.LastIndexByte(field, '.')+1:]
	for _, p := range []string{field + ": ", name + ": "} {
		msg = strings.TrimPrefix(msg, p)
	}
	if strings.Contains(msg, "json: ") || strings.Contains(msg, "Go struct") || strings.Contains(msg, "Go value") {
		return "must be " + kindNames[kind]
	}
	return msg
}

// cleanJSONError drops the package prefixes of a decoding error.
func cleanJSONError(s string) string {
	s = strings.TrimPrefix(s, "jwkscache: invalid registration: ")
	return trimPrefixes(s)
}

// encodeMembers returns the object of members.
func encodeMembers(members []member) json.RawMessage {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range members {
		if i > 0 {
			b.WriteByte(',')
		}
		name, _ := json.Marshal(m.name)
		b.Write(name)
		b.WriteByte(':')
		b.Write(m.raw)
	}
	b.WriteByte('}')
	return b.Bytes()
}

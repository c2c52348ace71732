package jwkscache

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
	josejson "github.com/go-jose/go-jose/v4/json"
)

// KeyInfo describes one usable key of a provider, as its JWK states it.
type KeyInfo struct {
	KID string `json:"kid"`
	KTY string `json:"kty"`
	Alg string `json:"alg,omitempty"` // "" when the JWK names none
	Crv string `json:"crv,omitempty"`
	Use string `json:"use,omitempty"`
	// Algs lists the JWS algorithms the key may verify: the JWK's alg
	// when it names one, else every algorithm of its family.
	Algs []string `json:"algs,omitempty"`
}

// SkippedKey is a JWK of a fetched set that the cache does not use, and why.
type SkippedKey struct {
	// KID is the JWK's kid, cut visibly after 64 bytes and made valid
	// UTF-8 (it comes from an untrusted document).
	KID    string `json:"kid"`
	Index  int    `json:"index"` // position in the document's keys array
	Reason string `json:"reason"`
}

// Reasons a key is skipped (SkippedKey.Reason). The values are stable.
const (
	SkipTooManyKeys     = "too_many_keys"          // beyond the first 100 keys of a document
	SkipSymmetric       = "symmetric_key"          // kty "oct": secrets never belong in a public JWKS
	SkipPrivateMaterial = "private_key_material"   // d, p, q, dp, dq, qi, oth or priv present
	SkipUse             = "use_not_sig"            // use present and other than "sig"
	SkipKeyOps          = "key_ops_without_verify" // key_ops present without "verify"
	SkipKty             = "unsupported_kty"        // kty other than RSA, EC, OKP
	SkipCrv             = "unsupported_crv"        // EC curve other than P-256/384/521, OKP other than Ed25519
	SkipAlg             = "unsupported_alg"        // alg unknown, or not of the key's type and curve
	SkipEncoding        = "invalid_encoding"       // bad base64url or JSON member types
	SkipInvalid         = "invalid_key"            // the key does not parse (bad point, x5c mismatch, ...) or crypto/rsa refuses it (even modulus, bad exponent)
	SkipRSASize         = "rsa_key_size"           // RSA modulus outside 2048-8192 bits, or over go-jose's jose.MaxRSAModulusBits (default 4096)
	SkipDuplicate       = "duplicate"              // identical to an earlier key of the same kid (merged)
)

// algSet is a bit set of supported JWS algorithms.
type algSet uint16

const (
	algRS256 algSet = 1 << iota
	algRS384
	algRS512
	algPS256
	algPS384
	algPS512
	algES256
	algES384
	algES512
	algEdDSA

	familyRSA = algRS256 | algRS384 | algRS512 | algPS256 | algPS384 | algPS512
)

var algNames = [...]string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// algBit returns the bit of a JWS alg name, 0 for an unsupported one.
// "Ed25519" (RFC 9864) is the fully specified name of EdDSA with Ed25519.
func algBit(name string) algSet {
	switch name {
	case "RS256":
		return algRS256
	case "RS384":
		return algRS384
	case "RS512":
		return algRS512
	case "PS256":
		return algPS256
	case "PS384":
		return algPS384
	case "PS512":
		return algPS512
	case "ES256":
		return algES256
	case "ES384":
		return algES384
	case "ES512":
		return algES512
	case "EdDSA", "Ed25519":
		return algEdDSA
	}
	return 0
}

func (s algSet) names() []string {
	var out []string
	for i, n := range algNames {
		if s&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

// typedKey is a usable verification key and the algorithms it may verify.
type typedKey struct {
	jwk  jose.JSONWebKey
	info KeyInfo
	algs algSet
}

// keySet is the parsed, validated content of one JWKS document. It is
// immutable once built.
type keySet struct {
	keys []*typedKey // usable keys in document order
	// byKID indexes keys by kid ("" for keys without one) when the set is
	// larger than smallSet; smaller sets are scanned, which is as fast and
	// saves the map's memory (it counts with 100,000 providers).
	byKID map[string][]*typedKey
	// skipped records the first maxSkippedKeys skipped keys of the
	// document, in document order; skippedMore counts the skipped keys
	// after them, which are not recorded (a hostile document may hold
	// hundreds of thousands of entries).
	skipped     []SkippedKey
	skippedMore int
	// uniqueKIDs is true when no two usable keys share a kid, so a scan
	// may stop at the first match.
	uniqueKIDs bool
}

// smallSet is the largest set searched without the byKID index.
const smallSet = 8

// maxSkippedKeys bounds the SkippedKey records of a set (keySet.skipped).
const maxSkippedKeys = 100

// candidates returns the keys whose kid equals kid.
func (ks *keySet) candidates(kid string) []*typedKey {
	if ks.byKID != nil {
		return ks.byKID[kid]
	}
	var out []*typedKey
	for _, k := range ks.keys {
		if k.info.KID == kid {
			out = append(out, k)
		}
	}
	return out
}

func containsKID(keys []*typedKey, kid string) bool {
	for _, k := range keys {
		if k.info.KID == kid {
			return true
		}
	}
	return false
}

// find returns the only key of kid, or nil when kid names no key or
// several. It is the allocation-free fast path of lookup.
func (ks *keySet) find(kid string) *typedKey {
	var found *typedKey
	if ks.byKID != nil {
		c := ks.byKID[kid]
		if len(c) != 1 {
			return nil
		}
		return c[0]
	}
	for _, k := range ks.keys {
		if k.info.KID == kid {
			if ks.uniqueKIDs {
				return k
			}
			if found != nil {
				return nil
			}
			found = k
		}
	}
	return found
}

// jwkHeader holds the members checked before a key is parsed.
type jwkHeader struct {
	Kty    string          `json:"kty"`
	Kid    string          `json:"kid"`
	Crv    string          `json:"crv"`
	Alg    string          `json:"alg"`
	Use    string          `json:"use"`
	KeyOps []string        `json:"key_ops"`
	D      json.RawMessage `json:"d"`
	P      json.RawMessage `json:"p"`
	Q      json.RawMessage `json:"q"`
	Dp     json.RawMessage `json:"dp"`
	Dq     json.RawMessage `json:"dq"`
	Qi     json.RawMessage `json:"qi"`
	Oth    json.RawMessage `json:"oth"`
	Priv   json.RawMessage `json:"priv"`
	K      json.RawMessage `json:"k"`

	// The other members go-jose decodes, checked as go-jose decodes them
	// so that a bad one is skipped as invalid_encoding by a typed check,
	// never by reading go-jose's error text. A bad member does not fail
	// the header: the checks on kty, use, key_ops and alg come first.
	N       b64urlMember `json:"n"`
	E       b64urlMember `json:"e"`
	X       b64urlMember `json:"x"`
	Y       b64urlMember `json:"y"`
	Pub     b64urlMember `json:"pub"`
	X5t     b64urlMember `json:"x5t"`
	X5tS256 b64urlMember `json:"x5t#S256"`
	X5c     x5cMember    `json:"x5c"`
	X5u     stringMember `json:"x5u"`
}

func (h *jwkHeader) hasPrivate() bool {
	return h.D != nil || h.P != nil || h.Q != nil || h.Dp != nil || h.Dq != nil ||
		h.Qi != nil || h.Oth != nil || h.Priv != nil
}

// encodingErr returns the first decoding error of the members go-jose
// decodes: a *base64.CorruptInputError, or a JSON error for a member of the
// wrong type.
func (h *jwkHeader) encodingErr() error {
	for _, err := range [...]error{h.N.err, h.E.err, h.X.err, h.Y.err, h.Pub.err, h.X5t.err, h.X5tS256.err, h.X5c.err, h.X5u.err} {
		if err != nil {
			return err
		}
	}
	return nil
}

// b64urlMember checks a string member of unpadded base64url (RFC 7515,
// section 2), as go-jose decodes n, e, x, y, pub, x5t and x5t#S256: null
// and "" count as absent. It keeps the error, not the value.
type b64urlMember struct{ err error }

func (m *b64urlMember) UnmarshalJSON(data []byte) error {
	var s string
	if err := josejson.Unmarshal(data, &s); err != nil {
		m.err = err
		return nil
	}
	if _, err := base64.RawURLEncoding.DecodeString(s); err != nil {
		m.err = err
	}
	return nil
}

// x5cMember checks x5c, an array of padded standard base64 (RFC 7517,
// section 4.7), as go-jose decodes it before parsing the certificates.
type x5cMember struct{ err error }

func (m *x5cMember) UnmarshalJSON(data []byte) error {
	var chain []string
	if err := josejson.Unmarshal(data, &chain); err != nil {
		m.err = err
		return nil
	}
	for _, c := range chain {
		if _, err := base64.StdEncoding.DecodeString(c); err != nil {
			m.err = err
			return nil
		}
	}
	return nil
}

// stringMember checks that a member is a string (or null).
type stringMember struct{ err error }

func (m *stringMember) UnmarshalJSON(data []byte) error {
	var s string
	m.err = josejson.Unmarshal(data, &s)
	return nil
}

// errNotJWKS and errHTML are the parse failures of a whole document.
var (
	errHTML    = errors.New("response is HTML, not a JWKS (a login page or an error page?)")
	errNotJWKS = errors.New("not a JWKS document: want a JSON object with a \"keys\" array")
)

// parseKeySet parses and validates a JWKS document. Keys that cannot be used
// for signature verification are skipped with a reason; the document is an
// error only when it is not a JWKS at all (errNotJWKS, errHTML, a JSON
// error) or holds no usable key (the returned set then carries the skip
// reasons, and the error wraps ErrNoKeys).
//
// The work is bounded by the document's size, not by its number of
// entries: only the first maxKeysPerSet entries are decoded; the entries
// after them are found by one scan and skipped as too_many_keys, and only
// the first maxSkippedKeys skipped keys are recorded, with their kid.
func parseKeySet(raw []byte) (*keySet, error) {
	trimmed := bytes.TrimLeft(raw, " \t\r\n\ufeff")
	if len(trimmed) > 0 && trimmed[0] == '<' {
		return nil, errHTML
	}
	// The whole document must be valid JSON, as when encoding/json
	// decoded it; keysArray and nextElement only scan valid JSON.
	if !json.Valid(raw) {
		// Unmarshal checks the same way first, and says where it fails.
		err := json.Unmarshal(raw, new(struct{}))
		return nil, fmt.Errorf("%w: %v", errNotJWKS, err)
	}
	array := keysArray(raw)
	if array == nil {
		return nil, errNotJWKS
	}
	ks := &keySet{}
	entries := 0
	for rest := array[1:]; ; entries++ {
		var rk []byte
		if rk, rest = nextElement(rest); rk == nil {
			break
		}
		if entries >= maxKeysPerSet {
			ks.skip(rk, entries, SkipTooManyKeys)
			continue
		}
		tk, reason := parseKey(rk)
		if reason == "" && ks.isDuplicate(tk) {
			reason = SkipDuplicate
		}
		if reason != "" {
			ks.skip(rk, entries, reason)
			continue
		}
		ks.keys = append(ks.keys, tk)
	}
	ks.uniqueKIDs = true
	for i, k := range ks.keys {
		if containsKID(ks.keys[:i], k.info.KID) {
			ks.uniqueKIDs = false
		}
	}
	if len(ks.keys) > smallSet {
		ks.byKID = make(map[string][]*typedKey, len(ks.keys))
		for _, k := range ks.keys {
			ks.byKID[k.info.KID] = append(ks.byKID[k.info.KID], k)
		}
	}
	if len(ks.keys) == 0 {
		return ks, fmt.Errorf("%w: %d keys in the document, none usable for signature verification%s",
			ErrNoKeys, entries, capText(ks.skipSummary()))
	}
	return ks, nil
}

// skip records the skipped entry rk at index, or only counts it once
// maxSkippedKeys are recorded.
func (ks *keySet) skip(rk []byte, index int, reason string) {
	if len(ks.skipped) >= maxSkippedKeys {
		ks.skippedMore++
		return
	}
	ks.skipped = append(ks.skipped, SkippedKey{KID: capTo(kidOf(rk), maxShownID), Index: index, Reason: reason})
}

// skipSummary names the first skipped keys and counts the rest, for the
// error of a set without usable keys. Its length is bounded: the kids of
// the records are already cut to maxShownID bytes of valid UTF-8.
func (ks *keySet) skipSummary() string {
	if len(ks.skipped) == 0 {
		return ""
	}
	const named = 5
	var b strings.Builder
	b.WriteString(" (skipped:")
	for _, s := range ks.skipped[:min(named, len(ks.skipped))] {
		fmt.Fprintf(&b, " %s=%s", strconv.Quote(s.KID), s.Reason)
	}
	if more := len(ks.skipped) - min(named, len(ks.skipped)) + ks.skippedMore; more > 0 {
		fmt.Fprintf(&b, " and %d more", more)
	}
	b.WriteString(")")
	return b.String()
}

// keysArray returns the "keys" array of doc, which must be valid JSON, or
// nil when doc is no object with a "keys" array. It reads the document as
// encoding/json read it into a struct with a *[]json.RawMessage field
// "keys" before issue 6: a member name matches by bytes.EqualFold after
// unquoting (encoding/json's case-insensitive match), the last "keys"
// member wins, and a "keys" member other than an array or null is an
// error even when an array follows.
func keysArray(doc []byte) []byte {
	i := skipSpace(doc, 0)
	if i >= len(doc) || doc[i] != '{' {
		return nil
	}
	var keys []byte
	for i = skipSpace(doc, i+1); i < len(doc) && doc[i] == '"'; {
		end := stringEnd(doc, i)
		name := doc[i:end]
		i = skipSpace(doc, skipSpace(doc, end)+1) // past ':'
		if i >= len(doc) {
			return nil
		}
		vend := valueEnd(doc, i)
		if isKeysName(name) {
			switch doc[i] {
			case '[':
				keys = doc[i:vend]
			case 'n':
				keys = nil
			default:
				return nil
			}
		}
		if i = skipSpace(doc, vend); i < len(doc) && doc[i] == ',' {
			i = skipSpace(doc, i+1)
		}
	}
	return keys
}

// isKeysName reports whether a member name, quoted as in the document,
// matches "keys" as encoding/json matches a field name.
func isKeysName(quoted []byte) bool {
	if len(quoted) < 2 {
		return false
	}
	if bytes.IndexByte(quoted, '\\') < 0 {
		return bytes.EqualFold(quoted[1:len(quoted)-1], []byte("keys"))
	}
	var s string
	return json.Unmarshal(quoted, &s) == nil && strings.EqualFold(s, "keys")
}

// nextElement splits the next element off rest, the unread part of a JSON
// array after its '[' or after an element, and returns the element and what
// follows it; the element is nil at the end of the array. The array must
// be valid JSON (json.Valid checked the whole document): nextElement only
// finds where an element ends, in one pass over its bytes and without
// allocating, so that an entry past maxKeysPerSet costs a scan, not a
// decode. On invalid input it still ends, never reading past rest.
func nextElement(rest []byte) (elem, after []byte) {
	i := skipSpace(rest, 0)
	if i < len(rest) && rest[i] == ',' {
		i = skipSpace(rest, i+1)
	}
	if i >= len(rest) || rest[i] == ']' {
		return nil, nil
	}
	end := valueEnd(rest, i)
	return rest[i:end], rest[end:]
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// valueEnd returns the index just past the JSON value that starts at b[i],
// at least i+1.
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
	default: // a number, true, false or null
		for i++; i < len(b); i++ {
			switch b[i] {
			case ',', ']', '}', ' ', '\t', '\r', '\n':
				return i
			}
		}
		return i
	}
	depth := 0
	for i < len(b) {
		switch b[i] {
		case '"':
			i = stringEnd(b, i)
			continue
		case '{', '[':
			depth++
		case '}', ']':
			if depth--; depth == 0 {
				return i + 1
			}
		}
		i++
	}
	return i
}

// stringEnd returns the index just past the JSON string that starts at
// b[i] == '"'.
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++ // the escaped byte; the hex digits of \uXXXX need no care
		case '"':
			return i + 1
		}
	}
	return i
}

// isDuplicate reports whether tk repeats a key already in ks: same kid, same
// algorithms and the same public key. Such copies are merged.
func (ks *keySet) isDuplicate(tk *typedKey) bool {
	for _, o := range ks.candidates(tk.info.KID) {
		if o.algs == tk.algs && o.info.Use == tk.info.Use && publicKeyEqual(o.jwk.Key, tk.jwk.Key) {
			return true
		}
	}
	return false
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if e, ok := a.(equaler); ok {
		return e.Equal(b)
	}
	return false
}

// kidOf returns the kid of a JWK for its SkippedKey record, "" when the
// entry is no object or its kid no string. A kid of another type is
// skipped, not decoded: a megabyte array there costs a scan, not a
// megabyte of Go values.
func kidOf(rk []byte) string {
	var h struct {
		Kid kidMember `json:"kid"`
	}
	if json.Unmarshal(rk, &h) != nil {
		return ""
	}
	return h.Kid.s
}

type kidMember struct{ s string }

func (k *kidMember) UnmarshalJSON(data []byte) error {
	k.s = "" // a later kid member wins, whatever its type
	if len(data) > 0 && data[0] == '"' {
		return json.Unmarshal(data, &k.s)
	}
	return nil
}

// parseKey types one JWK. It returns the skip reason when the key is not
// usable for signature verification.
func parseKey(rk []byte) (*typedKey, string) {
	// The header is read with go-jose's JSON decoder, the one that parses
	// the key below: it matches member names case-sensitively and refuses
	// duplicate members. encoding/json would read {"use":"enc","USE":"sig"}
	// as use=sig while go-jose reads use=enc, so the checks below would
	// judge a different key from the one kept.
	var h jwkHeader
	if err := josejson.Unmarshal(rk, &h); err != nil {
		return nil, SkipEncoding
	}
	switch {
	case h.Kty == "oct" || h.K != nil:
		return nil, SkipSymmetric
	case h.hasPrivate():
		return nil, SkipPrivateMaterial
	case h.Use != "" && h.Use != "sig":
		return nil, SkipUse
	case h.KeyOps != nil && !slices.Contains(h.KeyOps, "verify"):
		return nil, SkipKeyOps
	}
	var family algSet
	switch h.Kty {
	case "RSA":
		family = familyRSA
	case "EC":
		switch h.Crv {
		case "P-256":
			family = algES256
		case "P-384":
			family = algES384
		case "P-521":
			family = algES512
		default:
			return nil, SkipCrv
		}
	case "OKP":
		if h.Crv != "Ed25519" {
			return nil, SkipCrv
		}
		family = algEdDSA
	default:
		return nil, SkipKty
	}
	algs := family
	if h.Alg != "" {
		bit := algBit(h.Alg)
		if bit == 0 || bit&family == 0 {
			return nil, SkipAlg
		}
		algs = bit
	}
	if h.encodingErr() != nil {
		return nil, SkipEncoding
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(rk); err != nil {
		if h.Kty == "RSA" && errors.Is(err, jose.ErrUnsupportedKeyType) {
			// go-jose refuses moduli over jose.MaxRSAModulusBits (4096
			// unless the program raises it), before our own bound.
			return nil, SkipRSASize
		}
		return nil, SkipInvalid
	}
	// Belt and braces: go-jose decides by member presence too, but a key
	// must never carry private material into the cache.
	if !jwk.IsPublic() {
		return nil, SkipPrivateMaterial
	}
	switch k := jwk.Key.(type) {
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < 2048 || bits > 8192 {
			return nil, SkipRSASize
		}
		// crypto/rsa refuses these keys when verifying (checkPublicKey in
		// crypto/internal/fips140/rsa): an even modulus, and an exponent
		// below 2, even, or over 2^31-1. go-jose refuses only exponents
		// below 2 or over math.MaxInt. E < 3 is 1 or 2.
		if k.N.Bit(0) == 0 || k.E < 3 || k.E%2 == 0 || k.E > 1<<31-1 {
			return nil, SkipInvalid
		}
	case *ecdsa.PublicKey, ed25519.PublicKey:
	default:
		return nil, SkipKty
	}
	// The cache never follows x5u; drop it so nobody downstream does either.
	jwk.CertificatesURL = nil
	return &typedKey{
		jwk:  jwk,
		algs: algs,
		info: KeyInfo{KID: h.Kid, KTY: h.Kty, Alg: h.Alg, Crv: h.Crv, Use: h.Use},
	}, ""
}

// lookup returns the only key of kid, for callers that do not know the
// token's algorithm. A kid shared by keys of different families is
// ambiguous. An empty kid matches the set's only key, if it has one.
func (ks *keySet) lookup(kid string) (*typedKey, error) {
	cands := ks.candidates(kid)
	if len(cands) == 1 {
		return cands[0], nil
	}
	if kid == "" && len(cands) == 0 && len(ks.keys) == 1 {
		return ks.keys[0], nil
	}
	if len(cands) == 0 {
		return nil, ErrKeyNotFound
	}
	return nil, fmt.Errorf("%w: kid %s names %d keys; the token's algorithm tells them apart (use Keyfunc)", ErrKeyNotFound, showID(kid), len(cands))
}

// lookupAlg returns the key for a token header's kid and alg. With a kid, the
// key of that kid whose family includes alg; without one, the only key of
// the set that may verify alg (OpenID Connect Core 1.0, section 10.1: with
// several keys a kid is required). Two candidates are never resolved by
// taking the first.
func (ks *keySet) lookupAlg(kid, alg string) (*typedKey, error) {
	bit := algBit(alg)
	if bit == 0 {
		return nil, fmt.Errorf("%w: unsupported algorithm %s", ErrKeyNotFound, showID(alg))
	}
	var found *typedKey
	n := 0
	cands := ks.keys
	if kid != "" && ks.byKID != nil {
		cands = ks.byKID[kid]
	}
	kidSeen := false
	for _, k := range cands {
		if kid != "" && k.info.KID != kid {
			continue
		}
		kidSeen = true
		if k.algs&bit != 0 {
			found = k
			n++
		}
	}
	switch {
	case n == 1:
		return found, nil
	case n > 1 && kid == "":
		return nil, fmt.Errorf("%w: token has no kid and %d keys may verify %s", ErrKeyNotFound, n, alg)
	case n > 1:
		return nil, fmt.Errorf("%w: kid %s names %d keys that may verify %s", ErrKeyNotFound, showID(kid), n, alg)
	case kidSeen && kid != "":
		return nil, fmt.Errorf("%w: key %s may not verify %s", ErrKeyNotFound, showID(kid), alg)
	}
	return nil, ErrKeyNotFound
}

// has reports whether kid names at least one key.
func (ks *keySet) has(kid string) bool {
	if ks.byKID != nil {
		return len(ks.byKID[kid]) > 0
	}
	return containsKID(ks.keys, kid)
}

package jwkscache

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Stored records. A Store holds opaque bytes; their format is the
// Manager's, so that every Store gets the same integrity checks:
//
//	magic "JWKC" | version (1 byte) | kind (1 byte) | MAC flag (1 byte)
//	| payload length (4 bytes, big endian) | payload (JSON)
//	| SHA-256 of everything before it (32 bytes)
//	| HMAC-SHA256 of everything before the checksum (32 bytes, when flagged)
//
// The checksum catches corruption; the MAC (with Options.StoreKeys)
// catches forgery by whoever can write to the store. The payload names the
// tenant and provider it belongs to, which the reader checks against the
// pair it asked for, so a record copied to another pair's key is refused
// even when its MAC is right.
const (
	recordMagic   = "JWKC"
	recordVersion = 1
	recordHeader  = len(recordMagic) + 3 + 4

	kindSnapshot     byte = 1
	kindRegistration byte = 2

	// recordOverhead bounds what a record holds beside its JWKS (which
	// is base64 in it): the other members, header, checksum and MAC.
	recordOverhead = 64 << 10
	// maxRegistrationRecord bounds a registration record (Register
	// refuses a registration whose JSON form is larger).
	maxRegistrationRecord = 1 << 20
)

// maxSnapshotRecord bounds a snapshot record of reg before any parsing.
func maxSnapshotRecord(reg *Registration) int64 {
	return reg.MaxResponseBytes/3*4 + 4 + recordOverhead
}

// Record refusal reasons: ProviderStatus.StoreRefused counts them, and the
// metric jwks_cache_store_refused_total labels them.
const (
	refusedFormat = "format" // not a record, or a version this build does not read
	refusedSize   = "size"   // over the bounds
	refusedSum    = "checksum"
	refusedMAC    = "mac"   // MAC missing, or not made with any of Options.StoreKeys
	refusedOwner  = "owner" // another tenant's or provider's record
	// refusedSuperseded is the pair's own record, authenticated, written
	// under another source (URL, issuer): the registration changed since,
	// a rolling change across a fleet, not tampering.
	refusedSuperseded = "superseded"
	refusedContent    = "content" // the keys no longer parse, or none is usable
)

// recordError is a record refused on reading.
type recordError struct {
	reason string
	msg    string
}

func (e *recordError) Error() string {
	return "jwkscache: stored record refused (" + e.reason + "): " + e.msg
}

// macKeys signs and verifies records: the first key signs, any verifies,
// so keys can be rotated. Without keys, records carry no MAC and none is
// required.
type macKeys [][]byte

func (k macKeys) sum(key, data []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(data)
	return h.Sum(nil)
}

// sealRecord encodes payload as a record of kind.
func sealRecord(kind byte, payload []byte, keys macKeys) []byte {
	n := recordHeader + len(payload) + sha256.Size
	if len(keys) > 0 {
		n += sha256.Size
	}
	b := make([]byte, 0, n)
	b = append(b, recordMagic...)
	b = append(b, recordVersion, kind, 0)
	if len(keys) > 0 {
		b[len(recordMagic)+2] = 1
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = append(b, payload...)
	sum := sha256.Sum256(b)
	body := len(b)
	b = append(b, sum[:]...)
	if len(keys) > 0 {
		b = append(b, keys.sum(keys[0], b[:body])...)
	}
	return b
}

// openRecord checks a record of kind and returns its payload. It checks
// size, format, checksum and, with keys, the MAC, in that order, reading
// nothing it has not bounded.
func openRecord(kind byte, b []byte, limit int64, keys macKeys) ([]byte, error) {
	if int64(len(b)) > limit {
		return nil, &recordError{refusedSize, fmt.Sprintf("%d bytes, over %d", len(b), limit)}
	}
	if len(b) < recordHeader+sha256.Size || string(b[:len(recordMagic)]) != recordMagic {
		return nil, &recordError{refusedFormat, "not a jwkscache record"}
	}
	if v := b[len(recordMagic)]; v != recordVersion {
		return nil, &recordError{refusedFormat, fmt.Sprintf("version %d, this build reads %d", v, recordVersion)}
	}
	if k := b[len(recordMagic)+1]; k != kind {
		return nil, &recordError{refusedFormat, fmt.Sprintf("a record of kind %d where kind %d belongs", k, kind)}
	}
	flag := b[len(recordMagic)+2]
	plen := binary.BigEndian.Uint32(b[len(recordMagic)+3:])
	body := recordHeader + int(plen)
	want := body + sha256.Size
	if flag == 1 {
		want += sha256.Size
	}
	if flag > 1 || uint64(plen) > uint64(len(b)) || len(b) != want {
		return nil, &recordError{refusedFormat, "inconsistent length"}
	}
	sum := sha256.Sum256(b[:body])
	if !hmac.Equal(sum[:], b[body:body+sha256.Size]) {
		return nil, &recordError{refusedSum, "checksum mismatch"}
	}
	if len(keys) > 0 {
		if flag != 1 {
			return nil, &recordError{refusedMAC, "no MAC, and Options.StoreKeys requires one"}
		}
		mac := b[body+sha256.Size:]
		ok := false
		for _, k := range keys {
			ok = hmac.Equal(mac, keys.sum(k, b[:body])) || ok // no early exit: constant work
		}
		if !ok {
			return nil, &recordError{refusedMAC, "MAC does not verify with any of Options.StoreKeys"}
		}
	}
	return b[recordHeader:body], nil
}

// snapshotRecord is the payload of a stored snapshot. Times are Unix
// nanoseconds, so that a restored snapshot keeps its remaining lifetime.
type snapshotRecord struct {
	TenantID     string `json:"t"`
	ProviderID   string `json:"p"`
	URL          string `json:"u"`           // the JWKS URL the keys came from
	Discovered   bool   `json:"d,omitempty"` // URL came from OIDC discovery of Issuer
	Issuer       string `json:"i,omitempty"`
	ETag         []byte `json:"e,omitempty"` // bytes, so that any byte survives the JSON
	LastModified []byte `json:"l,omitempty"`
	FetchedAt    int64  `json:"f"`
	ExpiresAt    int64  `json:"x"`
	StaleUntil   int64  `json:"s"`
	TTLSource    string `json:"ts,omitempty"`
	Hash         []byte `json:"h"` // SHA-256 of Body
	Body         []byte `json:"b"` // the JWKS as served
}

// encodeSnapshot makes the record of s for the pair.
func encodeSnapshot(key providerKey, s *snapshot, discovered bool, keys macKeys) []byte {
	rec := snapshotRecord{
		TenantID: key.tenant, ProviderID: key.provider, URL: s.url, Discovered: discovered, Issuer: s.issuer,
		ETag: storedValidator(s.validators.ETag), LastModified: storedValidator(s.validators.LastModified),
		FetchedAt: s.fetchedAt.UnixNano(), ExpiresAt: s.expiresAt.UnixNano(), StaleUntil: s.staleUntil.UnixNano(),
		TTLSource: s.ttlSource, Hash: s.doc.hash[:], Body: s.doc.raw,
	}
	payload, err := json.Marshal(&rec)
	if err != nil {
		panic("jwkscache: encoding a snapshot record: " + err.Error()) // only strings, ints and bytes
	}
	return sealRecord(kindSnapshot, payload, keys)
}

// storedValidator returns a validator as stored: one too long to store is
// dropped (the restored keys then revalidate with a full fetch).
func storedValidator(v string) []byte {
	if len(v) > maxErrorText {
		return nil
	}
	return []byte(v)
}

// restoredSnapshot is a stored snapshot that passed every check.
type restoredSnapshot struct {
	rec  snapshotRecord
	hash [32]byte
	keys *keySet
}

func (r *restoredSnapshot) fetchedAt() time.Time  { return time.Unix(0, r.rec.FetchedAt) }
func (r *restoredSnapshot) expiresAt() time.Time  { return time.Unix(0, r.rec.ExpiresAt) }
func (r *restoredSnapshot) staleUntil() time.Time { return time.Unix(0, r.rec.StaleUntil) }

// decodeSnapshot checks a stored snapshot record against the pair it was
// read for and the registration (which must accept its URL and size), and
// re-parses its keys as a fetch would. It does not judge the record's age:
// the caller does, against the clock.
func decodeSnapshot(key providerKey, reg *Registration, pol urlPolicy, b []byte, keys macKeys) (*restoredSnapshot, error) {
	payload, err := openRecord(kindSnapshot, b, maxSnapshotRecord(reg), keys)
	if err != nil {
		return nil, err
	}
	var r restoredSnapshot
	if err := json.Unmarshal(payload, &r.rec); err != nil {
		return nil, &recordError{refusedFormat, "payload: " + capText(err.Error())}
	}
	rec := &r.rec
	if rec.TenantID != key.tenant || rec.ProviderID != key.provider {
		return nil, &recordError{refusedOwner, fmt.Sprintf("the record of %s/%s", showID(rec.TenantID), showID(rec.ProviderID))}
	}
	// The pair's own record for another source: with a MAC it was written
	// by an instance holding the key (the registration changed since);
	// without one, nothing tells that from a planted record.
	other := refusedOwner
	if len(keys) > 0 {
		other = refusedSuperseded
	}
	switch {
	case reg.usesDiscovery():
		// The URL was discovered: it must have come from this issuer's
		// discovery, and still pass the registration's URL policy.
		if !rec.Discovered || rec.Issuer != reg.Issuer {
			return nil, &recordError{other, "keys discovered for another issuer"}
		}
		if fe := pol.checkURL("jwksUrl", rec.URL); fe != nil {
			return nil, &recordError{refusedOwner, "discovered URL refused: " + capText(fe[0].Message)}
		}
	case rec.Discovered || rec.URL != reg.JWKSURL:
		return nil, &recordError{other, "keys of " + showURL(rec.URL)}
	}
	if int64(len(rec.Body)) > reg.MaxResponseBytes {
		return nil, &recordError{refusedSize, fmt.Sprintf("a JWKS of %d bytes, over the registration's MaxResponseBytes", len(rec.Body))}
	}
	r.hash = sha256.Sum256(rec.Body)
	if !hmac.Equal(r.hash[:], rec.Hash) {
		return nil, &recordError{refusedSum, "the JWKS does not match its hash"}
	}
	if !(rec.FetchedAt <= rec.ExpiresAt && rec.ExpiresAt <= rec.StaleUntil) {
		return nil, &recordError{refusedFormat, "inconsistent times"}
	}
	if len(rec.ETag) > maxErrorText || len(rec.LastModified) > maxErrorText || len(rec.TTLSource) > 64 {
		return nil, &recordError{refusedSize, "validators too long"}
	}
	if r.keys, err = parseKeySet(rec.Body); err != nil {
		return nil, &recordError{refusedContent, capText(err.Error())}
	}
	return &r, nil
}

// encodeRegistration makes the record of a registration.
func encodeRegistration(r *Registration, keys macKeys) []byte {
	payload, err := json.Marshal(r)
	if err != nil {
		panic("jwkscache: encoding a registration record: " + err.Error())
	}
	return sealRecord(kindRegistration, payload, keys)
}

// decodeRegistration checks a stored registration record and returns the
// registration, not yet validated against the Manager's Options.
func decodeRegistration(b []byte, keys macKeys) (Registration, error) {
	payload, err := openRecord(kindRegistration, b, maxRegistrationRecord, keys)
	if err != nil {
		return Registration{}, err
	}
	var r Registration
	if err := json.Unmarshal(payload, &r); err != nil {
		reason := refusedContent
		if !json.Valid(payload) {
			reason = refusedFormat // as for a snapshot whose payload is not JSON
		}
		return Registration{}, &recordError{reason, capText(err.Error())}
	}
	return r, nil
}

// isRecordError reports whether err is a refused record (as opposed to a
// Store failure).
func isRecordError(err error) (string, bool) {
	var re *recordError
	if errors.As(err, &re) {
		return re.reason, true
	}
	return "", false
}

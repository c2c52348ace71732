package redisstore

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strings"
)

// Bounds. Every one is far above what a Manager writes (IDs of at most 64
// characters, snapshot records of tens of KiB, notes of a few dozen
// bytes); they keep a bad caller or a bad writer of the Redis from making
// the store hold or decode unbounded data.
const (
	// MaxRecordSize bounds a record: SaveSnapshot, SaveRegistration and
	// Commit refuse larger ones.
	MaxRecordSize = 16 << 20
	// MaxIDLen bounds a tenant or provider ID (in bytes).
	MaxIDLen = 16 << 10
	// MaxMessageSize bounds an encoded pub/sub message (tenant, provider
	// and note): Commit refuses a note that would make a larger one, and
	// subscribers ignore larger ones.
	MaxMessageSize = 64 << 10
	// MaxRegistrations bounds LoadRegistrations: past this many
	// registration keys it fails rather than grow without end.
	MaxRegistrations = 1_000_000
	// maxRegistrationBytes bounds the total size of the records
	// LoadRegistrations returns.
	maxRegistrationBytes = 1 << 30
)

// frameVersion is the first byte of every value and message this package
// writes.
const frameVersion byte = 1

// tagLen is the length of a pair's hash tag: 32 hex digits, the first
// 128 bits of a SHA-256.
const tagLen = 32

// Key kinds, after the prefix.
const (
	kindSnapshot     = "s:"
	kindRegistration = "r:"
	kindLease        = "l:"
)

// pairTag returns the pair's hash tag: the first 128 bits, in hex, of the
// SHA-256 of uvarint(len(tenant)) || tenant || provider. The encoding is
// injective (the length says where the tenant ends), so two pairs share a
// tag only through a SHA-256 collision on 128 bits; even then the values
// carry the exact pair, checked on every read (see frame).
func pairTag(tenant, provider string) string {
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(tenant)))])
	h.Write([]byte(tenant))
	h.Write([]byte(provider))
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0])[:tagLen/2])
}

// pairKeys are the keys of one pair, all in one Redis Cluster slot.
type pairKeys struct {
	snapshot, registration, lease string
}

func (s *Store) keys(tenant, provider string) pairKeys {
	tag := "{" + pairTag(tenant, provider) + "}"
	return pairKeys{
		snapshot:     s.prefix + kindSnapshot + tag,
		registration: s.prefix + kindRegistration + tag,
		lease:        s.prefix + kindLease + tag,
	}
}

// appendFrame appends the framing of payload for the pair: a version
// byte, uvarint(len(tenant)), tenant, uvarint(len(provider)), provider,
// then payload to the end. Values (records) and pub/sub messages (notes)
// are framed alike.
func appendFrame(dst []byte, tenant, provider string, payload []byte) []byte {
	dst = append(dst, frameVersion)
	dst = binary.AppendUvarint(dst, uint64(len(tenant)))
	dst = append(dst, tenant...)
	dst = binary.AppendUvarint(dst, uint64(len(provider)))
	dst = append(dst, provider...)
	return append(dst, payload...)
}

func frame(tenant, provider string, payload []byte) []byte {
	n := 1 + 2*binary.MaxVarintLen64 + len(tenant) + len(provider) + len(payload)
	return appendFrame(make([]byte, 0, n), tenant, provider, payload)
}

// parseFrame undoes appendFrame. ok is false when b is not a frame.
func parseFrame(b string) (tenant, provider, payload string, ok bool) {
	if len(b) == 0 || b[0] != frameVersion {
		return "", "", "", false
	}
	b = b[1:]
	if tenant, b, ok = cutLenPrefixed(b); !ok {
		return "", "", "", false
	}
	if provider, b, ok = cutLenPrefixed(b); !ok {
		return "", "", "", false
	}
	return tenant, provider, b, true
}

// cutLenPrefixed reads a uvarint length n (minimally encoded, at most
// MaxIDLen) and the n bytes after it.
func cutLenPrefixed(b string) (field, rest string, ok bool) {
	var n int
	for i := 0; i < 3; i++ { // 3 bytes hold 21 bits, more than MaxIDLen needs
		if i == len(b) {
			return "", "", false
		}
		c := b[i]
		n |= int(c&0x7f) << (7 * i)
		if c < 0x80 {
			if i > 0 && c == 0 {
				return "", "", false // not minimal: no second spelling of a length
			}
			b = b[i+1:]
			if n > MaxIDLen || n > len(b) {
				return "", "", false
			}
			return b[:n], b[n:], true
		}
	}
	return "", "", false
}

// escapeGlob escapes the characters that SCAN's MATCH treats specially.
func escapeGlob(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '*', '?', '[', ']', '\\', '^', '-':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

package jwkscache

import (
	"runtime"
	"sync"
	"weak"
)

// document is a fetched JWKS: the bytes as served (after decompression),
// their SHA-256 and the parsed keys. It is immutable, and shared by every
// provider whose identity provider serves the same bytes: a SaaS whose
// tenants sign in with one IdP (Google, Microsoft's common endpoint, Apple)
// keeps one copy of its keys, not one per tenant.
type document struct {
	raw  []byte
	hash [32]byte
	keys *keySet
}

// documents interns documents by hash. Entries are weak: a document no
// snapshot uses any more is collected, and a runtime cleanup then drops
// its entry.
type documents struct {
	mu sync.Mutex // guards m; a leaf lock
	m  map[[32]byte]weak.Pointer[document]
}

// intern returns the document of hash: the one already in use when there
// is one (raw and keys are then dropped for the shared copy), else a new
// one made of raw and keys. Identical bytes parse to identical key sets,
// so sharing changes nothing but memory.
func (d *documents) intern(hash [32]byte, raw []byte, keys *keySet) *document {
	d.mu.Lock()
	defer d.mu.Unlock()
	if wp, ok := d.m[hash]; ok {
		if doc := wp.Value(); doc != nil {
			return doc
		}
	}
	if d.m == nil {
		d.m = make(map[[32]byte]weak.Pointer[document])
	}
	doc := &document{raw: raw, hash: hash, keys: keys}
	d.m[hash] = weak.Make(doc)
	runtime.AddCleanup(doc, d.forget, hash)
	return doc
}

// forget drops the entry of hash if its document has been collected (a
// new document of the same hash may have replaced it meanwhile).
func (d *documents) forget(hash [32]byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if wp, ok := d.m[hash]; ok && wp.Value() == nil {
		delete(d.m, hash)
	}
}

// len returns the number of entries, for tests.
func (d *documents) len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.m)
}

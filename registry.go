package jwkscache

import (
	"encoding/binary"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"unsafe"
)

// registry maps (tenant, provider) to its *provider. Lookups take no lock
// and allocate nothing: the table and each bucket are immutable and
// replaced whole (copy on write) by writers, which serialise on mu. A
// bucket holds a handful of providers, so a write copies a few pointers, and
// the table doubles when the load passes two per bucket, so registering n
// providers costs O(n) in total.
type registry struct {
	seed  uint64     // random, so bucket placement cannot be predicted
	mu    sync.Mutex // serialises writers; guards n
	n     int
	table atomic.Pointer[regTable]
	// issuers maps (tenant, Issuer) to the tenant's provider of that
	// Issuer, for issuer routing (TenantKeyfunc): one lookup whatever the
	// number of providers. Written under mu; read without a lock.
	issuers sync.Map // issuerKey -> *provider
	// tenants indexes providers by tenant, for TenantStatuses: one
	// tenant's list costs its own size, not a scan of every provider.
	// Guarded by mu.
	tenants map[string]map[string]*provider
}

// issuerKey names a tenant's provider by its Issuer.
type issuerKey struct{ tenant, issuer string }

// byIssuer returns the tenant's provider whose Issuer is iss, or nil.
func (r *registry) byIssuer(tenant, iss string) *provider {
	if v, ok := r.issuers.Load(issuerKey{tenant, iss}); ok {
		if p, ok := v.(*provider); ok {
			return p
		}
	}
	return nil
}

// issuerOwnerLocked returns the provider of tenant other than self that
// has Issuer iss, or nil. r.mu must be held.
func (r *registry) issuerOwnerLocked(tenant, iss string, self providerKey) *provider {
	if iss == "" {
		return nil
	}
	if p := r.byIssuer(tenant, iss); p != nil && p.key != self {
		return p
	}
	return nil
}

// setIssuerLocked moves p's index entry from the Issuer old to new. r.mu
// must be held.
func (r *registry) setIssuerLocked(p *provider, old, new string) {
	if old != "" {
		r.issuers.CompareAndDelete(issuerKey{p.key.tenant, old}, p)
	}
	if new != "" {
		r.issuers.Store(issuerKey{p.key.tenant, new}, p)
	}
}

type regTable struct {
	mask    uint64
	buckets []atomic.Pointer[[]*provider]
}

func newRegistry() *registry {
	r := &registry{seed: maphash.Comparable(maphash.MakeSeed(), 0)}
	r.table.Store(newRegTable(64))
	return r
}

func newRegTable(size int) *regTable {
	return &regTable{mask: uint64(size - 1), buckets: make([]atomic.Pointer[[]*provider], size)}
}

// hash mixes the two IDs with a per-registry random seed. IDs are short (at
// most 64 bytes, usually under 16) and this runs on every lookup, so it
// reads eight bytes at a time and multiplies once per word: measured with
// callgrind, two hash/maphash.String calls cost about twice the
// instructions, which made hashing the largest part of a warm Key.
func (r *registry) hash(tenant, provider string) uint64 {
	h := mixString(r.seed, tenant)
	h = mixString(h^0xff51afd7ed558ccd, provider)
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	return h ^ h>>29
}

// mixString folds s into h: whole words, then the last 1-8 bytes in at most
// two overlapping loads, and the length, so "ab"+"c" and "a"+"bc" differ.
func mixString(h uint64, s string) uint64 {
	const m = 0x9e3779b97f4a7c15
	b := unsafe.Slice(unsafe.StringData(s), len(s))
	n := len(b)
	for len(b) > 8 {
		h = (h ^ binary.LittleEndian.Uint64(b)) * m
		h ^= h >> 31
		b = b[8:]
	}
	var w uint64
	switch l := len(b); {
	case l >= 4:
		w = uint64(binary.LittleEndian.Uint32(b)) | uint64(binary.LittleEndian.Uint32(b[l-4:]))<<32
	case l > 0:
		w = uint64(b[0])<<16 | uint64(b[l>>1])<<8 | uint64(b[l-1])
	}
	h = (h ^ w ^ uint64(n)<<56) * m
	return h ^ h>>31
}

// get returns the provider of (tenant, provider), or nil.
func (r *registry) get(tenant, provider string) *provider {
	t := r.table.Load()
	b := t.buckets[r.hash(tenant, provider)&t.mask].Load()
	if b == nil {
		return nil
	}
	for _, p := range *b {
		if p.key.provider == provider && p.key.tenant == tenant {
			return p
		}
	}
	return nil
}

// addLocked inserts p, whose key must not be present. r.mu must be held.
func (r *registry) addLocked(p *provider) {
	t := r.table.Load()
	if r.n+1 > 2*len(t.buckets) {
		t = r.growLocked(t)
	}
	r.insertLocked(t, p)
	r.n++
	if r.tenants == nil {
		r.tenants = make(map[string]map[string]*provider)
	}
	ps := r.tenants[p.key.tenant]
	if ps == nil {
		ps = make(map[string]*provider)
		r.tenants[p.key.tenant] = ps
	}
	ps[p.key.provider] = p
}

// tenant returns the providers of tenant, in no particular order.
func (r *registry) tenant(tenant string) []*provider {
	r.mu.Lock()
	defer r.mu.Unlock()
	ps := r.tenants[tenant]
	out := make([]*provider, 0, len(ps))
	for _, p := range ps {
		out = append(out, p)
	}
	return out
}

func (r *registry) insertLocked(t *regTable, p *provider) {
	bp := &t.buckets[r.hash(p.key.tenant, p.key.provider)&t.mask]
	var nb []*provider
	if old := bp.Load(); old != nil {
		nb = make([]*provider, len(*old), len(*old)+1)
		copy(nb, *old)
	}
	nb = append(nb, p)
	bp.Store(&nb)
}

// growLocked builds a table of twice the size and publishes it; readers see
// either the old table or the complete new one.
func (r *registry) growLocked(old *regTable) *regTable {
	t := newRegTable(2 * len(old.buckets))
	for i := range old.buckets {
		if b := old.buckets[i].Load(); b != nil {
			for _, p := range *b {
				r.insertLocked(t, p)
			}
		}
	}
	r.table.Store(t)
	return t
}

// removeLocked deletes the provider of key and returns it, or nil. r.mu
// must be held.
func (r *registry) removeLocked(key providerKey) *provider {
	t := r.table.Load()
	bp := &t.buckets[r.hash(key.tenant, key.provider)&t.mask]
	old := bp.Load()
	if old == nil {
		return nil
	}
	for i, p := range *old {
		if p.key == key {
			nb := make([]*provider, 0, len(*old)-1)
			nb = append(nb, (*old)[:i]...)
			nb = append(nb, (*old)[i+1:]...)
			if len(nb) == 0 {
				bp.Store(nil)
			} else {
				bp.Store(&nb)
			}
			r.n--
			if ps := r.tenants[key.tenant]; ps != nil {
				delete(ps, key.provider)
				if len(ps) == 0 {
					delete(r.tenants, key.tenant)
				}
			}
			return p
		}
	}
	return nil
}

// clear removes every provider and returns them.
func (r *registry) clear() []*provider {
	r.mu.Lock()
	defer r.mu.Unlock()
	all := r.all()
	r.table.Store(newRegTable(64))
	r.issuers.Clear()
	r.tenants = nil
	r.n = 0
	return all
}

// all returns every provider, in no particular order.
func (r *registry) all() []*provider {
	t := r.table.Load()
	var out []*provider
	for i := range t.buckets {
		if b := t.buckets[i].Load(); b != nil {
			out = append(out, *b...)
		}
	}
	return out
}

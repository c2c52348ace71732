package jwkscache

import (
	"strconv"
	"sync"
	"testing"
)

func regProvider(tenant, id string) *provider {
	return &provider{key: providerKey{tenant, id}, heapIdx: -1}
}

func TestRegistryAddGetRemove(t *testing.T) {
	r := newRegistry()
	const n = 5000 // several doublings of the 64-bucket table
	r.mu.Lock()
	for i := range n {
		r.addLocked(regProvider("t"+strconv.Itoa(i%7), "p"+strconv.Itoa(i)))
	}
	r.mu.Unlock()
	if got := len(r.all()); got != n {
		t.Fatalf("all() = %d providers, want %d", got, n)
	}
	for i := range n {
		tn, id := "t"+strconv.Itoa(i%7), "p"+strconv.Itoa(i)
		p := r.get(tn, id)
		if p == nil || p.key.tenant != tn || p.key.provider != id {
			t.Fatalf("get(%s, %s) = %v", tn, id, p)
		}
		// The same provider ID under another tenant is another pair.
		if q := r.get("t"+strconv.Itoa((i+1)%7), id); q != nil {
			t.Fatalf("get under the wrong tenant found %v", q.key)
		}
	}
	for i := 0; i < n; i += 2 {
		if p := r.remove(providerKey{"t" + strconv.Itoa(i%7), "p" + strconv.Itoa(i)}); p == nil {
			t.Fatalf("remove %d found nothing", i)
		}
	}
	if p := r.remove(providerKey{"t0", "p0"}); p != nil {
		t.Fatal("second remove found the provider again")
	}
	for i := range n {
		got := r.get("t"+strconv.Itoa(i%7), "p"+strconv.Itoa(i))
		if (got != nil) != (i%2 == 1) {
			t.Fatalf("after removals, get(%d) = %v", i, got)
		}
	}
	if got := len(r.clear()); got != n/2 {
		t.Fatalf("clear returned %d, want %d", got, n/2)
	}
	if r.get("t1", "p1") != nil || len(r.all()) != 0 {
		t.Fatal("registry not empty after clear")
	}
}

// The table grows with the providers, so buckets stay short: a lookup
// scans a handful of entries whatever the count.
func TestRegistryBucketsStayShort(t *testing.T) {
	r := newRegistry()
	r.mu.Lock()
	for i := range 100_000 {
		r.addLocked(regProvider("tenant-"+strconv.Itoa(i/1000), "auth0"+strconv.Itoa(i%1000)))
	}
	r.mu.Unlock()
	tab := r.table.Load()
	longest := 0
	for i := range tab.buckets {
		if b := tab.buckets[i].Load(); b != nil {
			longest = max(longest, len(*b))
		}
	}
	// 100,000 keys in >= 50,000 buckets: a fair hash keeps the longest
	// bucket around 10; a broken one (say, ignoring the tenant) gives 100.
	if longest > 16 {
		t.Fatalf("longest bucket = %d entries in %d buckets", longest, len(tab.buckets))
	}
}

func TestRegistryHashSeparatesIDs(t *testing.T) {
	r := newRegistry()
	pairs := [][2]string{{"ab", "c"}, {"a", "bc"}, {"abc", ""}, {"", "abc"}, {"acme", "auth0"}, {"auth0", "acme"},
		{"tenant-12345678", "p"}, {"tenant-1234567", "8p"}}
	seen := map[uint64][2]string{}
	for _, p := range pairs {
		h := r.hash(p[0], p[1])
		if q, dup := seen[h]; dup {
			t.Errorf("hash(%q) == hash(%q)", p, q)
		}
		seen[h] = p
	}
	if other := newRegistry(); other.hash("acme", "auth0") == r.hash("acme", "auth0") {
		t.Error("two registries hash alike: the seed is not random")
	}
}

// Readers never lock: they must see consistent tables while a writer
// grows and shrinks them (run with -race).
func TestRegistryConcurrentReaders(t *testing.T) {
	r := newRegistry()
	r.mu.Lock()
	r.addLocked(regProvider("fixed", "p"))
	r.mu.Unlock()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if r.get("fixed", "p") == nil {
					t.Error("reader lost a provider that was never removed")
					return
				}
			}
		}()
	}
	for i := range 3000 {
		r.mu.Lock()
		r.addLocked(regProvider("t", strconv.Itoa(i)))
		r.mu.Unlock()
		if i%3 == 0 {
			r.remove(providerKey{"t", strconv.Itoa(i)})
		}
	}
	close(stop)
	wg.Wait()
}

func BenchmarkRegistryGet(b *testing.B) {
	r := newRegistry()
	r.mu.Lock()
	for i := range 10_000 {
		r.addLocked(regProvider("tenant-"+strconv.Itoa(i%100), "provider-"+strconv.Itoa(i)))
	}
	r.mu.Unlock()
	b.ReportAllocs()
	for b.Loop() {
		if r.get("tenant-42", "provider-4242") == nil {
			b.Fatal("missing")
		}
	}
}

// remove is removeLocked with the lock taken, for tests.
func (r *registry) remove(key providerKey) *provider {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.removeLocked(key)
}

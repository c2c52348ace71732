package jwkscache

import (
	"runtime"
	"sync"
	"sync/atomic"
	_ "unsafe" // for go:linkname
)

// hitCounter counts cache hits per provider without contention: every
// provider has a slot in each of hitStripes arrays, and an increment writes
// the stripe of the processor (P) it runs on, so two cores never write the
// same cache line while there are no more Ps than stripes. Reading sums
// the stripes. It costs 8 bytes per stripe per provider.
//
// A single atomic per provider would be simpler, but on the lookup path two
// cores serving one busy provider would bounce its cache line on every
// call, costing more than the lookup itself. A stripe picked from the
// goroutine's stack address (the previous design) made two busy goroutines
// share a stripe one run in eight, and a random stripe per call makes half
// of all writes find the line owned by the other core.
//
// A slot is reused by another provider only after the provider that held
// it is unreachable (a runtime cleanup releases it): a lookup that found
// the provider just before Unregister may still count into the slot, and
// that count must never show under another (tenant, provider).
type hitCounter struct {
	mu      sync.Mutex // serialises growth and slot allocation; guards free, next
	free    []uint32
	next    uint32
	stripes [hitStripes]hitStripe
}

const (
	hitStripes   = 8
	hitChunkBits = 10
	hitChunkSize = 1 << hitChunkBits
)

type hitStripe struct {
	chunks atomic.Pointer[[]*[hitChunkSize]atomic.Uint64]
	_      [56]byte // keep stripes' headers on their own cache lines
}

// alloc returns a zeroed slot.
func (c *hitCounter) alloc() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := len(c.free); n > 0 {
		s := c.free[n-1]
		c.free = c.free[:n-1]
		for i := range c.stripes {
			c.cell(i, s).Store(0)
		}
		return s
	}
	s := c.next
	c.next++
	if s&(hitChunkSize-1) == 0 {
		for i := range c.stripes {
			st := &c.stripes[i]
			var chunks []*[hitChunkSize]atomic.Uint64
			if old := st.chunks.Load(); old != nil {
				chunks = append(chunks, *old...)
			}
			chunks = append(chunks, new([hitChunkSize]atomic.Uint64))
			st.chunks.Store(&chunks)
		}
	}
	return s
}

// allocFor returns a zeroed slot for owner and arranges for the slot to be
// released once owner is unreachable. Every increment of the slot must
// keep owner alive until it is done (runtime.KeepAlive).
func (c *hitCounter) allocFor(owner *provider) uint32 {
	s := c.alloc()
	runtime.AddCleanup(owner, func(s uint32) { c.release(s) }, s)
	return s
}

// release returns a slot for reuse.
func (c *hitCounter) release(s uint32) {
	c.mu.Lock()
	c.free = append(c.free, s)
	c.mu.Unlock()
}

func (c *hitCounter) cell(stripe int, s uint32) *atomic.Uint64 {
	return &(*c.stripes[stripe].chunks.Load())[s>>hitChunkBits][s&(hitChunkSize-1)]
}

//go:linkname procPin runtime.procPin
func procPin() int

//go:linkname procUnpin runtime.procUnpin
func procUnpin()

// inc adds one to slot s, in the stripe of the current P. Pinning costs
// about a nanosecond and keeps the goroutine on that P for the add, as
// sync.Pool does.
func (c *hitCounter) inc(s uint32) {
	stripe := procPin() & (hitStripes - 1)
	c.cell(stripe, s).Add(1)
	procUnpin()
}

// load returns the count of slot s.
func (c *hitCounter) load(s uint32) uint64 {
	var n uint64
	for i := range c.stripes {
		n += c.cell(i, s).Load()
	}
	return n
}

package jwkscache

import (
	"sync"
	"sync/atomic"
	"unsafe"
)

// hitCounter counts cache hits per provider without contention: every
// provider has a slot in each of hitStripes arrays, and an increment picks
// a stripe from the goroutine's stack address (see inc), so two cores
// rarely write the same cache line. Reading sums the stripes. It costs 8
// bytes per stripe per provider.
//
// A single atomic per provider would be simpler, but on the lookup path two
// cores serving one busy provider would bounce its cache line on every
// call, costing more than the lookup itself.
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

// release returns a slot for reuse.
func (c *hitCounter) release(s uint32) {
	c.mu.Lock()
	c.free = append(c.free, s)
	c.mu.Unlock()
}

func (c *hitCounter) cell(stripe int, s uint32) *atomic.Uint64 {
	return &(*c.stripes[stripe].chunks.Load())[s>>hitChunkBits][s&(hitChunkSize-1)]
}

// inc adds one to slot s. The stripe comes from the address of a stack
// variable, hashed: goroutines running at the same time live on different
// stacks, so they mostly pick different stripes, for less than a random
// number costs (math/rand/v2 measured 10 ns slower here). Two busy
// goroutines still share a stripe one time in eight.
func (c *hitCounter) inc(s uint32) {
	var probe byte
	stripe := int(uint64(uintptr(unsafe.Pointer(&probe)))>>10*0x9e3779b97f4a7c15>>61) & (hitStripes - 1)
	c.cell(stripe, s).Add(1)
}

// load returns the count of slot s.
func (c *hitCounter) load(s uint32) uint64 {
	var n uint64
	for i := range c.stripes {
		n += c.cell(i, s).Load()
	}
	return n
}

package jwkscache

import (
	"container/heap"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// scheduler runs the background work of every provider. One goroutine
// keeps a timer heap ordered by due time; when a provider comes due it
// withdraws keys whose stale window has run out right there (no I/O, no
// user code, so expiry is on time however busy the fetches are) and queues
// providers whose refresh is due for a bounded pool of workers. The
// goroutine count does not depend on the number of providers.
//
// A provider waiting for a worker, or whose fetch is running, stays in the
// heap at the end of its stale window, so a backlog never delays the
// withdrawal of keys.
//
// Slow providers (the latest fetch failed or took at least slowFetch, or a
// first load has not completed yet) may hold at most half the workers, so
// IdPs that answer slowly or not at all cannot starve healthy providers'
// refreshes: each slow fetch can hold a worker for its whole Deadline.
// Slow providers beyond that wait in line, without polling, and each
// released slot goes to the next in line.
type scheduler struct {
	m     *Manager
	epoch time.Time     // due times count from here, on the monotonic clock
	wake  chan struct{} // buffered(1): the earliest due time may have changed
	ready chan struct{} // buffered(workers): the queue has work
	busy  atomic.Int32  // workers visiting a provider (a metric)

	mu       sync.Mutex // guards the fields below and every provider's due, heapIdx, queued, slowWaiting and slowGranted
	h        provHeap
	queue    []*provider // due for a worker, oldest first
	slow     int         // worker slots held by slow providers
	maxSlow  int
	slowWait []*provider // slow providers waiting for a slot, oldest first
}

func newScheduler(m *Manager, workers int) *scheduler {
	return &scheduler{
		m:       m,
		epoch:   time.Now(),
		wake:    make(chan struct{}, 1),
		ready:   make(chan struct{}, workers),
		maxSlow: max(1, workers/2),
	}
}

// mono returns t as nanoseconds since s.epoch, on the monotonic clock when
// t has a reading (times derived from time.Now do), so a wall-clock jump
// moves no visit.
func (s *scheduler) mono(t time.Time) int64 { return int64(t.Sub(s.epoch)) }

// schedule sets (or moves) p's visit to at. Callers hold p.mu and have
// checked that p is not removed, so a visit is rarely scheduled for a
// provider that Unregister has taken out (and such a visit does nothing).
func (s *scheduler) schedule(p *provider, at time.Time) {
	due := s.mono(at)
	first := func() bool {
		// Unlocked by defer, so that even a panic here leaves the lock
		// free for the recovery, which reschedules through this method.
		s.mu.Lock()
		defer s.mu.Unlock()
		first := len(s.h) == 0 || due < s.h[0].due
		p.due = due
		if p.heapIdx >= 0 {
			heap.Fix(&s.h, int(p.heapIdx))
		} else {
			heap.Push(&s.h, p)
		}
		return first
	}()
	if first {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// remove drops p from the heap. A removed provider still in the queue or
// in line for a slow slot is skipped when its turn comes.
func (s *scheduler) remove(p *provider) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.heapIdx >= 0 {
		heap.Remove(&s.h, int(p.heapIdx))
	}
}

// run is the timer loop.
func (s *scheduler) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var due []*provider
	for {
		now := time.Now()
		wait := time.Duration(-1)
		s.mu.Lock()
		for len(s.h) > 0 && s.h[0].due <= s.mono(now) {
			if p, ok := heap.Pop(&s.h).(*provider); ok {
				due = append(due, p)
			}
		}
		if len(s.h) > 0 {
			wait = time.Duration(s.h[0].due - s.mono(now))
		}
		s.mu.Unlock()
		if len(due) > 0 {
			for i, p := range due {
				if s.expire(p, now) {
					s.enqueue(p)
				}
				due[i] = nil
			}
			due = due[:0]
			if ctx.Err() != nil {
				return
			}
			continue
		}
		if wait >= 0 {
			timer.Reset(wait)
		} else {
			timer.Stop()
		}
		select {
		case <-timer.C:
		case <-s.wake:
		case <-ctx.Done():
			return
		}
	}
}

// expire is the timer goroutine's look at p when it comes due: it
// withdraws keys whose stale window has run out and reports whether a
// refresh is due. It keeps p in the heap at the end of its stale window
// while a refresh is pending or running, and at its next due time
// otherwise. It does no I/O and runs no user code (events are queued).
func (s *scheduler) expire(p *provider, now time.Time) (refresh bool) {
	var evs []Event
	func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.removed.Load() {
			return
		}
		if sn := p.snap.Load(); sn != nil && !now.Before(sn.staleUntil) {
			p.withdrawLocked(sn)
			evs = p.setStateLocked(StateEmpty, evs)
			evs = p.staleEndedLocked(now, evs)
			if p.nextRefresh.After(now) && p.errorCount == 0 {
				p.nextRefresh = now
			}
		} else if sn != nil && p.errorCount > 0 {
			evs = p.staleBeganLocked(sn, now, evs)
		}
		if sn := p.snap.Load(); sn != nil && !now.Before(sn.expiresAt) {
			p.markStaleLocked()
		}
		refresh = !p.inflight && !now.Before(p.nextRefresh)
		if !refresh && !p.inflight {
			s.schedule(p, p.nextDueLocked())
			return
		}
		// A refresh is pending or running: watch the keys' expiry and stale
		// window.
		if w := p.watchLocked(); !w.IsZero() {
			s.schedule(p, w)
		}
	}()
	p.emit(evs)
	return refresh
}

// enqueue hands p to the workers.
func (s *scheduler) enqueue(p *provider) {
	s.mu.Lock()
	if !p.queued {
		p.queued = true
		s.queue = append(s.queue, p)
	}
	s.mu.Unlock()
	select {
	case s.ready <- struct{}{}:
	default: // every worker has a wake-up pending and will drain the queue
	}
}

// waiting returns how many providers wait for a worker: queued, or in
// line for a slow slot.
func (s *scheduler) waiting() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue) + len(s.slowWait)
}

// take returns the oldest queued provider, or nil.
func (s *scheduler) take() *provider {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return nil
	}
	p := s.queue[0]
	s.queue[0] = nil
	s.queue = s.queue[1:]
	p.queued = false
	return p
}

// worker visits queued providers until ctx ends.
func (s *scheduler) worker(ctx context.Context) {
	for {
		if p := s.take(); p != nil {
			s.busy.Add(1)
			s.visit(p)
			s.busy.Add(-1)
			continue
		}
		select {
		case <-s.ready:
		case <-ctx.Done():
			return
		}
	}
}

// takeGrant reports whether p was handed a slow slot while it waited, and
// clears the grant: the caller now holds the slot.
func (s *scheduler) takeGrant(p *provider) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := p.slowGranted
	p.slowGranted = false
	return g
}

// acquireOrWait reserves a slot for slow provider p, or puts p in line
// for the next slot released and returns false.
func (s *scheduler) acquireOrWait(p *provider) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.slow < s.maxSlow {
		s.slow++
		return true
	}
	if !p.slowWaiting {
		p.slowWaiting = true
		s.slowWait = append(s.slowWait, p)
	}
	return false
}

// releaseSlow hands the slot to the next provider in line, or frees it.
// Removed providers in line are skipped.
func (s *scheduler) releaseSlow() {
	s.mu.Lock()
	var next *provider
	for len(s.slowWait) > 0 {
		p := s.slowWait[0]
		s.slowWait[0] = nil
		s.slowWait = s.slowWait[1:]
		p.slowWaiting = false
		if !p.removed.Load() {
			next = p
			break
		}
	}
	if next == nil {
		s.slow--
		s.mu.Unlock()
		return
	}
	next.slowGranted = true
	s.mu.Unlock()
	s.enqueue(next)
}

// visit is a worker's visit to p: it refreshes p if the refresh is (still)
// due. A slow provider needs one of the slow slots, or waits in line for
// one. A panic is recovered, logged and counted, so one bad provider cannot
// take the pool down; the recovery takes no lock of p's.
func (s *scheduler) visit(p *provider) {
	held := s.takeGrant(p)
	defer func() {
		if held {
			s.releaseSlow()
		}
		if r := recover(); r != nil {
			s.m.panics.Add(1)
			s.m.logf(p, slog.LevelError, "jwkscache: panic in refresh worker",
				slog.String("tenant", p.key.tenant), slog.String("provider", p.key.provider),
				slog.String("panic", capText(fmt.Sprint(r))), slog.String("stack", stackTrace()))
			if !p.removed.Load() {
				// Retry late, but never past the end of the stale window.
				at := time.Now().Add(failureBackoffMax)
				if sn := p.snap.Load(); sn != nil && sn.staleUntil.Before(at) {
					at = sn.staleUntil
				}
				s.schedule(p, at)
			}
		}
	}()
	now := time.Now()
	var (
		slow bool
		seen uint64
		due  bool
	)
	func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.removed.Load() || p.inflight {
			return
		}
		if now.Before(p.nextRefresh) {
			s.schedule(p, p.nextDueLocked())
			return
		}
		due, slow, seen = true, p.slow, p.applied.Load()
	}()
	if !due {
		return
	}
	if slow && !held {
		if !s.acquireOrWait(p) {
			return // in line; the heap still watches the stale window
		}
		held = true
	}
	_ = p.refreshNow(seen, reasonScheduled) // apply reschedules
	// The flight may have been another caller's that ended before ours
	// began: make sure p stays scheduled.
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.removed.Load() && !p.inflight {
		s.schedule(p, p.nextDueLocked())
	}
}

// provHeap is a min-heap of providers by due time.
type provHeap []*provider

func (h provHeap) Len() int           { return len(h) }
func (h provHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h provHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = int32(i)
	h[j].heapIdx = int32(j)
}
func (h *provHeap) Push(x any) {
	if p, ok := x.(*provider); ok {
		p.heapIdx = int32(len(*h))
		*h = append(*h, p)
	}
}
func (h *provHeap) Pop() any {
	old := *h
	n := len(old)
	p := old[n-1]
	old[n-1] = nil
	p.heapIdx = -1
	*h = old[:n-1]
	return p
}

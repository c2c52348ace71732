package jwkscache

import (
	"container/heap"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// scheduler runs the background work of every provider. One goroutine
// keeps a timer heap ordered by due time; when a provider comes due it
// withdraws keys whose stale window has run out right there (no I/O, so
// expiry is on time however busy the fetches are) and queues providers
// whose refresh is due for a bounded pool of workers. The goroutine count
// does not depend on the number of providers.
//
// Providers whose last fetch failed may hold at most half the workers, so
// an IdP outage affecting many tenants cannot starve healthy providers'
// refreshes: each failing fetch can hold a worker for its whole Deadline.
// Failing providers beyond that wait in line, without polling, and each
// released slot goes to the next in line.
type scheduler struct {
	m     *Manager
	wake  chan struct{} // buffered(1): the earliest due time may have changed
	ready chan struct{} // buffered(workers): the queue has work

	mu         sync.Mutex // guards the fields below and every provider's due, heapIdx, queued, failWaiting and failGranted
	h          provHeap
	queue      []*provider // due for a worker, oldest first
	failing    int         // worker slots held by providers whose last fetch failed
	maxFailing int
	failWait   []*provider // failing providers waiting for a slot, oldest first
}

func newScheduler(m *Manager, workers int) *scheduler {
	return &scheduler{
		m:          m,
		wake:       make(chan struct{}, 1),
		ready:      make(chan struct{}, workers),
		maxFailing: max(1, workers/2),
	}
}

// schedule sets (or moves) p's visit to at. Callers hold p.mu and have
// checked that p is not removed, so a visit is never scheduled for a
// provider that Unregister has taken out.
func (s *scheduler) schedule(p *provider, at time.Time) {
	s.mu.Lock()
	first := len(s.h) == 0 || at.Before(s.h[0].due)
	p.due = at
	if p.heapIdx >= 0 {
		heap.Fix(&s.h, p.heapIdx)
	} else {
		heap.Push(&s.h, p)
	}
	s.mu.Unlock()
	if first {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// remove drops p from the heap. Callers hold p.mu.
func (s *scheduler) remove(p *provider) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.heapIdx >= 0 {
		heap.Remove(&s.h, p.heapIdx)
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
		for len(s.h) > 0 && !s.h[0].due.After(now) {
			due = append(due, heap.Pop(&s.h).(*provider))
		}
		if len(s.h) > 0 {
			wait = s.h[0].due.Sub(now)
		}
		s.mu.Unlock()
		if len(due) > 0 {
			for i, p := range due {
				if p.expire(now) {
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
			s.visit(p)
			continue
		}
		select {
		case <-s.ready:
		case <-ctx.Done():
			return
		}
	}
}

// takeGrant reports whether p was handed a failing slot while it waited,
// and clears the grant: the caller now holds the slot.
func (s *scheduler) takeGrant(p *provider) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := p.failGranted
	p.failGranted = false
	return g
}

// acquireOrWait reserves a slot for failing provider p, or puts p in line
// for the next slot released and returns false.
func (s *scheduler) acquireOrWait(p *provider) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failing < s.maxFailing {
		s.failing++
		return true
	}
	if !p.failWaiting {
		p.failWaiting = true
		s.failWait = append(s.failWait, p)
	}
	return false
}

// releaseFailing hands the slot to the next provider in line, or frees it.
func (s *scheduler) releaseFailing() {
	s.mu.Lock()
	if len(s.failWait) == 0 {
		s.failing--
		s.mu.Unlock()
		return
	}
	p := s.failWait[0]
	s.failWait[0] = nil
	s.failWait = s.failWait[1:]
	p.failWaiting = false
	p.failGranted = true
	s.mu.Unlock()
	s.enqueue(p)
}

// visit runs p.tick, turning a panic into a logged error so one bad
// provider cannot take the pool down.
func (s *scheduler) visit(p *provider) {
	defer func() {
		if r := recover(); r != nil {
			s.m.panics.Add(1)
			s.m.log.LogAttrs(context.Background(), slog.LevelError, "jwkscache: panic in refresh worker",
				slog.String("tenant", p.key.tenant), slog.String("provider", p.key.provider), slog.String("panic", fmt.Sprint(r)))
			p.mu.Lock()
			if !p.removed {
				s.schedule(p, time.Now().Add(failureBackoffMax))
			}
			p.mu.Unlock()
		}
	}()
	p.tick()
}

// provHeap is a min-heap of providers by due time.
type provHeap []*provider

func (h provHeap) Len() int           { return len(h) }
func (h provHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h provHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}
func (h *provHeap) Push(x any) {
	p := x.(*provider)
	p.heapIdx = len(*h)
	*h = append(*h, p)
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

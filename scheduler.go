package jwkscache

import (
	"container/heap"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// scheduler runs the background work of every provider: one goroutine
// keeps a timer heap ordered by due time and hands due providers to a
// bounded pool of workers. The goroutine count does not depend on the
// number of providers.
type scheduler struct {
	m    *Manager
	wake chan struct{} // buffered(1): the earliest due time may have changed
	work chan *provider

	mu sync.Mutex // guards h and every provider's due and heapIdx
	h  provHeap
}

func newScheduler(m *Manager) *scheduler {
	return &scheduler{m: m, wake: make(chan struct{}, 1), work: make(chan *provider)}
}

// schedule sets (or moves) p's visit to at.
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

// remove drops p from the heap.
func (s *scheduler) remove(p *provider) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.heapIdx >= 0 {
		heap.Remove(&s.h, p.heapIdx)
	}
}

// len returns the number of providers scheduled.
func (s *scheduler) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.h)
}

// run is the timer loop.
func (s *scheduler) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		var p *provider
		wait := time.Duration(-1)
		if len(s.h) > 0 {
			if d := time.Until(s.h[0].due); d <= 0 {
				p = heap.Pop(&s.h).(*provider)
			} else {
				wait = d
			}
		}
		s.mu.Unlock()
		if p != nil {
			select {
			case s.work <- p:
			case <-ctx.Done():
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

// worker visits due providers until ctx ends.
func (s *scheduler) worker(ctx context.Context) {
	for {
		select {
		case p := <-s.work:
			s.visit(p)
		case <-ctx.Done():
			return
		}
	}
}

// visit runs p.tick, turning a panic into a logged error so one bad
// provider cannot take the pool down.
func (s *scheduler) visit(p *provider) {
	defer func() {
		if r := recover(); r != nil {
			s.m.panics.Add(1)
			s.m.log.LogAttrs(context.Background(), slog.LevelError, "jwkscache: panic in refresh worker",
				slog.String("tenant", p.key.tenant), slog.String("provider", p.key.provider), slog.String("panic", fmt.Sprint(r)))
			s.schedule(p, time.Now().Add(failureBackoffMax))
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

package jwkscache

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// notifyQueueLen bounds the events and log records waiting for user code.
const notifyQueueLen = 1024

// maxStackLog caps the stack trace logged with a recovered panic.
const maxStackLog = 8 << 10

// notice is one item for user code: an event for Options.OnEvent, or a
// record for the Logger's handler.
type notice struct {
	ev    Event
	rec   slog.Record
	isRec bool
}

// notifier hands events and log records to user code (Options.OnEvent and
// the Logger's handler) on one goroutine of its own, through a bounded
// queue. The engine never waits for user code: when the queue is full the
// item is dropped and counted per provider. So a callback or
// log handler that blocks delays only other callbacks and log records,
// never a lookup, a refresh, expiry or Close.
type notifier struct {
	onEvent func(Event)
	handler slog.Handler // nil when there is no Logger
	panics  *atomic.Uint64

	ch   chan notice
	stop chan struct{}
	done chan struct{}
	once sync.Once

	mu      sync.Mutex // guards stopped and busy; never held while user code runs
	stopped bool
	busy    bool // the goroutine is running user code
}

func newNotifier(onEvent func(Event), log *slog.Logger, panics *atomic.Uint64) *notifier {
	n := &notifier{onEvent: onEvent, panics: panics, stop: make(chan struct{}), done: make(chan struct{})}
	if log != nil {
		n.handler = log.Handler()
	}
	if n.onEvent == nil && n.handler == nil {
		close(n.done)
		return n
	}
	n.ch = make(chan notice, notifyQueueLen)
	go n.run()
	return n
}

// logs reports whether log records are wanted at all, so that callers can
// skip building them.
func (n *notifier) logs() bool { return n.handler != nil }

// event queues ev for OnEvent. It never blocks; a dropped event is counted
// in *dropped (the provider's counter).
func (n *notifier) event(ev Event, dropped *atomic.Uint64) {
	if n.onEvent == nil {
		return
	}
	n.put(notice{ev: ev}, dropped)
}

// log queues a record for the Logger's handler. It never blocks.
func (n *notifier) log(level slog.Level, msg string, dropped *atomic.Uint64, attrs ...slog.Attr) {
	if n.handler == nil {
		return
	}
	r := slog.NewRecord(time.Now(), level, msg, 0)
	r.AddAttrs(attrs...)
	n.put(notice{rec: r, isRec: true}, dropped)
}

func (n *notifier) put(it notice, dropped *atomic.Uint64) {
	select {
	case <-n.stop:
		return // closed: nobody will deliver it
	default:
	}
	select {
	case n.ch <- it:
	default:
		if dropped != nil {
			dropped.Add(1)
		}
	}
}

// run delivers queued items until close.
func (n *notifier) run() {
	defer close(n.done)
	for {
		select {
		case it := <-n.ch:
			if !n.enter() {
				return // closed meanwhile: deliver nothing more
			}
			n.deliver(it)
			n.mu.Lock()
			n.busy = false
			n.mu.Unlock()
		case <-n.stop:
			return
		}
	}
}

// enter marks the goroutine busy for one delivery, unless close has been
// called: close then either sees it busy (and does not wait) or knows it
// will deliver nothing more.
func (n *notifier) enter() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return false
	}
	n.busy = true
	return true
}

// deliver runs user code for one item. A panic is recovered, counted and
// logged (when the panic was not the log handler's own).
func (n *notifier) deliver(it notice) {
	defer func() {
		if r := recover(); r != nil {
			n.panics.Add(1)
			if it.isRec || n.handler == nil {
				return // the handler itself panicked, or there is none to log to
			}
			rec := slog.NewRecord(time.Now(), slog.LevelError, "jwkscache: panic in OnEvent", 0)
			rec.AddAttrs(slog.String("tenant", it.ev.TenantID), slog.String("provider", it.ev.ProviderID),
				slog.String("event", string(it.ev.Kind)), slog.String("panic", capText(fmt.Sprint(r))),
				slog.String("stack", stackTrace()))
			n.deliver(notice{rec: rec, isRec: true})
		}
	}()
	if it.isRec {
		ctx := context.Background()
		if n.handler.Enabled(ctx, it.rec.Level) {
			_ = n.handler.Handle(ctx, it.rec)
		}
		return
	}
	n.onEvent(it.ev)
}

// close stops the goroutine: it delivers nothing more. Close waits for it
// to exit (until deadline; not at all when deadline is nil) unless it is
// running user code: a callback that does not return keeps the goroutine
// until it does, and Close does not wait for it.
func (n *notifier) close(deadline <-chan time.Time) bool {
	n.once.Do(func() { close(n.stop) })
	n.mu.Lock()
	n.stopped = true
	busy := n.busy
	n.mu.Unlock()
	if busy {
		return false
	}
	if deadline == nil {
		return false
	}
	// Not in user code, and it will not enter any: it exits at once.
	select {
	case <-n.done:
		return true
	case <-deadline:
		return false
	}
}

// stackTrace returns the calling goroutine's stack, capped.
func stackTrace() string {
	s := debug.Stack()
	if len(s) > maxStackLog {
		s = s[:maxStackLog]
	}
	return string(s)
}

package redisstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// subscriptionBuffer is how many messages go-redis buffers for a
// subscription whose fn is busy. Past that, go-redis waits (up to a
// minute) for room, then drops the message.
const subscriptionBuffer = 256

// Subscribe delivers the note of every Commit under the Store's prefix,
// by any Store of the fleet (this one included), to fn, one call at a
// time on a goroutine of the Store, until ctx is done or the Store is
// closed. It returns once Redis has confirmed the subscription (SUBSCRIBE
// to the channel prefix+"events"), or with the error that prevented it.
//
// After that, go-redis keeps the subscription up: it pings an idle
// connection, and reconnects and subscribes again when the connection
// breaks. Notes published while the subscription is down are lost (Redis
// pub/sub keeps nothing for absent subscribers); that is fine for a
// Manager, which reads the Store before each refresh anyway. Messages on
// the channel that are not notes of this package, or are larger than
// MaxMessageSize, are ignored and counted in Stats.MessagesIgnored.
//
// fn must not block for long (go-redis drops messages after a minute
// without room in the subscription's buffer) and must not call Close.
// Each Subscribe takes a connection of its own, and has two goroutines of
// go-redis besides its own; all three exit when ctx is done or Close is
// called (Close waits for them).
func (s *Store) Subscribe(ctx context.Context, fn func(tenantID, providerID string, note []byte)) error {
	const op = "Subscribe"
	if fn == nil {
		return errors.New("redisstore: Subscribe: nil fn")
	}
	if err := ctx.Err(); err != nil {
		return opError(op, err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.subs.Add(1)
	s.mu.Unlock()

	// run ends with ctx or with Close; when it ends, the PubSub is
	// closed, which also ends a Receive in progress.
	run, cancel := context.WithCancel(ctx)
	stopOnClose := context.AfterFunc(s.ctx, cancel)
	ps := s.client.Subscribe(run, s.channel)
	context.AfterFunc(run, func() { _ = ps.Close() })
	fail := func(err error) error {
		cancel()
		stopOnClose()
		_ = ps.Close()
		s.subs.Done()
		if s.ctx.Err() != nil {
			return ErrClosed
		}
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return opError(op, err)
	}

	// Wait for Redis to confirm the subscription, so that no Commit after
	// Subscribe returns is missed.
	for {
		m, err := ps.Receive(run)
		if err != nil {
			return fail(err)
		}
		if sub, ok := m.(*redis.Subscription); ok {
			if sub.Kind != "subscribe" || sub.Channel != s.channel {
				return fail(fmt.Errorf("unexpected %s of channel %q", sub.Kind, sub.Channel))
			}
			break
		}
		// A Pong, or a message (none can come before the confirmation).
	}

	ch := ps.ChannelWithSubscriptions(redis.WithChannelSize(subscriptionBuffer))
	go func() {
		defer s.subs.Done()
		defer stopOnClose()
		defer cancel()
		for {
			select {
			case <-run.Done():
				_ = ps.Close()
				for range ch {
					// Drain until go-redis's receiving goroutine has seen the
					// close and exited, so that it never waits on a full
					// channel that nobody reads.
				}
				return
			case m, ok := <-ch:
				if !ok {
					return
				}
				switch m := m.(type) {
				case *redis.Subscription:
					if m.Kind == "subscribe" {
						s.stats.resubscriptions.Add(1)
						if s.subscribedHook != nil {
							s.subscribedHook()
						}
					}
				case *redis.Message:
					if run.Err() == nil {
						s.deliver(m, fn)
					}
				}
			}
		}
	}()
	return nil
}

// deliver decodes a message and passes it to fn, or counts it ignored.
func (s *Store) deliver(m *redis.Message, fn func(tenantID, providerID string, note []byte)) {
	if m.Channel != s.channel || m.PayloadSlice != nil || len(m.Payload) > MaxMessageSize {
		s.stats.messagesIgnored.Add(1)
		return
	}
	tenant, provider, note, ok := parseFrame(m.Payload)
	if !ok {
		s.stats.messagesIgnored.Add(1)
		return
	}
	s.stats.messagesDelivered.Add(1)
	fn(tenant, provider, []byte(note))
}

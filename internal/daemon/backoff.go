package daemon

import (
	"context"
	"time"
)

// backoff is the wait of a retry loop: first min, doubled after each
// wait up to max.
type backoff struct {
	min, max, next time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max, next: min} }

// wait sleeps the current delay, then doubles it; false if ctx ended
// first.
func (b *backoff) wait(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(b.next):
	}
	b.next = min(2*b.next, b.max)
	return true
}

// reset makes the next wait min again.
func (b *backoff) reset() { b.next = b.min }

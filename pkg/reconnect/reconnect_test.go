package reconnect

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestLoopBacksOffAndResets(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Sessions 1-3 deliver nothing, 4 delivers, 5 delivers nothing, then ctx ends.
	delivered := []bool{false, false, false, true, false}
	var waits []time.Duration
	n := 0
	Loop(ctx, Backoff{Min: 8 * time.Millisecond, Max: 20 * time.Millisecond},
		func(context.Context) (bool, error) {
			n++
			if n > len(delivered) {
				cancel()
				return false, nil
			}
			return delivered[n-1], errors.New("ended")
		},
		func(err error, wait time.Duration) {
			if err == nil {
				t.Error("ended without the session's error")
			}
			waits = append(waits, wait)
		})
	// Current backoff before each wait: 8, 16, 20 (capped), 8 (reset by a delivery), 16.
	bounds := []time.Duration{8, 16, 20, 8, 16}
	if len(waits) != len(bounds) {
		t.Fatalf("waits %v, want %d", waits, len(bounds))
	}
	for i, w := range waits {
		hi := bounds[i] * time.Millisecond
		if w < hi/2 || w > hi {
			t.Errorf("wait %d = %v, want within [%v, %v]", i, w, hi/2, hi)
		}
	}
}

func TestLoopStopsDuringWait(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Loop(ctx, Backoff{Min: time.Hour, Max: time.Hour}, func(context.Context) (bool, error) { return false, nil },
			func(error, time.Duration) { cancel() })
	}()
	<-done // returns although the wait is an hour
}

// Package reconnect is the reconnect loop of the mesh's long-lived client sessions (a
// delta xDS stream, the ZDS connection): run a session, and when it ends wait a jittered
// exponential backoff before the next, starting over from the shortest wait after a session
// that delivered something. It is not a general retry library and knows no protocol.
package reconnect

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff bounds the wait between sessions; the wait doubles after each session that
// delivered nothing. Both must be positive, Min ≤ Max.
type Backoff struct{ Min, Max time.Duration }

// Loop runs session until ctx ends, then returns. After each session it calls ended (if
// not nil) with the session's error and the wait before the next one; the wait is drawn
// between half and all of the current backoff.
func Loop(ctx context.Context, b Backoff, session func(context.Context) (delivered bool, err error), ended func(err error, wait time.Duration)) {
	backoff := b.Min
	for {
		delivered, err := session(ctx)
		if ctx.Err() != nil {
			return
		}
		if delivered {
			backoff = b.Min
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		if ended != nil {
			ended(err, wait)
		}
		backoff = min(2*backoff, b.Max)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

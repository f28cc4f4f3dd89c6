package proxy

import (
	"context"
	"errors"
	"time"

	"github.com/ambient-lite/ambient-lite/waypoint/internal/l7config"
)

// errPerTryTimeout is the cause of a try cancelled by its route's per_try_timeout.
var errPerTryTimeout = errors.New("upstream per-try timeout")

// try is the context of the one upstream try of a request, bounded as Envoy bounds it: the
// route timeout until the response is complete, the per-try timeout until the response
// starts (Envoy ignores a per-try timeout once it has sent response headers downstream).
type try struct {
	ctx    context.Context
	timer  *time.Timer // the per-try timer; nil if none
	cancel func()
}

func newTry(parent context.Context, f *l7config.Forward) *try {
	ctx, cancelRoute := parent, context.CancelFunc(func() {})
	if f.Timeout > 0 {
		ctx, cancelRoute = context.WithTimeout(parent, f.Timeout)
	}
	ctx, cancelTry := context.WithCancelCause(ctx)
	t := &try{ctx: ctx}
	if f.PerTryTimeout > 0 && (f.Timeout == 0 || f.PerTryTimeout < f.Timeout) {
		t.timer = time.AfterFunc(f.PerTryTimeout, func() { cancelTry(errPerTryTimeout) })
	}
	t.cancel = func() {
		if t.timer != nil {
			t.timer.Stop()
		}
		cancelTry(context.Canceled)
		cancelRoute()
	}
	return t
}

// responseStarted stops the per-try timer when the response headers arrived; false if
// it had fired already (the try is cancelled).
func (t *try) responseStarted() bool {
	return t.timer == nil || t.timer.Stop()
}

// timedOut reports whether the try ended by a timeout, and Envoy's response code details
// for it.
func (t *try) timedOut() (string, bool) {
	switch cause := context.Cause(t.ctx); {
	case errors.Is(cause, errPerTryTimeout):
		return "upstream_per_try_timeout", true
	case errors.Is(cause, context.DeadlineExceeded):
		return "upstream_response_timeout", true
	}
	return "", false
}

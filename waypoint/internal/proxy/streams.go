package proxy

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
)

// streamSet tracks the streams the proxy serves in process, for Shutdown and Close: idle
// HTTP/1.1 streams are closed when draining starts, busy ones after their response; a
// drain waits for the HTTP streams (TCP passed through is cut when it ends, as before).
type streamSet struct {
	mu       sync.Mutex
	m        map[*served]struct{}
	closed   bool
	draining atomic.Bool
	wg       sync.WaitGroup // every stream
	httpWG   sync.WaitGroup // streams served as HTTP
}

// served is one stream being served.
type served struct {
	c     net.Conn
	state atomic.Int32
	http  bool
}

const (
	stateActive int32 = iota
	stateIdle
	stateClosed
)

// add registers a stream, unless the proxy is draining or closed.
func (s *streamSet) add(c net.Conn) (*served, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.draining.Load() {
		return nil, false
	}
	if s.m == nil {
		s.m = map[*served]struct{}{}
	}
	sv := &served{c: c}
	s.m[sv] = struct{}{}
	s.wg.Add(1)
	return sv, true
}

// serveHTTP marks sv as served as HTTP, which a drain waits for; false if draining.
func (s *streamSet) serveHTTP(sv *served) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.draining.Load() {
		return false
	}
	sv.http = true
	s.httpWG.Add(1)
	return true
}

func (s *streamSet) remove(sv *served) {
	s.mu.Lock()
	delete(s.m, sv)
	s.mu.Unlock()
	if sv.http {
		s.httpWG.Done()
	}
	s.wg.Done()
}

// idle marks sv idle between requests; false if the stream must close instead.
func (s *streamSet) idle(sv *served) bool {
	if !sv.state.CompareAndSwap(stateActive, stateIdle) {
		return false
	}
	if s.draining.Load() { // Shutdown may have looked before sv went idle
		sv.state.Store(stateClosed)
		return false
	}
	return true
}

// active marks sv busy again once a request began; false if Shutdown closed it.
func (sv *served) active() bool { return sv.state.CompareAndSwap(stateIdle, stateActive) }

func (sv *served) close() {
	sv.state.Store(stateClosed)
	sv.c.Close()
}

// drain starts draining: new streams are refused, idle ones closed.
func (s *streamSet) drain() {
	s.draining.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	for sv := range s.m {
		if sv.state.CompareAndSwap(stateIdle, stateClosed) {
			sv.c.Close()
		}
	}
}

// closeAll closes every stream and refuses new ones.
func (s *streamSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for sv := range s.m {
		sv.close()
	}
}

// waitHTTP waits until every HTTP stream ended or ctx ends.
func (s *streamSet) waitHTTP(ctx context.Context) error {
	done := make(chan struct{})
	go func() { // ends at the latest when closeAll ended the streams
		s.httpWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

package hbone

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// serveStream serves one HTTP/2 stream.
func (s *Server) serveStream(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	info, _ := r.Context().Value(connInfoKey{}).(*connInfo)
	if info == nil {
		info = &connInfo{}
	}
	req := &Request{Header: r.Header, Peer: info.peer, LocalAddr: info.local, RemoteAddr: info.remote}
	if !s.trackStream() {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	defer s.wg.Done()
	st := s.handle(w, r, req)
	st.Duration = time.Since(start)
	if st.Err != nil {
		s.log.Debug("hbone stream ended", "status", st.Status, "target", req.Target, "peer", req.Peer, "err", st.Err)
	}
	if s.onDone != nil {
		s.onDone(req, st)
	}
	if errors.Is(st.Err, errUpstreamAborted) {
		// Reset the stream (RST_STREAM) instead of ending it cleanly: the upstream failed,
		// and the client must not mistake that for EOF.
		panic(http.ErrAbortHandler)
	}
}

func (s *Server) trackStream() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

var errUpstreamAborted = errors.New("upstream connection failed")

func (s *Server) handle(w http.ResponseWriter, r *http.Request, req *Request) Stats {
	target, status, err := parseConnect(r.Method, r.Host)
	if err != nil {
		w.WriteHeader(status)
		return Stats{Status: status, Err: err}
	}
	req.Target = target
	upstream, err := s.handler(r.Context(), req)
	if err != nil {
		status := http.StatusServiceUnavailable
		var se *StatusError
		if errors.As(err, &se) && se.Code >= 400 && se.Code <= 599 {
			status = se.Code
		}
		w.WriteHeader(status)
		return Stats{Status: status, Err: err}
	}
	if upstream == nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		return Stats{Status: http.StatusServiceUnavailable, Err: errors.New("handler returned no upstream")}
	}
	defer upstream.Close()
	w.WriteHeader(http.StatusOK)
	if err := http.NewResponseController(w).Flush(); err != nil {
		return Stats{Status: http.StatusOK, Err: err}
	}
	if lu, ok := upstream.(*localUpstream); ok {
		c := newServerConn(w, r, req.LocalAddr, req.RemoteAddr)
		lu.serve(c)
		return Stats{Status: http.StatusOK, ToUpstream: c.read, FromUpstream: c.written, Err: c.werr}
	}
	st := pipe(r.Context(), w, r, upstream)
	st.Status = http.StatusOK
	return st
}

// pipe copies between the client's stream and upstream until both directions end.
//
// The client's half-close (END_STREAM) becomes a FIN to upstream (or, for a connection that
// cannot half-close, a close), and the upstream's reply keeps flowing. When upstream ends
// first, the response must end, and net/http's handler model ends it only by returning,
// which also stops the client's direction; so the client-side copy is stopped too. An
// upstream error resets the stream.
func pipe(ctx context.Context, w http.ResponseWriter, r *http.Request, upstream net.Conn) Stats {
	// The stream's context ends when the client resets the stream or the connection goes;
	// closing upstream then unblocks both copies.
	stop := context.AfterFunc(ctx, func() { upstream.Close() })
	defer stop()

	type result struct {
		n          int64
		rerr, werr error
		closed     bool // upstream was closed because it cannot half-close
	}
	toUp := make(chan result, 1)
	go func() {
		var res result
		res.n, res.rerr, res.werr = copyStream(upstream, r.Body)
		if res.rerr == nil && res.werr == nil && !closeWrite(upstream) {
			res.closed = true
			upstream.Close()
		}
		toUp <- res
	}()
	fromN, rerr, werr := copyStream(w, upstream)
	var up result
	select {
	case up = <-toUp:
	default:
		// Upstream ended first: stop reading the client (its reads now fail with a
		// closed-body error that is ours, not the client's).
		r.Body.Close()
		up = <-toUp
		up.rerr = nil
	}

	st := Stats{ToUpstream: up.n, FromUpstream: fromN}
	switch {
	case up.rerr != nil:
		st.Err = up.rerr // the client reset the stream or its connection failed
	case werr != nil:
		st.Err = werr // the client went away
	case rerr != nil && ctx.Err() == nil && !up.closed:
		st.Err = errors.Join(errUpstreamAborted, rerr)
	case up.werr != nil && ctx.Err() == nil:
		st.Err = errors.Join(errUpstreamAborted, up.werr)
	}
	return st
}

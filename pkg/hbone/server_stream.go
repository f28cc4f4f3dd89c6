package hbone

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// serveStream serves one HTTP/2 stream, in its own goroutine.
func (s *Server) serveStream(st *stream, r *streamRequest, info *connInfo) {
	start := time.Now()
	req := &Request{Header: r.header, Peer: info.peer, LocalAddr: info.local, RemoteAddr: info.remote}
	if !s.trackStream() {
		_ = st.c.respond(st, http.StatusServiceUnavailable)
		st.close(http2.ErrCodeNo)
		return
	}
	defer s.wg.Done()
	var st1 Stats
	if r.status != 0 {
		// Malformed for HTTP (header list too long, connection-specific fields).
		st1 = Stats{Status: r.status, Err: r.err}
		if err := st.c.respond(st, r.status); err != nil {
			st1.Err = errors.Join(st1.Err, err)
		}
	} else {
		st1 = s.handle(st.ctx, st, r, req)
	}
	st1.Duration = time.Since(start)
	if st1.Err != nil {
		s.log.Debug("hbone stream ended", "status", st1.Status, "target", req.Target, "peer", req.Peer, "err", st1.Err)
	}
	if s.onDone != nil {
		s.onDone(req, st1)
	}
	if errors.Is(st1.Err, errUpstreamAborted) {
		// Reset the stream (RST_STREAM) instead of ending it cleanly: the upstream failed,
		// and the client must not mistake that for EOF.
		st.abort(http2.ErrCodeInternal, errUpstreamAborted)
	}
	// End our direction if still open (a Local serve that returned without CloseWrite):
	// the client reads EOF. If the client is still sending (a refused stream, a Local
	// serve done reading), tell it to stop: RST_STREAM NO_ERROR after the complete
	// response (RFC 9113 §8.1).
	_ = st.c.endStream(st)
	st.close(http2.ErrCodeNo)
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

// decide parses a request and asks the Handler: it returns the upstream to pipe to, or
// no upstream and the Stats of the refusal (whose Status is the status to answer).
func (s *Server) decide(ctx context.Context, method, authority string, req *Request) (net.Conn, Stats) {
	target, status, err := parseConnect(method, authority)
	if err != nil {
		return nil, Stats{Status: status, Err: err}
	}
	req.Target = target
	upstream, err := s.handler(ctx, req)
	if err != nil {
		status := http.StatusServiceUnavailable
		var se *StatusError
		if errors.As(err, &se) && se.Code >= 400 && se.Code <= 599 {
			status = se.Code
		}
		return nil, Stats{Status: status, Err: err}
	}
	if upstream == nil {
		return nil, Stats{Status: http.StatusServiceUnavailable, Err: errors.New("handler returned no upstream")}
	}
	return upstream, Stats{Status: http.StatusOK}
}

func (s *Server) handle(ctx context.Context, st *stream, r *streamRequest, req *Request) Stats {
	upstream, stats := s.decide(ctx, r.method, r.authority, req)
	if upstream == nil {
		if err := st.c.respond(st, stats.Status); err != nil {
			stats.Err = errors.Join(stats.Err, err)
		}
		return stats
	}
	defer upstream.Close()
	if err := st.c.respond(st, http.StatusOK); err != nil {
		return Stats{Status: http.StatusOK, Err: err}
	}
	if lu, ok := upstream.(*localUpstream); ok {
		return serveLocal(st, lu, req)
	}
	stats = pipe(ctx, st, upstream)
	stats.Status = http.StatusOK
	return stats
}

// pipe copies between the client's stream and upstream until both directions end.
//
// Each direction ends on its own, as with ztunnel: the client's half-close (END_STREAM)
// becomes a FIN to upstream (or, for a connection that cannot half-close, a close), and
// the upstream's FIN becomes END_STREAM to the client, while the other direction keeps
// flowing. An upstream error resets the stream (the caller sends RST_STREAM).
func pipe(ctx context.Context, st *stream, upstream net.Conn) Stats {
	// The stream's context ends when the client resets the stream or the connection goes;
	// closing upstream then unblocks both copies.
	stop := context.AfterFunc(ctx, func() { upstream.Close() })
	defer stop()

	type result struct {
		n          int64
		rerr, werr error
	}
	var upClosed atomic.Bool // upstream closed by us because it cannot half-close
	toUp := make(chan result, 1)
	go func() {
		var res result
		res.n, res.rerr, res.werr = st.splice(upstream)
		if res.rerr == nil && res.werr == nil && !closeWrite(upstream) {
			upClosed.Store(true)
			upstream.Close()
		}
		toUp <- res
	}()
	fromN, rerr, werr := copyStream(st, upstream)
	aborted := false
	switch {
	case werr != nil:
		// The client went away: stop reading it too.
		st.abort(http2.ErrCodeCancel, werr)
	case rerr != nil && ctx.Err() == nil && !upClosed.Load():
		aborted = true
		st.abort(http2.ErrCodeInternal, errUpstreamAborted)
	default:
		// Upstream's FIN (or our own close of it): end our direction only.
		_ = st.CloseWrite()
	}
	up := <-toUp

	stats := Stats{ToUpstream: up.n, FromUpstream: fromN}
	switch {
	case aborted:
		stats.Err = errors.Join(errUpstreamAborted, rerr)
	case up.rerr != nil:
		stats.Err = up.rerr // the client reset the stream or its connection failed
	case werr != nil:
		stats.Err = werr // the client went away
	case up.werr != nil && ctx.Err() == nil:
		stats.Err = errors.Join(errUpstreamAborted, up.werr)
	}
	return stats
}

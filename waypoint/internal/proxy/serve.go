package proxy

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambient-lite/ambient-lite/waypoint/internal/sniff"
)

// serveStream serves a stream in process, on the stream's goroutine: it sniffs the
// protocol if need be, then serves HTTP/1.1 or h2c on it, or passes it through as TCP.
// It returns when the stream is done; the hbone server then ends it.
func (p *Proxy) serveStream(ctx context.Context, c net.Conn, st *stream) {
	sv, ok := p.streams.add(c)
	if !ok {
		return
	}
	defer p.streams.remove(sv)
	// Requests end with the stream, or when the proxy closes.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(p.ctx, cancel)()
	proto, h2c := st.plan.Proto, false
	if proto == protoSniff {
		sc := &sniffConn{Conn: c, wg: &p.wg}
		sp, rc, err := sniff.Conn(sc, p.opts.SniffTimeout)
		if err != nil {
			return
		}
		c, proto, h2c = rc, protoHTTP, sp == sniff.HTTP2
		if sp == sniff.TCP {
			proto = protoTCP
		}
	}
	if proto == protoTCP {
		p.passTCP(c, st)
		return
	}
	if !p.streams.serveHTTP(sv) {
		return
	}
	lr := &limitReader{r: c}
	lr.unlimited()
	br := getReader(lr)
	if !h2c && st.plan.Proto != protoSniff {
		// Nothing read yet: wait for the first bytes as for a request head, idle for a drain.
		timer := time.AfterFunc(readHeaderTimeout, sv.close)
		ok := p.streams.idle(sv)
		if ok {
			_, err := br.Peek(1)
			ok = sv.active() && err == nil
		}
		h2c = ok && hasPreface(br)
		timer.Stop()
		if !ok {
			return
		}
	}
	if h2c {
		p.serveH2C(ctx, &bufferedConn{Conn: c, r: br}, st)
		return // br is the connection's now: not pooled
	}
	p.serveHTTP1(ctx, sv, c, lr, br, func(ctx context.Context, w http.ResponseWriter, r *http.Request) {
		p.serve(ctx, w, r, st)
	})
}

// hasPreface reports whether the stream starts with the HTTP/2 client preface, reading no
// more than it must to tell.
func hasPreface(br *bufio.Reader) bool {
	for n := 1; ; n = min(max(n+1, br.Buffered()), len(sniff.Preface)) {
		b, err := br.Peek(n)
		if err != nil || string(b) != sniff.Preface[:n] {
			return false
		}
		if n == len(sniff.Preface) {
			return true
		}
	}
}

// serveH2C serves an h2c (prior knowledge) stream with x/net's server: a rare path.
func (p *Proxy) serveH2C(ctx context.Context, c net.Conn, st *stream) {
	p.h2srv.ServeConn(c, &http2.ServeConnOpts{
		Context:    context.WithValue(ctx, streamKey{}, st),
		BaseConfig: p.h1base,
		Handler:    http.HandlerFunc(p.serveHTTP),
	})
}

// bufferedConn reads through r, which may hold bytes read ahead from Conn.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

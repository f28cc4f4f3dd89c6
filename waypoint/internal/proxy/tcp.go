package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/hbone"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/accesslog"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/authz"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/metrics"
)

// l4Attributes are a stream's attributes for TCP policy.
func l4Attributes(st *stream) *authz.Attributes {
	return &authz.Attributes{
		Principal:       principal(st),
		SourceIP:        st.source.Addr(),
		DestinationIP:   st.plan.Target.Addr(),
		DestinationPort: st.plan.Target.Port(),
	}
}

func principal(st *stream) string {
	if st.peer.IsZero() {
		return ""
	}
	return st.peer.String()
}

// tcpUpstream authorizes a TCP stream and dials its destination: a healthy endpoint of
// the Service, or the workload addressed.
func (p *Proxy) tcpUpstream(ctx context.Context, snap *meshstate.Snapshot, st *stream) (meshstate.Route, net.Conn, error) {
	a := l4Attributes(st)
	d := st.plan.VHost.Authz.Evaluate(a)
	p.shadow(d, a, st)
	if !d.Allowed {
		return meshstate.Route{}, nil, hbone.Reject(http.StatusUnauthorized, errors.New("RBAC: access denied"))
	}
	r, err := snap.Direct(st.plan.Target, p.pick)
	if err != nil {
		return r, nil, hbone.Reject(http.StatusServiceUnavailable, err)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := p.dialRoute(dctx, r)
	if err != nil {
		return r, nil, hbone.Reject(http.StatusServiceUnavailable, err)
	}
	return r, c, nil
}

// openTCP serves a stream whose Service port is TCP: the HBONE server pipes the stream to
// the returned upstream.
func (p *Proxy) openTCP(ctx context.Context, snap *meshstate.Snapshot, st *stream) (net.Conn, error) {
	r, up, err := p.tcpUpstream(ctx, snap, st)
	if err != nil {
		p.logTCP(st, r, 0, 0, 0, err)
		return nil, err
	}
	return p.countTCP(st, r, up), nil
}

// passTCP serves a stream sniffed as TCP: c is the stream, bytes already read replayed.
func (p *Proxy) passTCP(c net.Conn, st *stream) {
	defer c.Close()
	r, up, err := p.tcpUpstream(p.ctx, p.opts.State(), st)
	if err != nil {
		p.logTCP(st, r, 0, 0, 0, err)
		return
	}
	up = p.countTCP(st, r, up)
	defer up.Close()
	stop := context.AfterFunc(p.ctx, func() { c.Close(); up.Close() })
	defer stop()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(up, c)
		closeWrite(up)
	}()
	_, _ = io.Copy(c, up)
	c.Close()
	wg.Wait()
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// countTCP wraps an upstream connection so its bytes and lifetime are recorded when it
// closes.
func (p *Proxy) countTCP(st *stream, r meshstate.Route, c net.Conn) net.Conn {
	l := p.labels(st, r, "tcp")
	p.opts.Metrics.TCPOpen(&l)
	return &countedConn{Conn: c, done: func(sent, recvd int64, d time.Duration) {
		p.opts.Metrics.TCPClose(&l, sent, recvd)
		p.logTCP(st, r, sent, recvd, d, nil)
	}, start: time.Now()}
}

func (p *Proxy) logTCP(st *stream, r meshstate.Route, sent, recvd int64, d time.Duration, err error) {
	e := &accesslog.Entry{Authority: st.plan.Target.String(), SourcePrincipal: principal(st), Duration: d,
		BytesSent: sent, BytesReceived: recvd, Flags: "-"}
	if r.Target.IsValid() {
		e.Upstream = r.Target.String()
	}
	if err != nil {
		e.Flags = "UF"
		var se *hbone.StatusError
		if errors.As(err, &se) && se.Code == http.StatusUnauthorized {
			e.Flags = "RBAC"
		}
	}
	p.opts.AccessLog.Log(e)
}

// countedConn counts bytes written to it (towards the destination: received from the
// client) and read from it (sent to the client).
type countedConn struct {
	net.Conn
	sent, recvd atomic.Int64
	start       time.Time
	once        sync.Once
	done        func(sent, recvd int64, d time.Duration)
}

func (c *countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.sent.Add(int64(n))
	return n, err
}

func (c *countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.recvd.Add(int64(n))
	return n, err
}

func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.done(c.sent.Load(), c.recvd.Load(), time.Since(c.start)) })
	return err
}

// labels fills Istio's labels for a stream reaching route r.
func (p *Proxy) labels(st *stream, r meshstate.Route, proto string) metrics.Labels {
	l := metrics.Labels{RequestProtocol: proto}
	if !st.peer.IsZero() {
		l.SourcePrincipal, l.SourceWorkloadNamespace = st.peer.String(), st.peer.Namespace()
	}
	if w := st.src; w != nil {
		l.SourceWorkload, l.SourceWorkloadNamespace = w.GetWorkloadName(), w.GetNamespace()
		l.SourceApp, l.SourceVersion, l.SourceCluster = w.GetCanonicalName(), w.GetCanonicalRevision(), w.GetClusterId()
	}
	svc := r.Service
	if svc == nil {
		svc = st.plan.Service
	}
	if svc != nil {
		l.DestinationService, l.DestinationServiceName, l.DestinationServiceNamespace = svc.GetHostname(), svc.GetName(), svc.GetNamespace()
	}
	if w := r.Workload; w != nil {
		l.DestinationWorkload, l.DestinationWorkloadNamespace = w.GetWorkloadName(), w.GetNamespace()
		l.DestinationPrincipal = w.Identity.String()
		l.DestinationApp, l.DestinationVersion, l.DestinationCluster = w.GetCanonicalName(), w.GetCanonicalRevision(), w.GetClusterId()
	}
	return l
}

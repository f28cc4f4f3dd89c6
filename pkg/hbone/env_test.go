package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/mtls"
	"github.com/ambient-lite/ambient-lite/pkg/mtls/mtlstest"
)

const (
	clientID = "spiffe://cluster.local/ns/client/sa/curl"
	serverID = "spiffe://cluster.local/ns/server/sa/echo"
	otherID  = "spiffe://cluster.local/ns/server/sa/other"
)

// env is a CA, an HBONE server on loopback whose handler dials the target, and helpers.
type env struct {
	t        testing.TB
	ca       *mtlstest.CA
	server   *Server
	ln       *countingListener
	addr     netip.AddrPort
	handler  atomic.Pointer[Handler]
	doneMu   sync.Mutex
	done     []Stats
	clientTC *tls.Certificate
}

type envOptions struct {
	serverID string // identity the server presents; serverID if empty
	listen   string // server address; "127.0.0.1:0" if empty
}

func newEnv(t testing.TB, opts envOptions) *env {
	t.Helper()
	e := &env{t: t, ca: mtlstest.NewCA(t, "mesh")}
	e.clientTC = e.ca.Issue(t, mtlstest.ID(t, clientID))
	sid := cmpOr(opts.serverID, serverID)
	srvCert, _ := mtlstest.Static(e.ca.Issue(t, mtlstest.ID(t, sid)))
	sc, err := mtls.ServerConfig(spiffeid.RequireTrustDomainFromString("cluster.local"), srvCert, e.roots)
	if err != nil {
		t.Fatal(err)
	}
	h := Handler(dialTarget)
	e.handler.Store(&h)
	e.server, err = NewServer(ServerOptions{
		TLS:     sc,
		Handler: func(ctx context.Context, req *Request) (net.Conn, error) { return (*e.handler.Load())(ctx, req) },
		OnDone: func(_ *Request, st Stats) {
			e.doneMu.Lock()
			e.done = append(e.done, st)
			e.doneMu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln := listenOn(t, cmpOr(opts.listen, "127.0.0.1:0"))
	e.ln = &countingListener{Listener: ln}
	e.addr = ln.Addr().(*net.TCPAddr).AddrPort()
	served := make(chan error, 1)
	go func() { served <- e.server.Serve(context.Background(), e.ln) }()
	t.Cleanup(func() {
		e.server.Close()
		if err := <-served; err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return e
}

func (e *env) roots() []*x509.Certificate { return e.ca.Roots() }

func (e *env) setHandler(h Handler) { e.handler.Store(&h) }

func (e *env) stats() []Stats {
	e.doneMu.Lock()
	defer e.doneMu.Unlock()
	return append([]Stats(nil), e.done...)
}

// clientTLS returns a mesh client config expecting want (serverID if none).
func (e *env) clientTLS(want ...string) *tls.Config {
	e.t.Helper()
	if len(want) == 0 {
		want = []string{serverID}
	}
	ids := make([]identity.ID, len(want))
	for i, w := range want {
		ids[i] = mtlstest.ID(e.t, w)
	}
	_, cb := mtlstest.Static(e.clientTC)
	cfg, err := mtls.ClientConfig(cb, e.roots, ids...)
	if err != nil {
		e.t.Fatal(err)
	}
	return cfg
}

// request returns a DialRequest to target through the env's server, in pool key "a".
func (e *env) request(target netip.AddrPort) DialRequest {
	return DialRequest{
		Key: PoolKey{
			Source:        mtlstest.ID(e.t, clientID),
			Destinations:  IdentitySet(mtlstest.ID(e.t, serverID)),
			SourceIP:      netip.MustParseAddr("127.0.0.1"),
			DestinationIP: e.addr.Addr(),
		},
		Address: e.addr,
		Target:  target,
		TLS:     e.clientTLS(),
	}
}

func newDialer(t testing.TB, opts DialerOptions) *Dialer {
	t.Helper()
	d, err := NewDialer(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func dialTarget(ctx context.Context, req *Request) (net.Conn, error) {
	c, err := new(net.Dialer).DialContext(ctx, "tcp", req.Target.String())
	if err != nil {
		return nil, Reject(503, err)
	}
	return c, nil
}

func listen(t testing.TB) net.Listener { t.Helper(); return listenOn(t, "127.0.0.1:0") }

func listenOn(t testing.TB, addr string) net.Listener {
	t.Helper()
	ln, err := new(net.ListenConfig).Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// countingListener counts accepted connections and the ones still open.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
	open     atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.accepted.Add(1)
	l.open.Add(1)
	return &countedConn{Conn: c, l: l}, nil
}

type countedConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

// upstream runs a TCP server calling serve for every connection, until the test ends.
func upstream(t testing.TB, serve func(c *net.TCPConn)) netip.AddrPort {
	t.Helper()
	return upstreamOn(t, "127.0.0.1:0", serve)
}

func upstreamOn(t testing.TB, addr string, serve func(c *net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln := listenOn(t, addr)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				serve(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// echo copies a connection back to itself, then half-closes.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// checkGoroutines fails t if, once the test's cleanups ran, more goroutines remain than
// when it started. Call it first, so its cleanup runs last.
func checkGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > base {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("%d goroutines leaked (%d at start):\n%s", n-base, base, buf)
		}
	})
}

// eventually waits for cond, failing t after a generous time (not a speed assertion).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func isStatus(err error, code int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == code
}

func contains(err error, s string) bool { return err != nil && strings.Contains(err.Error(), s) }

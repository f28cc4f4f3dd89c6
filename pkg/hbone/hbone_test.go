package hbone

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambient-lite/ambient-lite/pkg/mtls"
	"github.com/ambient-lite/ambient-lite/pkg/mtls/mtlstest"
)

func TestEcho(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{})
	var seen *Request
	e.setHandler(func(ctx context.Context, req *Request) (net.Conn, error) {
		seen = req
		return dialTarget(ctx, req)
	})
	target := upstream(t, echo)
	d := newDialer(t, DialerOptions{})
	req := e.request(target)
	req.Source = netip.MustParseAddrPort("[fd00::7]:41234")
	req.Baggage = "k8s.namespace.name=client,k8s.deployment.name=curl"
	req.Traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	req.Header = http.Header{"X-Extra": {"1"}}
	s, err := d.Dial(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("hello through hbone")
	if _, err := s.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(s, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q, %v", got, err)
	}
	s.Close()

	if seen.Target != target {
		t.Errorf("handler target %v, want %v", seen.Target, target)
	}
	if seen.Peer.String() != clientID {
		t.Errorf("handler peer %q, want %s", seen.Peer, clientID)
	}
	if seen.LocalAddr != e.addr || seen.RemoteAddr != s.LocalAddr().(*net.TCPAddr).AddrPort() {
		t.Errorf("handler addresses local %v remote %v; server %v, client %v", seen.LocalAddr, seen.RemoteAddr, e.addr, s.LocalAddr())
	}
	if s.RemoteAddr().String() != target.String() {
		t.Errorf("stream RemoteAddr %v, want the target %v", s.RemoteAddr(), target)
	}
	for name, want := range map[string]string{
		"Forwarded":   `for="[fd00::7]:41234"`,
		"Baggage":     req.Baggage,
		"Traceparent": req.Traceparent,
		"X-Extra":     "1",
	} {
		if got := seen.Header.Get(name); got != want {
			t.Errorf("header %s = %q, want %q", name, got, want)
		}
	}
	if f, err := ParseForwarded(seen.Header.Get("Forwarded")); err != nil || f.For != req.Source {
		t.Errorf("ParseForwarded = %+v, %v", f, err)
	}
	d.Close()
	eventually(t, "the completion callback", func() bool { return len(e.stats()) == 1 })
	st := e.stats()[0]
	if st.Status != 200 || st.ToUpstream != int64(len(msg)) || st.FromUpstream != int64(len(msg)) {
		t.Errorf("stats %+v, want 200 and %d bytes each way", st, len(msg))
	}
}

func TestEchoIPv6(t *testing.T) {
	e := newEnv(t, envOptions{listen: "[::1]:0"})
	var seen *Request
	e.setHandler(func(ctx context.Context, req *Request) (net.Conn, error) {
		seen = req
		return dialTarget(ctx, req)
	})
	target := upstreamOn(t, "[::1]:0", echo)
	d := newDialer(t, DialerOptions{})
	req := e.request(target)
	req.Key.SourceIP = netip.IPv6Loopback()
	req.Source = netip.MustParseAddrPort("[fd00::7]:1")
	s, err := d.Dial(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Write([]byte("v6"))
	s.CloseWrite()
	if got, err := io.ReadAll(s); err != nil || string(got) != "v6" {
		t.Fatalf("echo %q, %v", got, err)
	}
	if seen.Target != target || seen.RemoteAddr.Addr() != netip.IPv6Loopback() || seen.Header.Get("Forwarded") != `for="[fd00::7]:1"` {
		t.Errorf("handler saw target %v (want %v) from %v, forwarded %q", seen.Target, target, seen.RemoteAddr, seen.Header.Get("Forwarded"))
	}
}

func TestStatusMapping(t *testing.T) {
	e := newEnv(t, envOptions{})
	d := newDialer(t, DialerOptions{})
	refused := upstream(t, echo) // any valid target
	tests := []struct {
		name    string
		handler Handler
		want    int
	}{
		{"policy denied", func(context.Context, *Request) (net.Conn, error) { return nil, Reject(401, errors.New("denied")) }, 401},
		{"upstream unreachable", func(context.Context, *Request) (net.Conn, error) { return nil, Reject(503, errors.New("no route")) }, 503},
		{"bad request", func(context.Context, *Request) (net.Conn, error) { return nil, Reject(400, errors.New("bad")) }, 400},
		{"plain error", func(context.Context, *Request) (net.Conn, error) { return nil, errors.New("boom") }, 503},
		{"status out of range", func(context.Context, *Request) (net.Conn, error) { return nil, Reject(302, nil) }, 503},
		{"nil upstream", func(context.Context, *Request) (net.Conn, error) { return nil, nil }, 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.setHandler(tt.handler)
			_, err := d.Dial(context.Background(), e.request(refused))
			if !isStatus(err, tt.want) {
				t.Fatalf("Dial err = %v, want status %d", err, tt.want)
			}
			if !contains(err, fmt.Sprintf("dialing %s via hbone %s", refused, e.addr)) {
				t.Errorf("error %q lacks context", err)
			}
		})
	}
	e.setHandler(dialTarget)
	t.Run("real unreachable upstream", func(t *testing.T) {
		ln := listen(t)
		dead := ln.Addr().(*net.TCPAddr).AddrPort()
		ln.Close()
		if _, err := d.Dial(context.Background(), e.request(dead)); !isStatus(err, 503) {
			t.Fatalf("Dial err = %v, want 503", err)
		}
	})
}

// TestBadRequests sends what the Dialer never sends (a bad authority, a GET) as raw
// HEADERS: the server answers 400 without calling the handler.
func TestBadRequests(t *testing.T) {
	e := newEnv(t, envOptions{})
	var called atomic.Bool
	d := newDialer(t, DialerOptions{})
	target := upstream(t, echo)
	// Borrow a pooled connection of the Dialer.
	s, err := func() (*Stream, error) {
		e.setHandler(dialTarget)
		return d.Dial(context.Background(), e.request(target))
	}()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e.setHandler(func(context.Context, *Request) (net.Conn, error) {
		called.Store(true)
		return nil, errors.New("unexpected")
	})
	d.mu.Lock()
	var pc *pooledConn
	for _, kp := range d.pools {
		pc = kp.conns[0]
	}
	d.mu.Unlock()
	tests := []struct{ method, authority string }{
		{"CONNECT", "example.com:80"},
		{"CONNECT", "10.0.0.1"},
		{"CONNECT", "10.0.0.1:0"},
		{"CONNECT", "[fe80::1%25eth0]:80"},
		{"GET", target.String()},
		{"POST", target.String()},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.authority, func(t *testing.T) {
			fields := []hpack.HeaderField{{Name: ":method", Value: tt.method}, {Name: ":authority", Value: tt.authority}}
			if tt.method != "CONNECT" {
				fields = append(fields, hpack.HeaderField{Name: ":scheme", Value: "https"}, hpack.HeaderField{Name: ":path", Value: "/"})
			}
			if !pc.cc.reserve() {
				t.Fatal("no room on the connection")
			}
			st, err := pc.cc.openStream(fields, false)
			if err != nil {
				t.Fatal(err)
			}
			defer st.close(http2.ErrCodeCancel)
			resp, err := st.awaitResponse(nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.status != 400 {
				t.Errorf("status %d, want 400", resp.status)
			}
		})
	}
	if called.Load() {
		t.Error("handler called for a bad request")
	}
}

func TestWrongServerIdentity(t *testing.T) {
	e := newEnv(t, envOptions{serverID: otherID})
	d := newDialer(t, DialerOptions{})
	_, err := d.Dial(context.Background(), e.request(upstream(t, echo)))
	want := "server presented " + otherID + ", want one of [" + serverID + "]"
	if !errors.Is(err, mtls.ErrIdentity) || !contains(err, want) {
		t.Fatalf("Dial err = %v, want %q", err, want)
	}
	if n := e.ln.accepted.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

func TestDialValidation(t *testing.T) {
	e := newEnv(t, envOptions{})
	d := newDialer(t, DialerOptions{})
	target := upstream(t, echo)
	tests := []struct {
		name   string
		modify func(*DialRequest)
		want   string
	}{
		{"no target", func(r *DialRequest) { r.Target = netip.AddrPort{} }, "target"},
		{"port 0", func(r *DialRequest) { r.Target = netip.MustParseAddrPort("10.0.0.1:0") }, "target"},
		{"zone", func(r *DialRequest) { r.Target = netip.MustParseAddrPort("[fe80::1%eth0]:80") }, "target"},
		{"no address", func(r *DialRequest) { r.Address = netip.AddrPort{} }, "no hbone address"},
		{"no tls", func(r *DialRequest) { r.TLS = nil }, "no tls config"},
		{"no h2", func(r *DialRequest) { r.TLS = r.TLS.Clone(); r.TLS.NextProtos = nil }, `ALPN "h2"`},
		{"reserved header", func(r *DialRequest) { r.Header = http.Header{"Connection": {"close"}} }, "reserved"},
		{"header injection", func(r *DialRequest) { r.Baggage = "a=b\r\nx: y" }, "invalid hbone request header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := e.request(target)
			tt.modify(&req)
			if _, err := d.Dial(context.Background(), req); !contains(err, tt.want) {
				t.Fatalf("Dial err = %v, want %q", err, tt.want)
			}
		})
	}
	if n := e.ln.accepted.Load(); n != 0 {
		t.Errorf("%d connections opened for invalid requests", n)
	}
}

func TestPoolReuse(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{})
	d := newDialer(t, DialerOptions{})
	target := upstream(t, echo)
	a := e.request(target)
	b := e.request(target)
	b.Key.Source = mtlstest.ID(t, "spiffe://cluster.local/ns/client/sa/other")
	var streams []*Stream
	for _, req := range []DialRequest{a, a, b, b} {
		s, err := d.Dial(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	if n := e.ln.accepted.Load(); n != 2 {
		t.Errorf("%d TCP connections for two keys, want 2", n)
	}
	for _, s := range streams {
		s.Close()
	}
	// A closed stream frees its slot: the next dial reuses the connection.
	s, err := d.Dial(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if n := e.ln.accepted.Load(); n != 2 {
		t.Errorf("%d TCP connections after reuse, want 2", n)
	}
	d.Close()
	eventually(t, "the server to see the connections closed", func() bool { return e.ln.open.Load() == 0 })
	if _, err := d.Dial(context.Background(), a); !errors.Is(err, ErrClosed) {
		t.Errorf("Dial after Close = %v, want ErrClosed", err)
	}
}

func TestPoolConcurrentDialsShareOneConnection(t *testing.T) {
	e := newEnv(t, envOptions{})
	d := newDialer(t, DialerOptions{})
	target := upstream(t, echo)
	const n = 50
	var wg sync.WaitGroup
	streams := make([]*Stream, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			streams[i], errs[i] = d.Dial(context.Background(), e.request(target))
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		defer streams[i].Close()
	}
	if got := e.ln.accepted.Load(); got != 1 {
		t.Errorf("%d TCP connections for %d concurrent dials, want 1", got, n)
	}
}

func TestPoolMaxStreams(t *testing.T) {
	e := newEnv(t, envOptions{})
	d := newDialer(t, DialerOptions{})
	target := upstream(t, echo)
	var streams []*Stream
	defer func() {
		for _, s := range streams {
			s.Close()
		}
	}()
	for i := range DefaultMaxStreamsPerConn + 1 {
		s, err := d.Dial(context.Background(), e.request(target))
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
		want := int64(1)
		if i >= DefaultMaxStreamsPerConn {
			want = 2
		}
		if got := e.ln.accepted.Load(); got != want {
			t.Fatalf("after %d streams: %d connections, want %d", i+1, got, want)
		}
	}
	// Every stream works, on either connection.
	for i, s := range []*Stream{streams[0], streams[DefaultMaxStreamsPerConn]} {
		msg := []byte(fmt.Sprint("stream ", i))
		s.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(s, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo %q, %v", got, err)
		}
	}
}

func TestIdleClose(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{})
	d := newDialer(t, DialerOptions{IdleTimeout: 50 * time.Millisecond})
	target := upstream(t, echo)
	s, err := d.Dial(context.Background(), e.request(target))
	if err != nil {
		t.Fatal(err)
	}
	// An open stream keeps the connection past the idle timeout.
	time.Sleep(200 * time.Millisecond)
	if e.ln.open.Load() != 1 {
		t.Fatal("connection with an open stream was closed")
	}
	s.Close()
	eventually(t, "the idle connection to close", func() bool { return e.ln.open.Load() == 0 })
	d.mu.Lock()
	pools := len(d.pools)
	d.mu.Unlock()
	if pools != 0 {
		t.Errorf("%d pools left after idle close", pools)
	}
	s, err = d.Dial(context.Background(), e.request(target))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if n := e.ln.accepted.Load(); n != 2 {
		t.Errorf("%d connections, want a new one after idle close", n)
	}
}

func TestHalfClose(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{})
	d := newDialer(t, DialerOptions{})
	// The upstream reads to EOF, then answers with what it read, reversed.
	target := upstream(t, func(c *net.TCPConn) {
		in, err := io.ReadAll(c)
		if err != nil {
			return
		}
		for i, j := 0, len(in)-1; i < j; i, j = i+1, j-1 {
			in[i], in[j] = in[j], in[i]
		}
		c.Write(in)
	})
	s, err := d.Dial(context.Background(), e.request(target))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Write([]byte("ping"))
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("x")); err == nil {
		t.Error("Write after CloseWrite succeeded")
	}
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "gnip" {
		t.Fatalf("reply %q, %v; want \"gnip\" then EOF", got, err)
	}
}

// TestUpstreamClosesFirst: an upstream's FIN ends only the server-to-client direction; the
// client reads EOF and can still send, until it half-closes too (ztunnel's behaviour; the
// net/http-based server ended the whole stream here).
func TestUpstreamClosesFirst(t *testing.T) {
	e := newEnv(t, envOptions{})
	d := newDialer(t, DialerOptions{})
	received := make(chan string, 1)
	target := upstream(t, func(c *net.TCPConn) {
		c.Write([]byte("bye"))
		c.CloseWrite()
		in, _ := io.ReadAll(c)
		received <- string(in)
	})
	s, err := d.Dial(context.Background(), e.request(target))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "bye" {
		t.Fatalf("read %q, %v; want \"bye\" then EOF", got, err)
	}
	for _, m := range []string{"still ", "talking"} {
		if _, err := s.Write([]byte(m)); err != nil {
			t.Fatalf("Write after the upstream's FIN: %v", err)
		}
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	select {
	case in := <-received:
		if in != "still talking" {
			t.Fatalf("upstream received %q after its FIN, want \"still talking\"", in)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("upstream never saw the client's bytes and EOF")
	}
	s.Close()
	eventually(t, "the completion callback", func() bool { return len(e.stats()) == 1 })
	if st := e.stats()[0]; st.Status != 200 || st.Err != nil || st.FromUpstream != 3 || st.ToUpstream != int64(len("still talking")) {
		t.Errorf("stats %+v, want a clean end with 3 bytes from and 13 to the upstream", st)
	}
}

func TestUpstreamResetReachesClient(t *testing.T) {
	e := newEnv(t, envOptions{})
	d := newDialer(t, DialerOptions{})
	target := upstream(t, func(c *net.TCPConn) {
		// Wait for the client, or the reset could beat the server's connect.
		if _, err := c.Read(make([]byte, 1)); err != nil {
			return
		}
		c.Write([]byte("partial"))
		c.SetLinger(0) // RST instead of FIN
	})
	s, err := d.Dial(context.Background(), e.request(target))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Write([]byte("go"))
	_, err = io.ReadAll(s)
	if err == nil {
		t.Fatal("upstream reset read as a clean EOF")
	}
}

func TestClientCloseReachesUpstream(t *testing.T) {
	e := newEnv(t, envOptions{})
	d := newDialer(t, DialerOptions{})
	closed := make(chan error, 1)
	target := upstream(t, func(c *net.TCPConn) {
		_, err := io.Copy(io.Discard, c) // ends at EOF or reset
		closed <- err
	})
	s, err := d.Dial(context.Background(), e.request(target))
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("some bytes"))
	s.Close() // both directions open: resets the stream
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("upstream never saw the client go away")
	}
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close = %v, want net.ErrClosed", err)
	}
	if _, err := s.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close = %v, want net.ErrClosed", err)
	}
}

func TestDeadlines(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{})
	d := newDialer(t, DialerOptions{})
	release := make(chan struct{})
	target := upstream(t, func(c *net.TCPConn) {
		<-release // neither reads nor writes until released
		echo(c)
	})
	defer close(release)
	s, err := d.Dial(context.Background(), e.request(target))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	s.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	n, err := s.Read(make([]byte, 10))
	if !errors.Is(err, os.ErrDeadlineExceeded) || n != 0 {
		t.Fatalf("Read past deadline = %d, %v", n, err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("deadline error %v is not a net.Error timeout", err)
	}
	// A deadline already passed fails at once; clearing it lets data through, including
	// data the interrupted read received later.
	s.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read with past deadline = %v", err)
	}
	// Writes block once the windows and socket buffers are full (the upstream reads
	// nothing); the write deadline interrupts them.
	s.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	chunk := make([]byte, 1<<20)
	var written int
	for {
		n, err := s.Write(chunk)
		written += n
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Write = %v, want a deadline error", err)
			}
			break
		}
		if written > 1<<30 {
			t.Fatal("wrote 1 GiB to an upstream that reads nothing")
		}
	}
	s.SetDeadline(time.Time{})
	release <- struct{}{}
	// The echo returns everything written; read it all back.
	got := 0
	buf := make([]byte, 64<<10)
	s.SetReadDeadline(time.Now().Add(time.Minute)) // exercise the deadline path for data
	for got < written {
		n, err := s.Read(buf)
		got += n
		if err != nil {
			t.Fatalf("read back %d of %d: %v", got, written, err)
		}
	}
}

func TestDialHookBindsSource(t *testing.T) {
	e := newEnv(t, envOptions{})
	var seen atomic.Pointer[Request]
	e.setHandler(func(ctx context.Context, req *Request) (net.Conn, error) {
		seen.Store(req)
		return dialTarget(ctx, req)
	})
	var hookKey atomic.Pointer[PoolKey]
	d := newDialer(t, DialerOptions{DialContext: func(ctx context.Context, key PoolKey, addr netip.AddrPort) (net.Conn, error) {
		hookKey.Store(&key)
		nd := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(key.SourceIP, 0))}
		return nd.DialContext(ctx, "tcp", addr.String())
	}})
	req := e.request(upstream(t, echo))
	req.Key.SourceIP = netip.MustParseAddr("127.0.0.2")
	s, err := d.Dial(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if *hookKey.Load() != req.Key {
		t.Errorf("hook got key %+v, want %+v", *hookKey.Load(), req.Key)
	}
	if got := seen.Load().RemoteAddr.Addr(); got != req.Key.SourceIP {
		t.Errorf("server saw the stream from %v, want the bound %v", got, req.Key.SourceIP)
	}
}

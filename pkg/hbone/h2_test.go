package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// TestXNetTransportToOurServer: x/net's HTTP/2 Transport CONNECTs through our Server.
func TestXNetTransportToOurServer(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{})
	target := upstream(t, echo)
	tr := &http2.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return (&tls.Dialer{Config: e.clientTLS()}).DialContext(ctx, network, e.addr.String())
		},
	}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Scheme: "https", Host: e.addr.String()},
		Host:   target.String(),
		Header: http.Header{"Baggage": {"k=v"}},
		Body:   pr,
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	c := &pipeConn{r: resp.Body, w: pw}
	roundTripBytes(t, c, []byte("hello from x/net"))
	bulkEcho(t, c, 8<<20)
	pw.Write([]byte("last"))
	pw.Close() // END_STREAM
	if rest, err := io.ReadAll(resp.Body); err != nil || string(rest) != "last" {
		t.Fatalf("after the end of the request read %q, %v", rest, err)
	}
	eventually(t, "the completion callback", func() bool { return len(e.stats()) == 1 })
	if st := e.stats()[0]; st.Status != 200 || st.Err != nil || st.ToUpstream != st.FromUpstream {
		t.Errorf("stats %+v", st)
	}

	t.Run("refused", func(t *testing.T) {
		e.setHandler(func(context.Context, *Request) (net.Conn, error) { return nil, Reject(401, nil) })
		resp, err := tr.RoundTrip(&http.Request{Method: http.MethodConnect, URL: &url.URL{Scheme: "https", Host: e.addr.String()}, Host: target.String(), Header: http.Header{}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("status %d, want 401", resp.StatusCode)
		}
	})
}

// TestOurDialerToXNetServer: our Dialer CONNECTs through an x/net HTTP/2 Server whose
// handler pipes to the target (the shape of Istio's server).
func TestOurDialerToXNetServer(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{}) // for its PKI
	target := upstream(t, echo)
	ln := listen(t)
	var wg sync.WaitGroup
	srv := &http2.Server{MaxReadFrameSize: 1 << 20}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			w.WriteHeader(400)
			return
		}
		up, err := net.Dial("tcp", r.Host)
		if err != nil {
			w.WriteHeader(503)
			return
		}
		defer up.Close()
		w.WriteHeader(200)
		http.NewResponseController(w).Flush()
		done := make(chan struct{})
		go func() {
			io.Copy(up, r.Body)
			up.(*net.TCPConn).CloseWrite()
			close(done)
		}()
		buf := make([]byte, 32<<10)
		for {
			n, err := up.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				http.NewResponseController(w).Flush()
			}
			if err != nil {
				break
			}
		}
		<-done
	})
	var conns sync.Map
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				tc := tls.Server(c, e.server.tls)
				if err := tc.Handshake(); err != nil {
					return
				}
				srv.ServeConn(tc, &http2.ServeConnOpts{Handler: handler})
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	d := newDialer(t, DialerOptions{})
	req := e.request(target)
	req.Address = ln.Addr().(*net.TCPAddr).AddrPort()
	s, err := d.Dial(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	roundTripBytes(t, s, []byte("hello to x/net"))
	bulkEcho(t, s, 8<<20)
	s.Write([]byte("last"))
	s.CloseWrite()
	if rest, err := io.ReadAll(s); err != nil || string(rest) != "last" {
		t.Fatalf("after CloseWrite read %q, %v", rest, err)
	}
	// Several streams on the pooled connection.
	var swg sync.WaitGroup
	for i := range 8 {
		swg.Add(1)
		go func() {
			defer swg.Done()
			s, err := d.Dial(context.Background(), req)
			if err != nil {
				t.Error(err)
				return
			}
			defer s.Close()
			roundTripBytes(t, s, bytes.Repeat([]byte{byte('a' + i)}, 1000*(i+1)))
		}()
	}
	swg.Wait()
}

// pipeConn is a request body writer and a response body reader as one ReadWriter.
type pipeConn struct {
	r io.Reader
	w io.Writer
}

func (c *pipeConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *pipeConn) Write(p []byte) (int, error) { return c.w.Write(p) }

func roundTripBytes(t *testing.T, c io.ReadWriter, msg []byte) {
	t.Helper()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo %q, %v", got, err)
	}
}

// bulkEcho writes size bytes while reading their echo, and compares them.
func bulkEcho(t *testing.T, c io.ReadWriter, size int64) {
	t.Helper()
	want := make([]byte, size)
	newPattern(3).Read(want)
	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, bytes.NewReader(want))
		errc <- err
	}()
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("echo differs from what was sent")
	}
}

// TestKeepaliveClosesSilentConnection: a peer that stops answering (here: never acks our
// PING) is cut off after the keepalive interval and timeout.
func TestKeepaliveClosesSilentConnection(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := newConn(a, false)
	c.kaInterval, c.kaTimeout = 20*time.Millisecond, 50*time.Millisecond
	pings := make(chan struct{}, 10)
	go func() {
		// The silent peer: sends its SETTINGS, then reads and answers nothing.
		fr := http2.NewFramer(b, b)
		go fr.WriteSettings()
		preface := make([]byte, len(http2.ClientPreface))
		io.ReadFull(b, preface)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
				pings <- struct{}{}
			}
		}
	}()
	if err := c.startClient(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.readDone:
	case <-time.After(20 * time.Second):
		t.Fatal("connection to a silent peer still open")
	}
	if !errors.Is(c.closeErr(), errKeepaliveTimeout) {
		t.Errorf("closed with %v, want the keepalive timeout", c.closeErr())
	}
	if len(pings) == 0 {
		t.Error("no PING sent")
	}
}

// FuzzServerFrames sends a valid preface and SETTINGS and then arbitrary bytes to a server
// connection (no TLS) whose handler serves an echo in process: whatever the frames, the
// server must neither panic nor hang once the client goes away.
func FuzzServerFrames(f *testing.F) {
	for _, seed := range serverFrameSeeds() {
		f.Add(seed)
	}
	s, err := NewServer(ServerOptions{
		TLS: &tls.Config{ClientAuth: tls.RequireAnyClientCert, NextProtos: []string{"h2"}},
		Handler: func(ctx context.Context, req *Request) (net.Conn, error) {
			if req.Target.Port() == 401 {
				return nil, Reject(401, nil)
			}
			return Local(func(c net.Conn) { io.Copy(c, c) }), nil
		},
	})
	if err != nil {
		f.Fatal(err)
	}
	peer, _ := identity.Parse("spiffe://cluster.local/ns/a/sa/b")
	f.Fuzz(func(t *testing.T, data []byte) {
		cli, srv := net.Pipe()
		hc := newConn(srv, true)
		hc.kaInterval = 0
		served := make(chan struct{})
		go func() {
			defer close(served)
			s.serveH2(srv, hc, &connInfo{peer: peer}, time.Now().Add(10*time.Second))
		}()
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			io.Copy(io.Discard, cli)
		}()
		var buf bytes.Buffer
		buf.WriteString(http2.ClientPreface)
		http2.NewFramer(&buf, nil).WriteSettings()
		buf.Write(data)
		cli.SetWriteDeadline(time.Now().Add(10 * time.Second))
		cli.Write(buf.Bytes())
		// Give the streams a moment to run, then go away.
		time.Sleep(time.Millisecond)
		cli.Close()
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Fatal("server connection still running 10 s after the client went away")
		}
		<-drained
		s.mu.Lock()
		delete(s.conns, srv)
		s.mu.Unlock()
	})
}

// serverFrameSeeds are frame sequences that open streams and exercise every frame type.
func serverFrameSeeds() [][]byte {
	var seeds [][]byte
	build := func(write func(fr *http2.Framer, enc func(fields ...string) []byte)) {
		var buf, hb bytes.Buffer
		fr := http2.NewFramer(&buf, nil)
		henc := hpack.NewEncoder(&hb)
		enc := func(fields ...string) []byte {
			hb.Reset()
			for i := 0; i+1 < len(fields); i += 2 {
				henc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
			}
			return append([]byte(nil), hb.Bytes()...)
		}
		write(fr, enc)
		seeds = append(seeds, buf.Bytes())
	}
	connect := func(enc func(...string) []byte, authority string) []byte {
		return enc(":method", "CONNECT", ":authority", authority, "forwarded", `for="10.0.0.1:1"`)
	}
	build(func(fr *http2.Framer, enc func(...string) []byte) {
		fr.WriteSettingsAck()
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connect(enc, "10.0.0.1:80"), EndHeaders: true})
		fr.WriteData(1, false, []byte("hello"))
		fr.WriteWindowUpdate(0, 1000)
		fr.WriteWindowUpdate(1, 1000)
		fr.WritePing(false, [8]byte{1})
		fr.WriteData(1, true, []byte("bye"))
	})
	build(func(fr *http2.Framer, enc func(...string) []byte) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connect(enc, "10.0.0.1:401"), EndHeaders: true, EndStream: true})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: connect(enc, "[fd00::1]:80"), EndHeaders: true})
		fr.WriteRSTStream(3, http2.ErrCodeCancel)
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: enc(":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a:1"), EndHeaders: true})
		fr.WritePriority(5, http2.PriorityParam{StreamDep: 1, Weight: 3})
		fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	})
	build(func(fr *http2.Framer, enc func(...string) []byte) {
		block := connect(enc, "10.0.0.2:8080")
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:3], EndHeaders: false})
		fr.WriteContinuation(1, true, block[3:])
		fr.WriteDataPadded(1, false, []byte("padded"), make([]byte, 7))
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 14})
		fr.WriteData(1, false, bytes.Repeat([]byte("x"), 100))
		fr.WriteRawFrame(0x42, 0, 1, []byte("unknown"))
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc("x-trailer", "1"), EndHeaders: true, EndStream: true})
	})
	build(func(fr *http2.Framer, enc func(...string) []byte) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: connect(enc, "10.0.0.1:80"), EndHeaders: true})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connect(enc, "10.0.0.1:80"), EndHeaders: true}) // id went down
	})
	return seeds
}

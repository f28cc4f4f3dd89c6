package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/mtls"
)

// Request is a parsed, validated CONNECT, as a Handler sees it.
type Request struct {
	// Target is the :authority, the address the client wants the stream connected to.
	Target netip.AddrPort
	// Header holds the request's header fields (forwarded, baggage, traceparent, …). Parse
	// forwarded with ParseForwarded.
	Header http.Header
	// Peer is the client's identity, verified during the TLS handshake.
	Peer identity.ID
	// LocalAddr and RemoteAddr are the addresses of the TCP connection the stream came on.
	LocalAddr, RemoteAddr netip.AddrPort
}

// Handler decides what to do with a CONNECT: return an upstream connection to accept it
// (the Server answers 200 and pipes bytes, then closes upstream), or an error to refuse it.
// A *StatusError (see Reject) chooses the status: 401 policy denied, 503 upstream
// unreachable, 400 bad request; any other error answers 503. ctx ends when the stream
// does. A Handler must be safe for concurrent use.
type Handler func(ctx context.Context, req *Request) (upstream net.Conn, err error)

// Stats is the outcome of one stream, for metrics.
type Stats struct {
	Status       int           // the status answered
	ToUpstream   int64         // bytes copied from the client to the upstream
	FromUpstream int64         // bytes copied from the upstream to the client
	Duration     time.Duration // from the request to the end of the stream
	// Err is why the stream was refused or ended abnormally; nil after a clean end.
	Err error
}

// ServerOptions configures a Server.
type ServerOptions struct {
	// TLS is the server configuration, from pkg/mtls.ServerConfig: it must require and
	// verify a client certificate and offer ALPN "h2". Required.
	TLS *tls.Config
	// Handler decides each CONNECT. Required.
	Handler Handler
	// OnDone, if set, is called once per stream after it ended, whatever its status (also
	// for streams refused before reaching Handler, whose Request then lacks a Target), except
	// streams refused with 503 because the server is closing.
	OnDone func(req *Request, stats Stats)
	// HandshakeTimeout bounds the TLS handshake. If zero, 10 s.
	HandshakeTimeout time.Duration
	// Logger receives debug logs of failed handshakes and aborted streams. If nil,
	// slog.Default().
	Logger *slog.Logger
}

// Server serves HBONE on listeners. Create it with NewServer, run it with Serve, and stop it
// with Shutdown (graceful) or Close.
type Server struct {
	tls              *tls.Config
	handler          Handler
	onDone           func(*Request, Stats)
	handshakeTimeout time.Duration
	log              *slog.Logger

	ctx    context.Context // parent of every connection; cancelled by Close
	cancel context.CancelFunc

	mu        sync.Mutex
	closed    bool // no new listeners, connections or streams
	draining  bool // Shutdown called
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]*conn // the HTTP/2 conn once set up, nil before
	wg        sync.WaitGroup     // Serve loops, connections and streams
}

type connInfoKey struct{}

type connInfo struct {
	peer          identity.ID
	local, remote netip.AddrPort
}

// NewServer validates opts and returns a Server.
func NewServer(opts ServerOptions) (*Server, error) {
	switch {
	case opts.TLS == nil:
		return nil, errors.New("hbone server: TLS config is required")
	case opts.Handler == nil:
		return nil, errors.New("hbone server: handler is required")
	case opts.TLS.ClientAuth != tls.RequireAnyClientCert && opts.TLS.ClientAuth != tls.RequireAndVerifyClientCert:
		return nil, errors.New("hbone server: TLS config must require a client certificate")
	case !containsH2(opts.TLS.NextProtos):
		return nil, errors.New(`hbone server: TLS config must offer ALPN "h2"`)
	}
	s := &Server{
		tls:              opts.TLS,
		handler:          opts.Handler,
		onDone:           opts.OnDone,
		handshakeTimeout: cmpOr(opts.HandshakeTimeout, 10*time.Second),
		log:              opts.Logger,
		listeners:        map[net.Listener]struct{}{},
		conns:            map[net.Conn]*conn{},
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

func containsH2(protos []string) bool {
	for _, p := range protos {
		if p == "h2" {
			return true
		}
	}
	return false
}

// Serve accepts connections on ln until the server is closed or shut down, or ctx ends
// (which closes the server), and then returns nil; it returns an accept error otherwise.
// It closes ln. A Server may serve several listeners at once.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.closed || s.draining {
		s.mu.Unlock()
		ln.Close()
		return ErrClosed
	}
	s.listeners[ln] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.stopping() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTooManyFiles) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Debug("hbone accept failed, retrying", "err", err, "backoff", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-s.ctx.Done():
					return nil
				}
			}
			return fmt.Errorf("accepting hbone connections: %w", err)
		}
		backoff = 0
		if !s.track(c) {
			c.Close()
			return nil
		}
		go s.serveConn(c)
	}
}

func (s *Server) stopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed || s.draining
}

// track registers a connection and its goroutine, unless the server is stopping.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.draining {
		return false
	}
	s.conns[c] = nil
	s.wg.Add(1)
	return true
}

func (s *Server) serveConn(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	deadline := time.Now().Add(s.handshakeTimeout)
	_ = c.SetDeadline(deadline)
	bc := newBatchedTLS(c, func(c net.Conn) *tls.Conn { return tls.Server(c, s.tls) })
	tc := bc.Conn
	if err := tc.HandshakeContext(s.ctx); err != nil {
		s.log.Debug("hbone tls handshake failed", "src", c.RemoteAddr(), "err", err)
		return
	}
	_ = c.SetDeadline(time.Time{})
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != "h2" {
		s.log.Debug("hbone client did not negotiate h2", "src", c.RemoteAddr(), "alpn", cs.NegotiatedProtocol)
		return
	}
	peer, err := mtls.PeerIdentity(cs)
	if err != nil {
		s.log.Debug("hbone client has no workload identity", "src", c.RemoteAddr(), "err", err)
		return
	}
	info := &connInfo{peer: peer, local: addrPort(c.LocalAddr()), remote: addrPort(c.RemoteAddr())}
	s.serveH2(c, newConn(bc, true), info, deadline)
}

// serveH2 serves the HTTP/2 connection hc over c, whose client preface must arrive before
// deadline, until it ends and its streams' goroutines returned.
func (s *Server) serveH2(c net.Conn, hc *conn, info *connInfo, deadline time.Time) {
	ctx, cancel := context.WithCancel(context.WithValue(s.ctx, connInfoKey{}, info))
	defer cancel()
	var streams sync.WaitGroup // the conn's stream goroutines
	hc.onStream = func(st *stream, req *streamRequest) {
		st.ctx, st.cancel = context.WithCancel(ctx)
		streams.Add(1)
		go func() {
			defer streams.Done()
			s.serveStream(st, req, info)
		}()
	}
	if err := hc.startServer(); err != nil {
		return
	}
	s.mu.Lock()
	if s.closed || s.draining {
		s.mu.Unlock()
		return
	}
	s.conns[c] = hc
	s.mu.Unlock()
	if err := hc.serve(deadline); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		s.log.Debug("hbone connection ended", "src", c.RemoteAddr(), "err", err)
	}
	cancel()
	streams.Wait()
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// Shutdown stops accepting, asks every client to stop opening streams (HTTP/2 GOAWAY), and
// waits for the open streams to end. If ctx ends first, it closes the server and returns
// ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	first := !s.draining && !s.closed
	s.draining = true
	for ln := range s.listeners {
		ln.Close()
	}
	var conns []*conn
	if first {
		for _, hc := range s.conns {
			if hc != nil {
				conns = append(conns, hc)
			}
		}
	}
	s.mu.Unlock()
	for _, hc := range conns {
		hc.shutdown()
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.Close()
		return nil
	case <-ctx.Done():
		s.Close()
		<-done
		return ctx.Err()
	}
}

// Close closes the listeners and every connection, ending their streams, and waits for
// the server's goroutines. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// HBONE's HTTP/2 parameters, ztunnel's.
const (
	// Port is the HBONE port.
	Port = 15008
	// StreamWindow is the flow-control window of each stream, both directions.
	StreamWindow = 4 << 20
	// ConnWindow is the flow-control window of each connection, both directions.
	ConnWindow = 16 << 20
	// MaxFrameSize is the largest HTTP/2 frame either side accepts.
	MaxFrameSize = 1 << 20
	// MaxHeaderListSize bounds the header block of a request or response.
	MaxHeaderListSize = 16 << 10
	// KeepaliveInterval is how long a connection may be silent before a PING is sent, and
	// KeepaliveTimeout how long the PING's ack may take before the connection is closed.
	KeepaliveInterval = 10 * time.Second
	KeepaliveTimeout  = 20 * time.Second

	// DefaultMaxStreamsPerConn is the default limit of concurrent streams a Dialer opens on
	// one pooled connection before it opens another.
	DefaultMaxStreamsPerConn = 100
	// DefaultIdleTimeout is the default time a pooled connection with no stream stays open.
	DefaultIdleTimeout = 5 * time.Minute
	// DefaultConnectTimeout is the default limit on setting up a pooled connection.
	DefaultConnectTimeout = 10 * time.Second
)

// ErrClosed: the Dialer or Server was closed.
var ErrClosed = errors.New("hbone: closed")

// StatusError is a CONNECT answered with a status other than 200. A Dialer returns it
// (wrapped) when the server refuses a stream; a Handler returns one to choose the status
// the Server answers (400, 401, 503, …), with Err saying why for the server's logs.
type StatusError struct {
	Code int   // HTTP status
	Err  error // the cause, on the server side; nil on the client side
}

func (e *StatusError) Error() string {
	s := fmt.Sprintf("hbone CONNECT answered %d %s", e.Code, http.StatusText(e.Code))
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *StatusError) Unwrap() error { return e.Err }

// Reject returns the error a Handler returns to refuse a stream with status code because
// of cause.
func Reject(code int, cause error) error { return &StatusError{Code: code, Err: cause} }

// PoolKey says which streams may share a pooled connection: those of one source identity
// and source IP to one destination IP expecting the same destination identities (ztunnel's
// WorkloadKey). It is comparable; build Destinations with [IdentitySet].
type PoolKey struct {
	Source        identity.ID
	Destinations  string
	SourceIP      netip.Addr
	DestinationIP netip.Addr
}

// IdentitySet returns the canonical form of a set of identities for PoolKey.Destinations:
// sorted, without duplicates, space-separated.
func IdentitySet(ids ...identity.ID) string {
	s := make([]string, 0, len(ids))
	for _, id := range ids {
		s = append(s, id.String())
	}
	sort.Strings(s)
	return strings.Join(slices.Compact(s), " ")
}

// DialRequest is one stream to open.
type DialRequest struct {
	// Key selects the pooled connection. Requests with equal Key and Address share
	// connections, so they must carry TLS configurations that present and expect the same
	// identities.
	Key PoolKey
	// Address is the HBONE endpoint to connect to: the destination's (or its waypoint's)
	// IP and port 15008.
	Address netip.AddrPort
	// Target is the :authority, the address the server connects the stream to.
	Target netip.AddrPort
	// TLS is the client configuration for a new connection (pkg/mtls.ClientConfig); it
	// must offer ALPN "h2". It is not used when a pooled connection is reused.
	TLS *tls.Config
	// Source is the original client; if valid it is sent as `forwarded: for="ip:port"`.
	Source netip.AddrPort
	// Baggage and Traceparent, if not empty, are sent as the baggage and traceparent headers.
	Baggage, Traceparent string
	// Header holds extra request headers. Connection-specific names are refused.
	Header http.Header
}

// DialerOptions configures a Dialer. The zero value is usable.
type DialerOptions struct {
	// DialContext opens the TCP connection under a new pooled connection. It receives the
	// pool key, so it can bind key.SourceIP and set socket options (SO_MARK,
	// IP_TRANSPARENT) through a net.Dialer's LocalAddr and Control. If nil, a plain
	// net.Dialer is used.
	DialContext func(ctx context.Context, key PoolKey, address netip.AddrPort) (net.Conn, error)
	// MaxStreamsPerConn limits concurrent streams per connection (the server's own limit
	// also applies). If zero, DefaultMaxStreamsPerConn.
	MaxStreamsPerConn int
	// IdleTimeout is how long a connection without streams stays pooled. If zero,
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// ConnectTimeout bounds TCP connect, TLS handshake and HTTP/2 setup of a new
	// connection, independent of any one caller's context (concurrent callers share the
	// connection). If zero, DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Logger receives debug logs of connection setup and teardown. If nil, slog.Default().
	Logger *slog.Logger
}

// Dialer opens HBONE streams over pooled HTTP/2 connections. It is safe for concurrent use.
// Create it with NewDialer and end it with Close.
type Dialer struct {
	dial           func(ctx context.Context, key PoolKey, address netip.AddrPort) (net.Conn, error)
	maxStreams     int
	idleTimeout    time.Duration
	connectTimeout time.Duration
	log            *slog.Logger

	ctx    context.Context // cancelled by Close; parent of every connection setup
	cancel context.CancelFunc
	wg     sync.WaitGroup // connection setups in flight

	mu     sync.Mutex
	closed bool
	pools  map[poolID]*keyPool
}

// NewDialer returns a Dialer.
func NewDialer(opts DialerOptions) (*Dialer, error) {
	if opts.MaxStreamsPerConn < 0 || opts.IdleTimeout < 0 || opts.ConnectTimeout < 0 {
		return nil, errors.New("hbone dialer: negative limit")
	}
	d := &Dialer{
		dial:           opts.DialContext,
		maxStreams:     cmpOr(opts.MaxStreamsPerConn, DefaultMaxStreamsPerConn),
		idleTimeout:    cmpOr(opts.IdleTimeout, DefaultIdleTimeout),
		connectTimeout: cmpOr(opts.ConnectTimeout, DefaultConnectTimeout),
		log:            opts.Logger,
		pools:          map[poolID]*keyPool{},
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.dial == nil {
		d.dial = func(ctx context.Context, _ PoolKey, address netip.AddrPort) (net.Conn, error) {
			return new(net.Dialer).DialContext(ctx, "tcp", address.String())
		}
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d, nil
}

// Dial opens a stream to req.Target through the HBONE endpoint req.Address, reusing a
// pooled connection of req.Key when one has room. ctx bounds the dial, not the stream. A
// refusal by the server is a *StatusError.
func (d *Dialer) Dial(ctx context.Context, req DialRequest) (*Stream, error) {
	s, err := d.dial1(ctx, &req)
	if err != nil {
		return nil, fmt.Errorf("dialing %s via hbone %s: %w", req.Target, req.Address, err)
	}
	return s, nil
}

// maxRefusedRetries bounds the new attempts of a Dial whose stream the server refused
// unprocessed (GOAWAY racing the request, REFUSED_STREAM).
const maxRefusedRetries = 2

func (d *Dialer) dial1(ctx context.Context, req *DialRequest) (*Stream, error) {
	switch {
	case !req.Target.IsValid() || req.Target.Port() == 0 || req.Target.Addr().Zone() != "":
		return nil, fmt.Errorf("target %q: %w", req.Target, ErrBadAuthority)
	case !req.Address.IsValid():
		return nil, errors.New("no hbone address to dial")
	case req.TLS == nil:
		return nil, errors.New("no tls config")
	case !slices.Contains(req.TLS.NextProtos, "h2"):
		return nil, errors.New(`tls config does not offer ALPN "h2"`)
	}
	header, err := buildHeader(req)
	if err != nil {
		return nil, err
	}
	fields := requestFields(req.Target.String(), header)
	for attempt := 0; ; attempt++ {
		pc, err := d.acquire(ctx, req)
		if err != nil {
			return nil, err
		}
		s, err := d.open(ctx, pc, req, fields)
		if errors.Is(err, errRefused) && attempt < maxRefusedRetries && ctx.Err() == nil {
			continue
		}
		return s, err
	}
}

// requestFields are the HEADERS fields of a CONNECT to authority.
func requestFields(authority string, header http.Header) []hpack.HeaderField {
	fields := make([]hpack.HeaderField, 0, 2+len(header))
	fields = append(fields, hpack.HeaderField{Name: ":method", Value: http.MethodConnect}, hpack.HeaderField{Name: ":authority", Value: authority})
	for k, vs := range header {
		name := strings.ToLower(k)
		for _, v := range vs {
			fields = append(fields, hpack.HeaderField{Name: name, Value: v})
		}
	}
	return fields
}

// open sends the CONNECT on pc, whose stream slot the caller holds, and waits for the
// response; ctx bounds only this exchange.
func (d *Dialer) open(ctx context.Context, pc *pooledConn, req *DialRequest, fields []hpack.HeaderField) (*Stream, error) {
	release := func() { d.release(pc) }
	st, err := pc.cc.openStream(fields, false)
	if err != nil {
		release()
		return nil, err
	}
	resp, err := st.awaitResponse(ctx.Done())
	if resp == nil && err == nil {
		err = context.Cause(ctx)
	}
	if err != nil {
		st.close(http2.ErrCodeCancel)
		release()
		return nil, err
	}
	if resp.status != http.StatusOK {
		st.close(http2.ErrCodeCancel)
		release()
		return nil, &StatusError{Code: resp.status}
	}
	return &Stream{
		deadlines: st.deadlines(),
		st:        st,
		header:    resp.header,
		local:     pc.local,
		remote:    net.TCPAddrFromAddrPort(req.Target),
		release:   release,
	}, nil
}

// Close closes every pooled connection (their streams fail) and waits for connection
// setups in flight to end. Dial then fails with ErrClosed. Close is idempotent.
func (d *Dialer) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	var conns []*pooledConn
	for id, kp := range d.pools {
		for _, pc := range kp.conns {
			pc.stopIdle()
			conns = append(conns, pc)
		}
		delete(d.pools, id)
	}
	d.mu.Unlock()
	d.cancel()
	for _, pc := range conns {
		pc.cc.Close()
	}
	d.wg.Wait()
	for _, pc := range conns {
		<-pc.cc.readDone
	}
	return nil
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

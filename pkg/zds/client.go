//go:build linux

package zds

import (
	"context"
	"errors"
	"fmt"
	"github.com/ambient-lite/ambient-lite/pkg/reconnect"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"istio.io/istio/pkg/zdsapi"
)

// Defaults for ClientOptions.
const (
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 15 * time.Second
)

// Handler applies the node agent's requests. The Client calls it from Run's goroutine,
// one call at a time, and acks each request with the returned error's text (nil → ACK).
//
// Call order on each connection: Add and Keep for every replayed workload, then
// SnapshotSent, then Add and Del as pods come and go. Add may name a uid the handler
// already has (a replay, or a pod whose netns changed); Del may name one it does not.
type Handler interface {
	// Add starts serving the workload uid in netns (checked to be a network namespace).
	// info may be nil. On success the handler owns netns and must close it; on error the
	// Client closes it.
	Add(uid string, info *zdsapi.WorkloadInfo, netns *os.File) error
	// Keep says the workload uid still exists though the node agent has no netns to send;
	// it comes only before SnapshotSent. Keep what you have for uid, if anything.
	Keep(uid string) error
	// Del stops serving the workload uid.
	Del(uid string) error
	// SnapshotSent ends the replay: present holds, sorted, every uid added or kept since
	// this connection was made (and not deleted since). Drop every other workload.
	SnapshotSent(present []string) error
}

// ClientOptions configures a Client.
type ClientOptions struct {
	// Path is the node agent's socket. If empty, DefaultPath.
	Path string
	// Handler applies requests. Required.
	Handler Handler
	// Log receives connection events. If nil, slog.Default().
	Log *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between connection attempts, which doubles
	// (with jitter) after each failure and resets once a connection delivers its snapshot.
	// Zero means DefaultMinBackoff and DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
}

// Client is ztunnel's side of ZDS: it keeps one connection to the node agent, hands its
// requests to the Handler and acks them.
type Client struct {
	opts ClientOptions
	log  *slog.Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	mu      sync.Mutex
	conn    *net.UnixConn // current connection, or nil
	ready   bool          // the current connection delivered its snapshot
	changed chan struct{} // closed and replaced when conn or ready change
}

// NewClient validates opts and returns a Client; call Run to connect.
func NewClient(opts ClientOptions) (*Client, error) {
	if opts.Handler == nil {
		return nil, errors.New("zds client: Handler is required")
	}
	if opts.Path == "" {
		opts.Path = DefaultPath
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = DefaultMinBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	opts.MaxBackoff = max(opts.MaxBackoff, opts.MinBackoff)
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{opts: opts, log: log.With("component", "zds-client"), ctx: ctx, cancel: cancel, changed: make(chan struct{})}, nil
}

// Connected reports whether the Client has a connection (it may still be replaying).
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn != nil
}

// Ready reports whether the current connection has delivered its snapshot: the Handler
// has been called with SnapshotSent (whatever it returned) and so has been told exactly
// the node agent's workloads. ztunnel is not ready before that; Ready turns false when
// the connection ends.
func (c *Client) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready
}

// WaitReady blocks until Ready, ctx is done or the Client is closed.
func (c *Client) WaitReady(ctx context.Context) error {
	for {
		c.mu.Lock()
		ready, changed := c.ready, c.changed
		c.mu.Unlock()
		if ready {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the zds snapshot: %w", ctx.Err())
		case <-c.ctx.Done():
			return errors.New("zds client closed")
		}
	}
}

// Close stops Run and closes the connection. It is idempotent.
func (c *Client) Close() error {
	c.cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close()
	}
	return nil
}

// Run connects to the node agent, reconnecting with backoff, and serves its requests
// until ctx is done or Close is called; then it returns nil.
func (c *Client) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.ctx, cancel)
	defer stop()
	reconnect.Loop(ctx, reconnect.Backoff{Min: c.opts.MinBackoff, Max: c.opts.MaxBackoff}, c.session,
		func(err error, wait time.Duration) {
			c.log.Info("zds connection ended; reconnecting", "err", err, "in", wait)
		})
	return nil
}

// session runs one connection; delivered reports whether it got a snapshot.
func (c *Client) session(ctx context.Context) (delivered bool, err error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", c.opts.Path)
	if err != nil {
		return false, fmt.Errorf("connecting to %s: %w", c.opts.Path, err)
	}
	conn := nc.(*net.UnixConn)
	c.mu.Lock()
	c.conn = conn
	c.notifyLocked()
	c.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer func() {
		stop()
		conn.Close()
		c.mu.Lock()
		c.conn, c.ready = nil, false
		c.notifyLocked()
		c.mu.Unlock()
	}()
	if err := writeMsg(conn, &zdsapi.ZdsHello{Version: zdsapi.Version_V1}, -1, time.Now().Add(DefaultAckTimeout)); err != nil {
		return false, fmt.Errorf("sending hello: %w", err)
	}
	c.log.Info("connected to the node agent", "path", c.opts.Path)
	s := session{h: c.opts.Handler, present: map[string]struct{}{}}
	buf, oob := make([]byte, MaxMessageSize), oobBuffer()
	for {
		b, fds, err := readMsg(conn, buf, oob)
		var herr error
		switch {
		case errors.Is(err, ErrTruncated):
			herr = err // a request we cannot read is still a request: NACK it
		case err != nil:
			return delivered, fmt.Errorf("reading request: %w", err)
		default:
			var kind requestKind
			kind, herr = s.handle(b, fds)
			if kind == kindSnapshot && !delivered {
				delivered = true
				c.mu.Lock()
				c.ready = true
				c.notifyLocked()
				c.mu.Unlock()
				c.log.Info("zds snapshot received", "workloads", len(s.present))
			}
		}
		ack := &zdsapi.Ack{}
		if herr != nil {
			ack.Error = herr.Error()
			if len(ack.Error) > MaxMessageSize-16 {
				ack.Error = ack.Error[:MaxMessageSize-16]
			}
		}
		resp := &zdsapi.WorkloadResponse{Payload: &zdsapi.WorkloadResponse_Ack{Ack: ack}}
		if err := writeMsg(conn, resp, -1, time.Now().Add(DefaultAckTimeout)); err != nil {
			return delivered, fmt.Errorf("sending ack: %w", err)
		}
	}
}

func (c *Client) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// session is one connection's protocol state: which uids were replayed.
type session struct {
	h        Handler
	present  map[string]struct{}
	snapshot bool // SnapshotSent seen
}

// handle decodes and applies one request. It returns the request's kind (0 if it did not
// decode) and the error to NACK with.
func (s *session) handle(b []byte, fds []int) (requestKind, error) {
	req, err := decodeRequest(b, fds)
	if err != nil {
		return 0, err
	}
	switch req.kind {
	case kindAdd:
		s.present[req.uid] = struct{}{}
		if err := s.h.Add(req.uid, req.info, req.netns); err != nil {
			req.netns.Close()
			return req.kind, err
		}
	case kindKeep:
		if s.snapshot {
			return req.kind, fmt.Errorf("zds: keep %q after the snapshot", req.uid)
		}
		s.present[req.uid] = struct{}{}
		return req.kind, s.h.Keep(req.uid)
	case kindDel:
		delete(s.present, req.uid)
		return req.kind, s.h.Del(req.uid)
	case kindSnapshot:
		s.snapshot = true
		return req.kind, s.h.SnapshotSent(slices.Sorted(maps.Keys(s.present)))
	}
	return req.kind, nil
}

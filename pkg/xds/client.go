package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/ambient-lite/ambient-lite/pkg/reconnect"
)

// Defaults for ClientOptions.
const (
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
)

// Handler applies one response. upserts are new or changed resources, removals are names
// that no longer exist (or, for an explicit subscription, never did). An error rejects
// the whole response: the Client NACKs it with the error as detail and keeps the
// versions it had. Handlers are called from Run's goroutine, one at a time.
type Handler func(typeURL string, upserts []*Resource, removals []string) error

// ClientOptions configures a Client.
type ClientOptions struct {
	// Conn is the connection to the server (credentials, bearer token and TLS are its
	// business). Required.
	Conn grpc.ClientConnInterface
	// Node is sent in the first request of every stream. If nil, no node is sent.
	Node *Node
	// Handler applies responses. Required.
	Handler Handler
	// Logger receives stream errors. If nil, slog.Default() is used.
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between reconnects, which doubles after
	// each failure and resets after a stream that delivered a response. Zero means
	// DefaultMinBackoff and DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
}

// The delta ADS method, called without generated stubs (see wire.go).
var deltaADS = grpc.StreamDesc{StreamName: "DeltaAggregatedResources", ServerStreams: true, ClientStreams: true}

const deltaADSMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

// Client is a delta ADS client: it keeps one stream open (reconnecting with backoff),
// subscribes to type URLs, and hands responses to the Handler.
type Client struct {
	opts   ClientOptions
	log    *slog.Logger
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	sendMu sync.Mutex // serialises Send on the current stream; taken before mu

	mu     sync.Mutex
	types  map[string]*clientType
	stream grpc.ClientStream
}

type clientType struct {
	wildcard bool
	names    map[string]struct{}
	have     map[string]string
}

// NewClient validates opts and returns a Client; call Run to connect.
func NewClient(opts ClientOptions) (*Client, error) {
	if opts.Conn == nil || opts.Handler == nil {
		return nil, errors.New("xds client: Conn and Handler are required")
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = DefaultMinBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	opts.MaxBackoff = max(opts.MaxBackoff, opts.MinBackoff)
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{opts: opts, log: log, ctx: ctx, cancel: cancel, types: map[string]*clientType{}}, nil
}

// Watch subscribes to every resource of typeURL (a wildcard subscription).
func (c *Client) Watch(typeURL string) {
	c.update(typeURL, func(t *clientType, first bool) *deltaRequest {
		if t.wildcard && !first {
			return nil
		}
		t.wildcard = true
		return &deltaRequest{typeURL: typeURL, subscribe: []string{Wildcard}}
	})
}

// Subscribe adds explicit subscriptions to names of typeURL (on demand). With no names,
// it registers typeURL with an empty subscription, to be filled by later calls. It sends
// at once when connected and may block while the server is not reading.
func (c *Client) Subscribe(typeURL string, names ...string) {
	c.update(typeURL, func(t *clientType, first bool) *deltaRequest {
		var add []string
		for _, n := range names {
			if _, ok := t.names[n]; !ok && n != Wildcard {
				t.names[n] = struct{}{}
				add = append(add, n)
			}
		}
		if first && len(add) == 0 {
			return initialRequest(typeURL, t)
		}
		if len(add) == 0 {
			return nil
		}
		return &deltaRequest{typeURL: typeURL, subscribe: add}
	})
}

// Unsubscribe removes explicit subscriptions to names of typeURL.
func (c *Client) Unsubscribe(typeURL string, names ...string) {
	c.update(typeURL, func(t *clientType, first bool) *deltaRequest {
		var del []string
		for _, n := range names {
			if _, ok := t.names[n]; ok {
				delete(t.names, n)
				del = append(del, n)
				if !t.wildcard {
					delete(t.have, n)
				}
			}
		}
		if len(del) == 0 {
			return nil
		}
		return &deltaRequest{typeURL: typeURL, unsubscribe: del}
	})
}

// Versions returns the names and versions of typeURL the client has accepted.
func (c *Client) Versions(typeURL string) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.types[typeURL]; ok {
		return maps.Clone(t.have)
	}
	return map[string]string{}
}

// update changes one type's subscription and sends the request change returns, if any.
func (c *Client) update(typeURL string, change func(t *clientType, first bool) *deltaRequest) {
	c.mu.Lock()
	t, ok := c.types[typeURL]
	if !ok {
		t = &clientType{names: map[string]struct{}{}, have: map[string]string{}}
		c.types[typeURL] = t
	}
	req := change(t, !ok)
	st := c.stream
	c.mu.Unlock()
	if req == nil || st == nil {
		return
	}
	if !ok {
		// The stream was opened before this type existed: this is its first request.
		req = c.initial(typeURL)
		req.node = c.opts.Node
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if err := st.SendMsg(req); err != nil {
		c.log.Debug("xds subscribe not sent; it will be on reconnect", "type", typeURL, "err", err)
	}
}

func (c *Client) initial(typeURL string) *deltaRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return initialRequest(typeURL, c.types[typeURL])
}

// initialRequest is a type's first request on a stream: its whole subscription and what
// the client has. An empty explicit subscription is sent as subscribe and unsubscribe of
// "*", which means "nothing yet" (as ztunnel's on-demand mode does).
func initialRequest(typeURL string, t *clientType) *deltaRequest {
	req := &deltaRequest{
		typeURL:   typeURL,
		subscribe: slices.Sorted(maps.Keys(t.names)),
		initial:   maps.Clone(t.have),
	}
	switch {
	case t.wildcard:
		req.subscribe = append([]string{Wildcard}, req.subscribe...)
	case len(req.subscribe) == 0:
		req.subscribe = []string{Wildcard}
		req.unsubscribe = []string{Wildcard}
	}
	return req
}

// Run keeps a stream open until ctx is cancelled or Close is called, then returns nil.
func (c *Client) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.ctx, cancel)
	defer stop()
	reconnect.Loop(ctx, reconnect.Backoff{Min: c.opts.MinBackoff, Max: c.opts.MaxBackoff}, c.runStream,
		func(err error, wait time.Duration) {
			c.log.Warn("xds stream ended; reconnecting", "err", err, "backoff", wait)
		})
	return nil
}

// Close stops Run. It is idempotent.
func (c *Client) Close() error {
	c.cancel()
	return nil
}

// runStream runs one stream; delivered reports whether any response arrived.
func (c *Client) runStream(ctx context.Context) (delivered bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.opts.Conn.NewStream(ctx, &deltaADS, deltaADSMethod, grpc.ForceCodec(codec{}))
	if err != nil {
		return false, fmt.Errorf("opening delta ADS stream: %w", err)
	}
	defer func() {
		c.mu.Lock()
		c.stream = nil
		c.mu.Unlock()
	}()
	c.sendMu.Lock()
	c.mu.Lock()
	c.stream = st
	var reqs []*deltaRequest
	for _, typeURL := range slices.Sorted(maps.Keys(c.types)) {
		reqs = append(reqs, initialRequest(typeURL, c.types[typeURL]))
	}
	c.mu.Unlock()
	// With no types yet, the first Subscribe or Watch sends the first request.
	for _, r := range reqs {
		r.node = c.opts.Node
		if err := st.SendMsg(r); err != nil {
			c.sendMu.Unlock()
			return false, fmt.Errorf("sending initial request for %s: %w", r.typeURL, err)
		}
	}
	c.sendMu.Unlock()
	for {
		resp := &deltaResponse{}
		if err := st.RecvMsg(resp); err != nil {
			return delivered, fmt.Errorf("receiving delta ADS response: %w", err)
		}
		delivered = true
		ack := c.apply(resp)
		c.sendMu.Lock()
		err = st.SendMsg(ack)
		c.sendMu.Unlock()
		if err != nil {
			return delivered, fmt.Errorf("sending ACK for %s: %w", resp.typeURL, err)
		}
	}
}

// apply hands a response to the Handler and returns its ACK or NACK.
func (c *Client) apply(resp *deltaResponse) *deltaRequest {
	typeURL := resp.typeURL
	ack := &deltaRequest{typeURL: typeURL, responseNonce: resp.nonce}
	if err := c.opts.Handler(typeURL, resp.resources, resp.removed); err != nil {
		c.log.Warn("xds response rejected", "type", typeURL, "nonce", resp.nonce, "err", err)
		ack.errorDetail = &rpcStatus{code: int32(codes.InvalidArgument), message: err.Error()}
		return ack
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.types[typeURL]
	if !ok {
		return ack
	}
	for _, r := range resp.resources {
		t.have[r.Name] = r.Version
	}
	for _, name := range resp.removed {
		delete(t.have, name)
	}
	return ack
}

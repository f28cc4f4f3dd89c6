package xdsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// Defaults for ServerOptions.
const (
	DefaultDebounce         = 100 * time.Millisecond
	DefaultMaxDebounceDelay = time.Second
)

// ServerOptions configures a Server.
type ServerOptions struct {
	// Sources produce the resources of each served type URL. Requests for other type URLs
	// are ignored. Required: at least one.
	Sources map[string]Source
	// Authenticate is called once at the start of every stream with the stream's context
	// (carrying its gRPC metadata and peer); an error ends the stream with
	// codes.Unauthenticated, unless it carries a gRPC status of its own (say Unavailable
	// when the authenticator could not be reached), which is kept. Its result is StreamInfo.Principal. If nil, every stream is
	// accepted with a nil Principal.
	Authenticate func(ctx context.Context) (any, error)
	// Logger receives NACKs and stream errors. If nil, slog.Default() is used.
	Logger *slog.Logger
	// Debounce is how long Push waits for quiet before recomputing. Zero means
	// DefaultDebounce; negative disables debouncing.
	Debounce time.Duration
	// MaxDebounceDelay bounds how long a push can be held by a stream of pushes. Zero means
	// DefaultMaxDebounceDelay.
	MaxDebounceDelay time.Duration
}

// Server serves DeltaAggregatedResources; StreamAggregatedResources is Unimplemented.
// Register it with discoveryv3.RegisterAggregatedDiscoveryServiceServer, run Run for pushes
// to be delivered, and Close it before stopping the gRPC server.
type Server struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer

	opts   ServerOptions
	log    *slog.Logger
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // stream handlers and their goroutines
	ids    atomic.Uint64
	kick   chan struct{}

	mu      sync.Mutex
	closed  bool
	streams map[*stream]struct{}
	pending map[string]*changeSet
}

var _ discoveryv3.AggregatedDiscoveryServiceServer = (*Server)(nil)

// changeSet is the names pushed for one type; all means everything.
type changeSet struct {
	all   bool
	names map[string]struct{}
}

func (c *changeSet) add(names []string) {
	if names == nil {
		c.all, c.names = true, nil
		return
	}
	if c.all {
		return
	}
	if c.names == nil {
		c.names = map[string]struct{}{}
	}
	for _, n := range names {
		c.names[n] = struct{}{}
	}
}

// NewServer validates opts and returns a Server.
func NewServer(opts ServerOptions) (*Server, error) {
	if len(opts.Sources) == 0 {
		return nil, errors.New("xds server: no sources")
	}
	for typeURL, src := range opts.Sources {
		if typeURL == "" || src == nil {
			return nil, fmt.Errorf("xds server: source %q: empty type URL or nil source", typeURL)
		}
	}
	opts.Sources = maps.Clone(opts.Sources)
	if opts.Debounce == 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.MaxDebounceDelay <= 0 {
		opts.MaxDebounceDelay = DefaultMaxDebounceDelay
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		opts: opts, log: log, ctx: ctx, cancel: cancel,
		kick:    make(chan struct{}, 1),
		streams: map[*stream]struct{}{},
		pending: map[string]*changeSet{},
	}, nil
}

// Push tells the Server that the named resources of typeURL changed (nil names: anything
// may have changed). After the debounce, every stream subscribed to typeURL is
// recomputed. Push never blocks on a stream.
func (s *Server) Push(typeURL string, names []string) {
	s.mu.Lock()
	cs, ok := s.pending[typeURL]
	if !ok {
		cs = &changeSet{}
		s.pending[typeURL] = cs
	}
	cs.add(names)
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run delivers pushes until ctx is cancelled or the Server is closed.
func (s *Server) Run(ctx context.Context) error {
	var (
		timer *time.Timer
		fire  <-chan time.Time
		first time.Time
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.ctx.Done():
			return nil
		case <-s.kick:
			if s.opts.Debounce < 0 {
				s.flush()
				continue
			}
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			wait := min(s.opts.Debounce, first.Add(s.opts.MaxDebounceDelay).Sub(now))
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			fire = timer.C
		case <-fire:
			first, fire = time.Time{}, nil
			s.flush()
		}
	}
}

// flush hands the pending changes to every stream.
func (s *Server) flush() {
	s.mu.Lock()
	pending := s.pending
	s.pending = map[string]*changeSet{}
	streams := make([]*stream, 0, len(s.streams))
	for st := range s.streams {
		streams = append(streams, st)
	}
	s.mu.Unlock()
	for _, st := range streams {
		st.notify(pending)
	}
}

// Close ends every stream and waits for their goroutines. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

// Streams returns the number of open streams.
func (s *Server) Streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

func (s *Server) add(st *stream) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.streams[st] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) remove(st *stream) {
	s.mu.Lock()
	delete(s.streams, st)
	s.mu.Unlock()
	s.wg.Done()
}

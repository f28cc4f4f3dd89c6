package proxy

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/pkg/secrets"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/metrics"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/socket"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Options are the proxies' inputs.
type Options struct {
	// Node is this ztunnel's node: it serves the workloads bound to it.
	Node string
	// State returns the current snapshot.
	State func() *meshstate.Snapshot
	// Certs issues the certificates of local workload identities.
	Certs *secrets.Manager
	// Roots are the mesh trust anchors.
	Roots       func() []*x509.Certificate
	TrustDomain string
	Authorizer  Authorizer
	Metrics     *metrics.Metrics
	// Upstream shapes connections to local applications and to destinations outside the
	// mesh (source spoofing, marks). Zero value: plain connections.
	Upstream socket.DialOptions
	// ConnectTimeout bounds each upstream TCP connect and HBONE dial. If zero, 10 s.
	ConnectTimeout time.Duration
	Log            *slog.Logger
}

// Proxy runs ztunnel's listeners and tracks their connections for draining: the
// node-level listeners (ServeOutbound, ServeInbound, ServePlaintext) and, in in-pod mode,
// one listener set per pod (NewPod).
type Proxy struct {
	opts  Options
	log   *slog.Logger
	td    spiffeid.TrustDomain
	node  *scope
	mu    sync.Mutex
	pods  map[*Pod]struct{}
	ended bool
}

// New checks opts and returns a Proxy.
func New(opts Options) (*Proxy, error) {
	if opts.State == nil || opts.Certs == nil || opts.Roots == nil || opts.Metrics == nil || opts.Node == "" {
		return nil, errors.New("proxy: Node, State, Certs, Roots and Metrics are required")
	}
	td, err := identity.New(opts.TrustDomain, "ns", "sa")
	if err != nil {
		return nil, fmt.Errorf("proxy: trust domain: %w", err)
	}
	if opts.Authorizer == nil {
		opts.Authorizer = AllowAll{}
	}
	if opts.ConnectTimeout == 0 {
		opts.ConnectTimeout = 10 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	p := &Proxy{opts: opts, log: opts.Log, td: td.TrustDomain(), pods: map[*Pod]struct{}{}}
	if p.node, err = p.newScope(p.opts.Upstream.Dial, nil, p.log); err != nil {
		return nil, err
	}
	return p, nil
}

// scope is one set of listeners with the connections they accepted, the way they reach
// upstreams, and their HBONE client and server: the node's, or one pod's in in-pod mode.
type scope struct {
	p   *Proxy
	log *slog.Logger
	// dial connects to an upstream: a local workload, a destination outside the mesh, or
	// (under the HBONE pool) a peer's port 15008.
	dial func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)
	// self lists the uids the scope's own workload may have in the state store, most
	// specific first; nil at node level, where a connection's source IP names its workload.
	self  []string
	hbone *hboneSide

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	draining  bool
	active    sync.WaitGroup
}

func (p *Proxy) newScope(dial func(context.Context, netip.AddrPort) (net.Conn, error), self []string, log *slog.Logger) (*scope, error) {
	s := &scope{p: p, log: log, dial: dial, self: self, listeners: map[net.Listener]struct{}{}, conns: map[net.Conn]struct{}{}}
	var err error
	if s.hbone, err = newHBONESide(s); err != nil {
		return nil, err
	}
	return s, nil
}

// serve accepts on l until it is closed, handling each connection in its own goroutine.
func (s *scope) serve(l net.Listener, handle func(net.Conn)) error {
	if !s.track(l) {
		_ = l.Close()
		return nil
	}
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.log.Warn("accepting connection", "listener", l.Addr(), "err", err)
			time.Sleep(50 * time.Millisecond) // e.g. out of file descriptors: back off, don't spin
			continue
		}
		if !s.add(c) {
			_ = c.Close()
			continue
		}
		go func() {
			defer s.done(c)
			handle(c)
		}()
	}
}

func (s *scope) track(l net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *scope) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.conns[c] = struct{}{}
	s.active.Add(1)
	return true
}

func (s *scope) done(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	_ = c.Close()
	s.active.Done()
}

// stop closes the listeners (HBONE's too: serveInbound tracks it) and refuses new ones.
func (s *scope) stop() {
	s.mu.Lock()
	s.draining = true
	for l := range s.listeners {
		_ = l.Close()
	}
	s.mu.Unlock()
}

// drain stops accepting, lets open connections finish for up to d, then closes the rest
// and the pooled HBONE connections. It returns once every connection handler has ended.
func (s *scope) drain(d time.Duration) {
	s.stop()
	s.hbone.shutdown(d)
	finished := make(chan struct{})
	go func() {
		s.active.Wait()
		close(finished)
	}()
	select {
	case <-finished:
	case <-time.After(d):
		s.mu.Lock()
		for c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		<-finished
	}
	s.hbone.close()
}

// Drain stops accepting, lets open connections finish for up to d, then closes the rest
// and the pooled HBONE connections, for the node-level listeners and every pod's at once.
// It returns once every connection handler has ended. NewPod fails afterwards.
func (p *Proxy) Drain(d time.Duration) {
	p.mu.Lock()
	p.ended = true
	pods := make([]*Pod, 0, len(p.pods))
	for pod := range p.pods {
		pods = append(pods, pod)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, pod := range pods {
		wg.Go(func() { pod.Drain(d) })
	}
	p.node.drain(d)
	wg.Wait()
}

// pick chooses among n endpoints at random.
func pick(n int) int { return rand.IntN(n) }

// dialTimeout is the context for one upstream connect.
func (s *scope) dialTimeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.p.opts.ConnectTimeout)
}

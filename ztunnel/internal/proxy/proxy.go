package proxy

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/secrets"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/metrics"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/socket"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/state"
)

// Options are the proxies' inputs.
type Options struct {
	// Node is this ztunnel's node: it serves the workloads bound to it.
	Node string
	// State returns the current snapshot.
	State func() *state.Snapshot
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

// Proxy runs ztunnel's listeners and tracks their connections for draining.
type Proxy struct {
	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	draining  bool
	active    sync.WaitGroup
	hbone     *hboneSide
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
	p := &Proxy{opts: opts, log: opts.Log, listeners: map[net.Listener]struct{}{}, conns: map[net.Conn]struct{}{}}
	if p.hbone, err = newHBONESide(p, td.TrustDomain()); err != nil {
		return nil, err
	}
	return p, nil
}

// serve accepts on l until it is closed, handling each connection in its own goroutine.
func (p *Proxy) serve(l net.Listener, handle func(net.Conn)) error {
	if !p.track(l) {
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
			p.log.Warn("accepting connection", "listener", l.Addr(), "err", err)
			time.Sleep(50 * time.Millisecond) // e.g. out of file descriptors: back off, don't spin
			continue
		}
		if !p.add(c) {
			_ = c.Close()
			continue
		}
		go func() {
			defer p.done(c)
			handle(c)
		}()
	}
}

func (p *Proxy) track(l net.Listener) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.draining {
		return false
	}
	p.listeners[l] = struct{}{}
	return true
}

func (p *Proxy) add(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.draining {
		return false
	}
	p.conns[c] = struct{}{}
	p.active.Add(1)
	return true
}

func (p *Proxy) done(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
	p.active.Done()
}

// Drain stops accepting, lets open connections finish for up to d, then closes the rest
// and the pooled HBONE connections. It returns once every connection handler has ended.
func (p *Proxy) Drain(d time.Duration) {
	p.mu.Lock()
	p.draining = true
	for l := range p.listeners {
		_ = l.Close()
	}
	p.mu.Unlock()
	p.hbone.shutdown(d)
	finished := make(chan struct{})
	go func() {
		p.active.Wait()
		close(finished)
	}()
	select {
	case <-finished:
	case <-time.After(d):
		p.mu.Lock()
		for c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		<-finished
	}
	p.hbone.close()
}

// pick chooses among n endpoints at random.
func pick(n int) int { return rand.IntN(n) }

// dialTimeout is the context for one upstream connect.
func (p *Proxy) dialTimeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), p.opts.ConnectTimeout)
}

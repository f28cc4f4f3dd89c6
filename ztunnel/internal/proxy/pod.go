package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

// PodOptions describe one pod served in in-pod mode: its listeners live in the pod's
// network namespace, and so must every connection made on its behalf.
type PodOptions struct {
	// UIDs are the uids the pod's workload may have in the state store, most specific
	// first (the node agent's pod uid, then Istio's "<cluster>//Pod/<namespace>/<name>").
	// The first one found on this node is the source of the pod's outbound connections; if
	// none is, the connection's source address names it, as at node level.
	UIDs []string
	// Dial connects from inside the pod's network namespace, with the socket mark that
	// exempts ztunnel's sockets from capture: outbound HBONE and passthrough connections,
	// and inbound ones to the application. Required.
	Dial func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)
	// Name is logged with the pod's events.
	Name string
}

// Pod is the listener set of one pod in in-pod mode. Serve its listeners with
// ServeOutbound, ServeInbound and ServePlaintext; Stop closes them, Drain ends the rest.
type Pod struct {
	p *Proxy
	s *scope
}

// NewPod returns the listener set of one pod. Its HBONE connections are pooled apart from
// other pods' and closed by Drain.
func (p *Proxy) NewPod(o PodOptions) (*Pod, error) {
	if o.Dial == nil {
		return nil, errors.New("proxy: PodOptions.Dial is required")
	}
	s, err := p.newScope(o.Dial, o.UIDs, p.log.With("pod", o.Name))
	if err != nil {
		return nil, err
	}
	pod := &Pod{p: p, s: s}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended {
		s.hbone.close()
		return nil, errors.New("proxy: draining")
	}
	p.pods[pod] = struct{}{}
	return pod, nil
}

// ServeOutbound serves the pod's outbound capture listener (:15001) until it is closed.
func (pod *Pod) ServeOutbound(l net.Listener) error { return pod.s.serveOutbound(l) }

// ServeInbound serves the pod's HBONE listener (:15008) until it is closed.
func (pod *Pod) ServeInbound(l net.Listener) error { return pod.s.serveInbound(l) }

// ServePlaintext serves the pod's inbound plaintext listener (:15006) until it is closed.
func (pod *Pod) ServePlaintext(l net.Listener) error { return pod.s.servePlaintext(l) }

// Stop closes the pod's listeners (the Serve calls return) and refuses new ones; open
// connections go on until Drain.
func (pod *Pod) Stop() { pod.s.stop() }

// Drain stops the pod's listeners, lets its connections finish for up to d, then closes
// the rest and its pooled HBONE connections, and returns once all are gone. It is
// idempotent.
func (pod *Pod) Drain(d time.Duration) {
	pod.s.drain(d)
	pod.p.mu.Lock()
	delete(pod.p.pods, pod)
	pod.p.mu.Unlock()
}

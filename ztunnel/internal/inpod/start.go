package inpod

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/capture"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/proxy"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/socket"
	"golang.org/x/sys/unix"
	"istio.io/istio/pkg/zdsapi"
)

// In-pod listener ports, Istio's.
const (
	OutboundPort  = 15001
	PlaintextPort = 15006
	HBONEPort     = 15008
)

// Starter opens pods' listener sets and serves them with a Proxy. Its Start method is the
// Manager's StartFunc.
type Starter struct {
	// Proxy serves the listeners. Required.
	Proxy *proxy.Proxy
	// ClusterID names the cluster in Istio's workload uids ("<cluster>//Pod/<ns>/<name>"),
	// through which a pod's workload is found when the node agent's uid is not one.
	ClusterID string
	// Register hands the outbound and inbound plaintext listeners to the pod's eBPF
	// redirection. If nil, capture.Register.
	Register func(netns *os.File, outbound, inbound *net.TCPListener) error
	// Log receives pod events. If nil, slog.Default().
	Log *slog.Logger
}

// Start implements StartFunc: it opens :15001 and :15006 (transparent, marked) and :15008
// (marked) in netns, registers the first two with the pod's redirection (netfilter capture
// is assumed when there is none), and serves all three with a dialer that connects from
// inside netns.
func (s Starter) Start(uid string, info *zdsapi.WorkloadInfo, netns *os.File) (Pod, error) {
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	register := s.Register
	if register == nil {
		register = capture.Register
	}
	name := PodName(uid, info)
	var ls []*net.TCPListener
	closeAll := func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}
	captureLC, markLC := reusePort(capture.ListenConfig()), reusePort(socket.ListenConfig(capture.Mark))
	for _, l := range []struct {
		what string
		lc   *net.ListenConfig
		port int
	}{{"outbound", captureLC, OutboundPort}, {"inbound plaintext", captureLC, PlaintextPort}, {"inbound HBONE", markLC, HBONEPort}} {
		ln, err := socket.ListenInNetns(context.Background(), netns, l.lc, "tcp4", fmt.Sprintf("0.0.0.0:%d", l.port))
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("opening the %s listener (:%d) in the pod's network namespace: %w", l.what, l.port, err)
		}
		ls = append(ls, ln)
	}
	out, plain, hb := ls[0], ls[1], ls[2]
	switch err := register(netns, out, plain); {
	case errors.Is(err, capture.ErrNotRedirected):
		log.Info("pod has no eBPF redirection; serving it for netfilter capture (original destination from SO_ORIGINAL_DST)", "pod", name)
	case err != nil:
		closeAll()
		return nil, fmt.Errorf("registering the listeners with the pod's redirection: %w", err)
	}
	d := &net.Dialer{Control: capture.DialControl}
	d.SetMultipathTCP(false)
	uids := []string{uid}
	if info.GetName() != "" && s.ClusterID != "" {
		uids = append(uids, fmt.Sprintf("%s//Pod/%s/%s", s.ClusterID, info.GetNamespace(), info.GetName()))
	}
	pp, err := s.Proxy.NewPod(proxy.PodOptions{
		UIDs: uids, Name: name,
		Dial: func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
			return socket.DialInNetns(ctx, netns, d, dst)
		},
	})
	if err != nil {
		closeAll()
		return nil, err
	}
	p := &pod{p: pp}
	serve := func(what string, f func(net.Listener) error, l net.Listener) {
		p.serving.Go(func() {
			if err := f(l); err != nil {
				log.Warn("pod listener failed", "pod", name, "listener", what, "err", err)
			}
		})
	}
	serve("outbound", pp.ServeOutbound, out)
	serve("inbound plaintext", pp.ServePlaintext, plain)
	serve("inbound HBONE", pp.ServeInbound, hb)
	return p, nil
}

// pod is a running proxy.Pod and the goroutines serving its listeners.
type pod struct {
	p       *proxy.Pod
	serving sync.WaitGroup
}

func (p *pod) Stop() { p.p.Stop() }

func (p *pod) Drain(d time.Duration) {
	p.p.Drain(d)
	p.serving.Wait()
}

// reusePort adds SO_REUSEPORT to lc, so a new ztunnel can open a pod's listeners while the
// one it replaces still drains (Istio's upgrade sequence).
func reusePort(lc *net.ListenConfig) *net.ListenConfig {
	control := lc.Control
	lc.Control = func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("setting SO_REUSEPORT: %w", serr)
		}
		if control != nil {
			return control(network, address, c)
		}
		return nil
	}
	return lc
}

// Package capture is the proxy's side of the in-pod redirection contract: the socket mark
// that exempts the proxy's own traffic from capture, the socket options its in-pod
// listeners need, and [Register], which hands those listeners to the eBPF program the CNI
// attached to a pod's network namespace.
//
// The contract, shared with the CNI's loader (cni/internal/redirect) and its program
// (bpf/redirect.c): an sk_lookup program attached to the pod netns reads a SOCKMAP named
// [SocketMapName] whose slot [SlotOutbound] holds the outbound listener (:15001) and slot
// [SlotInbound] the inbound one (:15006). Both listeners must be opened inside the pod
// netns, be plain TCP (not MPTCP), carry [Mark] and be transparent (see [ListenConfig]).
// Sockets leave the map by themselves when they are closed; while a slot is empty the
// program drops captured traffic (fail closed).
//
// It is not the loader: it never loads, attaches or pins programs, and it knows nothing of
// pods or Kubernetes. It does not do netfilter redirection either: when [Register] returns
// [ErrNotRedirected] the proxy falls back to netfilter capture (Istio's CNI), where the
// original destination comes from SO_ORIGINAL_DST. Anything may import it (ztunnel does);
// it imports no component.
package capture

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Mark is the SO_MARK of every socket of the proxy inside a pod netns, and MarkMask the bits
// of the mark the pod's capture rule looks at. The CNI's policy-routing rule sends all
// TCP whose mark does not match (mark & MarkMask != Mark) to a local route, so that the
// redirection program sees it; marked sockets route normally. Istio uses the same value.
const (
	Mark     = 0x539
	MarkMask = 0xfff
)

// Slots of the socket map.
const (
	// SlotOutbound holds the listener receiving the pod's own outbound TCP (:15001).
	SlotOutbound = 0
	// SlotInbound holds the listener receiving TCP sent to the pod (:15006), all ports but
	// HBONE's (15008).
	SlotInbound = 1
)

// SocketMapName is the name of the redirection program's SOCKMAP (kernel object names are
// at most 15 bytes).
const SocketMapName = "ambient_sockets"

// ErrNotRedirected means no eBPF redirection program is attached to the network namespace:
// the pod is captured some other way (netfilter), or not at all.
var ErrNotRedirected = errors.New("no ambient redirection program attached to the network namespace")

// Register stores outbound and inbound, two listeners opened inside the network namespace
// netns (see [ListenConfig]), in the socket map of the redirection program attached to it,
// replacing any earlier listeners. Either may be nil to leave its slot as it is. It returns
// an error wrapping [ErrNotRedirected] if no such program is attached. The caller keeps
// ownership of netns and the listeners; closing a listener empties its slot.
func Register(netns *os.File, outbound, inbound *net.TCPListener) error {
	m, err := findSocketMap(netns)
	if err != nil {
		return err
	}
	defer m.Close()
	for _, s := range []struct {
		slot uint32
		ln   *net.TCPListener
		name string
	}{{SlotOutbound, outbound, "outbound"}, {SlotInbound, inbound, "inbound"}} {
		if s.ln == nil {
			continue
		}
		if err := storeListener(m, s.slot, s.ln); err != nil {
			return fmt.Errorf("registering the %s listener %s: %w", s.name, s.ln.Addr(), err)
		}
	}
	return nil
}

// findSocketMap opens the socket map of the sk_lookup program attached to netns.
func findSocketMap(netns *os.File) (*ebpf.Map, error) {
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(netns.Fd()), Attach: ebpf.AttachSkLookup})
	if err != nil {
		return nil, fmt.Errorf("querying sk_lookup programs of netns %s: %w", netns.Name(), err)
	}
	if len(res.Programs) == 0 {
		return nil, fmt.Errorf("netns %s: %w", netns.Name(), ErrNotRedirected)
	}
	for _, ap := range res.Programs {
		m, err := socketMapOf(ap.ID)
		if err != nil {
			return nil, fmt.Errorf("netns %s: %w", netns.Name(), err)
		}
		if m != nil {
			return m, nil
		}
	}
	return nil, fmt.Errorf("netns %s: %d sk_lookup program(s) attached but none uses a sockmap named %s: %w",
		netns.Name(), len(res.Programs), SocketMapName, ErrNotRedirected)
}

// socketMapOf returns program id's map named SocketMapName, or nil if it has none.
func socketMapOf(id ebpf.ProgramID) (*ebpf.Map, error) {
	prog, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return nil, fmt.Errorf("opening program %d: %w", id, err)
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		return nil, fmt.Errorf("reading program %d info: %w", id, err)
	}
	ids, ok := info.MapIDs()
	if !ok {
		return nil, fmt.Errorf("program %d: the kernel does not report map ids", id)
	}
	for _, mid := range ids {
		m, err := ebpf.NewMapFromID(mid)
		if err != nil {
			return nil, fmt.Errorf("opening map %d of program %d: %w", mid, id, err)
		}
		mi, err := m.Info()
		if err == nil && mi.Type == ebpf.SockMap && mi.Name == SocketMapName {
			return m, nil
		}
		m.Close()
	}
	return nil, nil
}

func storeListener(m *ebpf.Map, slot uint32, ln *net.TCPListener) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var uerr error
	if err := rc.Control(func(fd uintptr) {
		uerr = m.Update(slot, uint64(fd), ebpf.UpdateAny)
	}); err != nil {
		return err
	}
	if errors.Is(uerr, unix.EOPNOTSUPP) {
		return fmt.Errorf("%w (is it an MPTCP socket? use ListenConfig, which turns MPTCP off)", uerr)
	}
	return uerr
}

// ListenConfig returns the configuration for the proxy's in-pod listeners: plain TCP
// (SOCKMAP rejects MPTCP sockets, Go's default since 1.24), [Mark] and transparent
// ([ListenControl]). The listeners must be created on a thread inside the pod netns.
func ListenConfig() *net.ListenConfig {
	lc := &net.ListenConfig{Control: ListenControl}
	lc.SetMultipathTCP(false)
	return lc
}

// ListenControl is a [net.ListenConfig] Control function: it sets SO_MARK to [Mark], so the
// listener's replies skip the capture rule, and IP_TRANSPARENT (IPV6_TRANSPARENT on AF_INET6
// sockets), so the outbound listener may accept connections to destinations that are not
// local in the main routing table. Both need CAP_NET_ADMIN.
func ListenControl(network, address string, c syscall.RawConn) error {
	return control(c, true)
}

// DialControl is a [net.Dialer] Control function for the proxy's connections from inside
// a pod netns: it sets SO_MARK to [Mark], so they route normally instead of being captured.
// It needs CAP_NET_ADMIN.
func DialControl(network, address string, c syscall.RawConn) error {
	return control(c, false)
}

func control(c syscall.RawConn, transparent bool) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, Mark); err != nil {
			serr = fmt.Errorf("setting SO_MARK %#x: %w", Mark, err)
			return
		}
		if !transparent {
			return
		}
		// The socket's family, not network, decides: Go opens "tcp" wildcard listeners
		// as dual-stack AF_INET6 sockets.
		level, opt, name := unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT"
		if d, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN); err == nil && d == unix.AF_INET6 {
			level, opt, name = unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT"
		}
		if err := unix.SetsockoptInt(int(fd), level, opt, 1); err != nil {
			serr = fmt.Errorf("setting %s: %w", name, err)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

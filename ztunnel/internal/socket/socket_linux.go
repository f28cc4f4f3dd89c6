// Package socket holds the Linux socket operations ztunnel's proxies need: the original
// destination of a redirected connection (SO_ORIGINAL_DST), and dialers that spoof the
// client's source address (IP_TRANSPARENT) or mark their packets (SO_MARK) so redirection
// rules let them through, and the creation of listeners and connections inside another
// network namespace (a pod's, in in-pod mode). It is mechanism only; when to use which is
// the proxy's decision.
package socket

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// OriginalDestination returns where a connection redirected by a netfilter REDIRECT or DNAT
// rule was going. For a connection not redirected it returns the local address.
func OriginalDestination(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	la, tcp := c.LocalAddr().(*net.TCPAddr)
	if !ok || !tcp {
		return netip.AddrPort{}, fmt.Errorf("original destination: %T is not a TCP socket", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	local := la.AddrPort()
	var dst netip.AddrPort
	var sysErr error
	err = raw.Control(func(fd uintptr) {
		if local.Addr().Unmap().Is4() {
			var sa unix.RawSockaddrInet4
			size := uint32(unsafe.Sizeof(sa))
			sysErr = getsockopt(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST, unsafe.Pointer(&sa), &size)
			if sysErr == nil {
				port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
				dst = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
			}
			return
		}
		var sa unix.RawSockaddrInet6
		size := uint32(unsafe.Sizeof(sa))
		sysErr = getsockopt(int(fd), unix.SOL_IPV6, ip6tSOOriginalDst, unsafe.Pointer(&sa), &size)
		if sysErr == nil {
			port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
			dst = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
		}
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if errors.Is(sysErr, unix.ENOENT) || errors.Is(sysErr, unix.ENOPROTOOPT) {
		return netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), nil // not redirected
	}
	if sysErr != nil {
		return netip.AddrPort{}, fmt.Errorf("reading SO_ORIGINAL_DST: %w", sysErr)
	}
	return dst, nil
}

// CapturedDestination returns where a connection accepted on a capture listener bound to
// listenerPort was going. A connection steered to the listener by an eBPF sk_lookup
// program keeps its destination as its local address, which is then returned as is; one
// redirected by netfilter (REDIRECT, as Istio's CNI does) arrives on the listener's own
// port, and its destination comes from SO_ORIGINAL_DST. A direct connection to the
// listener's port also yields its local address, which the caller must refuse as a loop.
func CapturedDestination(c net.Conn, listenerPort uint16) (netip.AddrPort, error) {
	la, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: %T is not a TCP socket", c)
	}
	local := la.AddrPort()
	if local.Port() != listenerPort {
		return netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), nil
	}
	return OriginalDestination(c)
}

func getsockopt(fd, level, opt int, val unsafe.Pointer, size *uint32) error {
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(val), uintptr(unsafe.Pointer(size)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// DialOptions shapes an outgoing connection.
type DialOptions struct {
	// Source, if valid, is bound before connecting. With Transparent it may be an address
	// this host does not own (the original client's), which needs CAP_NET_ADMIN and a route
	// that brings replies back.
	Source      netip.Addr
	Transparent bool
	// Mark, if non-zero, is set as SO_MARK, so redirection rules can skip the socket.
	Mark uint32
}

// Dialer returns a net.Dialer applying o.
func (o DialOptions) Dialer() *net.Dialer {
	d := &net.Dialer{}
	d.SetMultipathTCP(false) // plain TCP: eBPF socket maps reject MPTCP sockets
	if o.Source.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: o.Source.AsSlice()}
	}
	if o.Transparent || o.Mark != 0 {
		d.Control = func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				if o.Transparent {
					level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
					if network == "tcp6" {
						level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
					}
					if serr = unix.SetsockoptInt(int(fd), level, opt, 1); serr != nil {
						serr = fmt.Errorf("setting IP_TRANSPARENT: %w", serr)
						return
					}
				}
				if o.Mark != 0 {
					if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(o.Mark)); serr != nil {
						serr = fmt.Errorf("setting SO_MARK: %w", serr)
					}
				}
			})
			return errors.Join(err, serr)
		}
	}
	return d
}

// Dial connects to dst with o applied.
func (o DialOptions) Dial(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	return o.Dialer().DialContext(ctx, "tcp", dst.String())
}

// ListenConfig returns a listen configuration for ztunnel's listeners: plain TCP (not
// MPTCP), with SO_MARK when mark is non-zero.
func ListenConfig(mark uint32) *net.ListenConfig {
	lc := &net.ListenConfig{}
	lc.SetMultipathTCP(false)
	if mark != 0 {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)) })
			return errors.Join(err, serr)
		}
	}
	return lc
}

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST from linux/netfilter_ipv6/ip6_tables.h (same
// value as SO_ORIGINAL_DST; x/sys/unix does not export it).
const ip6tSOOriginalDst = 80

package hbone

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrBadAuthority: a CONNECT :authority that is not a literal ip:port.
var ErrBadAuthority = errors.New("hbone authority must be ip:port, IPv6 in brackets")

// ParseAuthority parses the :authority of an HBONE CONNECT: a literal IPv4 or bracketed
// IPv6 address (no zone) and a non-zero port, "10.0.0.1:8080" or "[fd00::1]:8080".
// Format one with netip.AddrPort.String.
func ParseAuthority(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	switch {
	case err != nil:
		return netip.AddrPort{}, fmt.Errorf("authority %q: %w", s, ErrBadAuthority)
	case ap.Addr().Zone() != "":
		return netip.AddrPort{}, fmt.Errorf("authority %q has an IPv6 zone: %w", s, ErrBadAuthority)
	case ap.Port() == 0:
		return netip.AddrPort{}, fmt.Errorf("authority %q has port 0: %w", s, ErrBadAuthority)
	}
	return ap, nil
}

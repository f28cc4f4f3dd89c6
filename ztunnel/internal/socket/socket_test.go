package socket

import (
	"context"
	"net"
	"net/netip"
	"testing"
)

// TestOriginalDestinationNotRedirected: without a redirect rule the original destination is
// the local address. (The redirected case is exercised by the netns tests, which own the
// namespace their nftables rules live in.)
func TestOriginalDestinationNotRedirected(t *testing.T) {
	l, err := ListenConfig(0).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := DialOptions{}.Dial(context.Background(), l.Addr().(*net.TCPAddr).AddrPort())
		if err == nil {
			defer c.Close()
			_, _ = c.Read(make([]byte, 1))
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := OriginalDestination(c)
	if err != nil || got != l.Addr().(*net.TCPAddr).AddrPort() {
		t.Fatalf("OriginalDestination = %v, %v; want %v", got, err, l.Addr())
	}
	if _, err := OriginalDestination(&net.UnixConn{}); err == nil {
		t.Error("a unix connection has no original destination")
	}
}

func TestMarkedDial(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := DialOptions{Mark: 0x539, Source: netip.MustParseAddr("127.0.0.1")}.Dial(context.Background(), l.Addr().(*net.TCPAddr).AddrPort())
	if err != nil {
		t.Fatalf("dial with SO_MARK (needs CAP_NET_ADMIN): %v", err)
	}
	c.Close()
}

package socket

import (
	"context"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkDial compares a plain dial with DialInNetns (a goroutine, a locked thread and
// two setns per dial; the thread is held only while the socket is created) and with a
// long-lived goroutine locked in the namespace that serves dial requests. The namespace is
// this process's own (setns into it costs the same as into another), so it needs
// CAP_SYS_ADMIN but no topology.
func BenchmarkDial(b *testing.B) {
	if unix.Geteuid() != 0 {
		b.Skip("setns needs CAP_SYS_ADMIN")
	}
	l, err := ListenConfig(0).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dst := l.Addr().(*net.TCPAddr).AddrPort()
	ns, err := os.Open("/proc/self/ns/net")
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Close()
	d := &net.Dialer{}
	d.SetMultipathTCP(false)
	ctx := context.Background()
	b.Run("plain", func(b *testing.B) {
		for b.Loop() {
			c, err := d.DialContext(ctx, "tcp", dst.String())
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
	b.Run("setns-per-dial", func(b *testing.B) {
		for b.Loop() {
			c, err := DialInNetns(ctx, ns, d, dst)
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
	b.Run("locked-goroutine", func(b *testing.B) {
		type req struct {
			dst netip.AddrPort
			res chan net.Conn
		}
		reqs := make(chan req)
		go func() {
			runtime.LockOSThread() // dies with the goroutine
			if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
				panic(err)
			}
			for r := range reqs {
				c, err := d.DialContext(ctx, "tcp", r.dst.String())
				if err != nil {
					panic(err)
				}
				r.res <- c
			}
		}()
		defer close(reqs)
		res := make(chan net.Conn)
		for b.Loop() {
			reqs <- req{dst, res}
			(<-res).Close()
		}
	})
}

package socket

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Network namespaces.
//
// A socket belongs for its whole life to the network namespace of the thread that created
// it; what happens to it afterwards (connect, accept, read) may run on any thread. So the
// functions below switch a locked OS thread into the target namespace just long enough to
// create the socket, then switch it back before unlocking it. If switching back fails the
// thread stays locked and its goroutine ends, which makes the Go runtime discard the thread
// rather than let other goroutines run in the wrong namespace.

// homeNetns is the network namespace ztunnel's own threads live in, opened once, before
// any thread is switched (see home).
var homeNetns = sync.OnceValues(func() (*os.File, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	f, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("opening this process's network namespace: %w", err)
	}
	return f, nil
})

// InitNetns opens the handle on ztunnel's own network namespace that the functions below
// switch back to. They do it on first use; calling it at start makes a missing /proc fail
// start-up instead, and keeps that one long-lived fd out of per-pod accounting.
func InitNetns() error {
	_, err := homeNetns()
	return err
}

// InNetns runs f on an OS thread switched into the network namespace netns, on a goroutine
// of its own, and returns f's error. Sockets f creates belong to netns. f must not start
// goroutines that expect to run in netns: they run on other threads.
func InNetns(netns *os.File, f func() error) error {
	home, err := homeNetns()
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(netns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread() // still in the home namespace
			errc <- fmt.Errorf("entering network namespace %s: %w", netns.Name(), err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread stays locked and dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("returning from network namespace %s: %w", netns.Name(), err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// ListenInNetns opens a TCP listener on addr inside the network namespace netns with lc.
func ListenInNetns(ctx context.Context, netns *os.File, lc *net.ListenConfig, network, addr string) (*net.TCPListener, error) {
	var l net.Listener
	err := InNetns(netns, func() (err error) {
		l, err = lc.Listen(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	tl, ok := l.(*net.TCPListener)
	if !ok {
		_ = l.Close()
		return nil, fmt.Errorf("listening on %s: %T is not a TCP listener", addr, l)
	}
	return tl, nil
}

// DialInNetns connects to dst with d from inside the network namespace netns: the socket
// is created there (so the namespace's addresses, routes and rules apply to it), with d's
// Control applied. The thread is switched only while the socket is created; the connect
// itself waits on Go's poller like any dial, without holding a thread. d must dial a
// single address (dst is a literal); d is not modified.
func DialInNetns(ctx context.Context, netns *os.File, d *net.Dialer, dst netip.AddrPort) (net.Conn, error) {
	home, err := homeNetns()
	if err != nil {
		return nil, err
	}
	type result struct {
		c   net.Conn
		err error
	}
	resc := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(netns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			resc <- result{err: fmt.Errorf("entering network namespace %s: %w", netns.Name(), err)}
			return
		}
		inside, broken := true, false
		leave := func() error {
			if !inside {
				return nil
			}
			if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
				broken = true // the thread stays locked and dies with this goroutine
				return fmt.Errorf("returning from network namespace %s: %w", netns.Name(), err)
			}
			inside = false
			runtime.UnlockOSThread()
			return nil
		}
		dd := *d
		control := d.Control
		dd.ControlContext = nil
		dd.Control = func(network, address string, c syscall.RawConn) error {
			// The socket exists (in netns) when Control runs; apply the caller's options
			// and switch back before connecting.
			if !inside {
				return fmt.Errorf("dialing %s from network namespace %s: a second socket would be created outside it", address, netns.Name())
			}
			var cerr error
			if control != nil {
				cerr = control(network, address, c)
			}
			return errors.Join(cerr, leave())
		}
		c, err := dd.DialContext(ctx, "tcp", dst.String())
		if lerr := leave(); lerr != nil {
			err = errors.Join(err, lerr)
		}
		if broken && c != nil {
			_ = c.Close()
			c = nil
		}
		resc <- result{c, err}
	}()
	r := <-resc
	return r.c, r.err
}

// IsNetns reports whether f is a network namespace (an nsfs file of type CLONE_NEWNET).
func IsNetns(f *os.File) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("checking %s: %w", f.Name(), err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("%s is not a namespace file", f.Name())
	}
	t, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil {
		return fmt.Errorf("checking the namespace type of %s: %w", f.Name(), err)
	}
	if t != unix.CLONE_NEWNET {
		return fmt.Errorf("%s is not a network namespace", f.Name())
	}
	return nil
}

// NetnsID identifies a network namespace: its inode number on nsfs. Two files of the same
// namespace have the same ID.
func NetnsID(f *os.File) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, fmt.Errorf("checking %s: %w", f.Name(), err)
	}
	return st.Ino, nil
}

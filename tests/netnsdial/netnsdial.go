// Package netnsdial runs Go code, and dials, inside a network namespace given by path: the
// one way tests and the local cluster reach addresses that exist only in namespaces they
// created. It creates no namespaces (tests/netns and tests/cluster do).
package netnsdial

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs f on an OS thread switched into the network namespace at path. Sockets f creates
// belong to that namespace for their whole life, whatever goroutine later uses them. The
// thread is discarded afterwards rather than switched back, so no other goroutine ever runs
// in the namespace by accident.
func Do(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("opening netns %s: %w", path, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering netns %s: %w", path, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// Dialer returns a dial function whose sockets are created inside the network namespace at
// path, for clients such as http.Transport that dial on goroutines of their own.
func Dialer(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := Do(path, func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

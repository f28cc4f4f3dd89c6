package cluster

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
)

// Forward serves ln by relaying every connection to target through dial: it is how the host
// reaches the apiserver, which lives in the control plane's network namespace (the host
// namespace gets no route or address on the cluster network). It returns when ln is closed,
// after closing the connections it relays.
func Forward(ln net.Listener, target string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			conns[c] = true
		} else {
			delete(conns, c)
		}
	}
	defer func() {
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		track(c, true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer track(c, false)
			relay(c, target, dial)
		}()
	}
}

// relay copies both ways until either side ends, then closes both.
func relay(c net.Conn, target string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) {
	defer c.Close()
	up, err := dial(context.Background(), "tcp", target)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	_ = c.Close()
	_ = up.Close()
	<-done
}

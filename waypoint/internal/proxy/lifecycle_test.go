package proxy_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestUpgrade: a 101 Switching Protocols (a WebSocket, say) passes through the waypoint:
// the upgrade reaches the backend, its 101 comes back, then bytes flow both ways.
func TestUpgrade(t *testing.T) {
	e := newEnv(t, mesh())
	e.backend("v1", "10.0.0.11", id(t, "ns1", "reviews"), func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "no upgrade", http.StatusBadRequest)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		line, _ := brw.ReadString('\n')
		io.WriteString(c, "echo "+line)
	})
	e.setRoutes(defaultRoutes("reviews-v1", 9080))
	s, err := e.rawStream(id(t, "client", "sleep"), "10.96.0.11:9080")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(s, "GET /ws HTTP/1.1\r\nHost: reviews-v1.ns1.svc.cluster.local\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(s)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "echo" {
		t.Fatalf("got %d, upgrade %q", resp.StatusCode, resp.Header.Get("Upgrade"))
	}
	io.WriteString(s, "ping\n")
	if line, err := br.ReadString('\n'); err != nil || line != "echo ping\n" {
		t.Errorf("after the upgrade: %q, %v", line, err)
	}
}

// TestShutdown: Shutdown lets a request in flight finish (its response says close), closes
// an idle keep-alive stream, and returns once both are gone.
func TestShutdown(t *testing.T) {
	e := newEnv(t, mesh())
	started := make(chan struct{}, 1)
	e.backend("v1", "10.0.0.11", id(t, "ns1", "reviews"), func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			time.Sleep(500 * time.Millisecond)
		}
		io.WriteString(w, "done")
	})
	e.setRoutes(defaultRoutes("reviews-v1", 9080))
	open := func() (io.ReadWriteCloser, *bufio.Reader) {
		s, err := e.rawStream(id(t, "client", "sleep"), "10.96.0.11:9080")
		if err != nil {
			t.Fatal(err)
		}
		s.SetDeadline(time.Now().Add(10 * time.Second))
		return s, bufio.NewReader(s)
	}
	idle, idleR := open()
	defer idle.Close()
	io.WriteString(idle, "GET /fast HTTP/1.1\r\nHost: reviews-v1.ns1.svc.cluster.local\r\n\r\n")
	if resp, err := http.ReadResponse(idleR, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v %v", resp, err)
	} else {
		io.ReadAll(resp.Body)
	}
	busy, busyR := open()
	defer busy.Close()
	io.WriteString(busy, "GET /slow HTTP/1.1\r\nHost: reviews-v1.ns1.svc.cluster.local\r\n\r\n")
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.proxy.Shutdown(ctx) }()
	resp, err := http.ReadResponse(busyR, nil)
	if err != nil {
		t.Fatalf("the request in flight: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "done" || !resp.Close {
		t.Errorf("the request in flight: %d %q close %v, want 200 done and Connection: close", resp.StatusCode, b, resp.Close)
	}
	if _, err := idleR.ReadByte(); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Errorf("the idle stream: %v, want it closed", err)
	}
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// TestCloseAbortsRequests: Close ends a request waiting for its upstream at once, rather
// than waiting for the upstream.
func TestCloseAbortsRequests(t *testing.T) {
	e := newEnv(t, mesh())
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	defer close(release)
	e.backend("v1", "10.0.0.11", id(t, "ns1", "reviews"), func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	e.setRoutes(defaultRoutes("reviews-v1", 9080))
	s, err := e.rawStream(id(t, "client", "sleep"), "10.96.0.11:9080")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	io.WriteString(s, "GET /hang HTTP/1.1\r\nHost: reviews-v1.ns1.svc.cluster.local\r\n\r\n")
	<-started
	closed := make(chan struct{})
	go func() {
		e.proxy.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close waited for the upstream")
	}
}

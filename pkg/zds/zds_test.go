//go:build linux

package zds

import (
	"context"
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"istio.io/istio/pkg/zdsapi"
)

func TestHello(t *testing.T) {
	path := sockPath(t)
	if err := os.MkdirAll(strings.TrimSuffix(path, "/ztunnel.sock"), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, _ := startClient(t, ClientOptions{Path: path, Handler: newRecorder()})
	conn, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, fds, err := readMsg(conn, make([]byte, MaxMessageSize), oobBuffer())
	if err != nil || len(fds) != 0 {
		t.Fatalf("reading hello: %v, %d fds", err, len(fds))
	}
	if want := []byte{0x08, 0x01}; string(b) != string(want) { // ZdsHello{version: V1}
		t.Errorf("hello = %x, want %x", b, want)
	}
	if !c.Connected() || c.Ready() {
		t.Errorf("connected %v ready %v, want connected and not ready before the snapshot", c.Connected(), c.Ready())
	}
}

func TestServerSocket(t *testing.T) {
	path := sockPath(t)
	// A stale file where the socket goes is replaced.
	if err := os.MkdirAll(strings.TrimSuffix(path, "/ztunnel.sock"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := NewServer(ServerOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want a 0600 socket", st.Mode())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after Close: %v", err)
	}
}

// TestAddDel drives our Client with our Server: the handler gets a usable netns, NACK
// text comes back to Add, Del reaches the handler.
func TestAddDel(t *testing.T) {
	checkLeaks(t)
	path := sockPath(t)
	s := startServer(t, ServerOptions{Path: path})
	ctx := ctxT(t)

	ns := openNetns(t)
	defer ns.Close()
	err := s.Add(ctx, Workload{UID: "a", Info: info("pa"), Netns: ns})
	if !errors.Is(err, ErrNoZtunnel) || !strings.Contains(err.Error(), "no ztunnel connected") {
		t.Fatalf("Add with no ztunnel: %v", err)
	}

	r := newRecorder()
	defer r.closeAll()
	c, stop := startClient(t, ClientOptions{Path: path, Handler: r})
	defer stop()
	waitReady(t, c)
	// "a" was recorded although no ztunnel was there: it is replayed.
	if got, want := r.take(), []string{"add a ns/pa/sa", "snapshot a"}; !slices.Equal(got, want) {
		t.Fatalf("replay = %q, want %q", got, want)
	}
	if !s.Connected() {
		t.Error("server not connected")
	}

	if err := s.Add(ctx, Workload{UID: "b", Info: info("pb"), Netns: ns}); err != nil {
		t.Fatal(err)
	}
	r.setFail("c", "no room for c")
	err = s.Add(ctx, Workload{UID: "c", Info: info("pc"), Netns: ns})
	if !errors.Is(err, ErrNACK) || !strings.Contains(err.Error(), "no room for c") {
		t.Fatalf("Add NACKed: %v", err)
	}
	if err := s.Del(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got, want := r.take(), []string{"add b ns/pb/sa", "add c ns/pc/sa", "del a"}; !slices.Equal(got, want) {
		t.Fatalf("events = %q, want %q", got, want)
	}
	if got, want := r.uids(), []string{"b"}; !slices.Equal(got, want) {
		t.Errorf("handler holds %q, want %q", got, want)
	}
	// The handler's file is a usable netns, independent of the caller's (closed here).
	r.mu.Lock()
	f := r.have["b"]
	r.mu.Unlock()
	ns.Close()
	if err := checkNetns(int(f.Fd())); err != nil {
		t.Errorf("handler's netns: %v", err)
	}
	if got, want := s.Workloads(), []string{"b", "c"}; !slices.Equal(got, want) {
		t.Errorf("server holds %q, want %q", got, want)
	}
	if err := s.Add(ctx, Workload{UID: "d"}); err == nil {
		t.Error("Add without netns succeeded")
	}
}

// TestReplay: a reconnecting ztunnel gets Add (Keep without netns) then SnapshotSent and
// drops what was not replayed; a restarted server is found again with backoff.
func TestReplay(t *testing.T) {
	checkLeaks(t)
	path := sockPath(t)
	ns := openNetns(t)
	defer ns.Close()
	s1, err := NewServer(ServerOptions{Path: path, Log: testLog(t), Restore: []Workload{
		{UID: "b", Info: info("pb"), Netns: ns},
		{UID: "a", Info: info("pa"), Netns: ns},
		{UID: "k"}, // netns unknown: replayed as keep
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s1.Run(ctx) }()

	r := newRecorder()
	defer r.closeAll()
	r.have["stale"] = nil // known from before, not in the snapshot: dropped
	c, stop := startClient(t, ClientOptions{Path: path, Handler: r})
	defer stop()
	waitReady(t, c)
	if got, want := r.take(), []string{"add a ns/pa/sa", "add b ns/pb/sa", "keep k", "snapshot a,b,k"}; !slices.Equal(got, want) {
		t.Fatalf("replay = %q, want %q", got, want)
	}
	if got, want := r.uids(), []string{"a", "b", "k"}; !slices.Equal(got, want) {
		t.Errorf("handler holds %q, want %q", got, want)
	}

	// The node agent restarts knowing only "a": the client reconnects and drops b and k.
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.Ready() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if c.Ready() {
		t.Fatal("client still ready after the server went away")
	}
	s2 := startServer(t, ServerOptions{Path: path, Restore: []Workload{{UID: "a", Info: info("pa"), Netns: ns}}})
	waitReady(t, c)
	if got, want := r.take(), []string{"add a ns/pa/sa", "snapshot a"}; !slices.Equal(got, want) {
		t.Fatalf("replay after restart = %q, want %q", got, want)
	}
	if got, want := r.uids(), []string{"a"}; !slices.Equal(got, want) {
		t.Errorf("handler holds %q, want %q", got, want)
	}
	if err := s2.Del(ctxT(t), "a"); err != nil {
		t.Fatal(err)
	}
	r.waitEvents(t, 1)
}

// TestAckTimeout: a ztunnel that stops acking makes Add fail after AckTimeout, and the
// connection is dropped.
func TestAckTimeout(t *testing.T) {
	checkLeaks(t)
	path := sockPath(t)
	s := startServer(t, ServerOptions{Path: path, AckTimeout: 200 * time.Millisecond})
	zt := rawZtunnel(t, path)
	if got := serveRaw(t, zt, 1); !slices.Equal(got, []string{"snapshot fds=0"}) {
		t.Fatalf("snapshot = %q", got)
	}
	ns := openNetns(t)
	defer ns.Close()
	start := time.Now()
	err := s.Add(ctxT(t), Workload{UID: "a", Netns: ns})
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Add = %v, want a deadline error", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("Add failed after %v, before the ack timeout", d)
	}
	// The request did arrive, with its fd.
	m, fds := readReq(t, zt)
	closeFDs(fds)
	if describe(m) != "add a" || len(fds) != 1 {
		t.Errorf("ztunnel got %q with %d fds", describe(m), len(fds))
	}
	// The server dropped the connection.
	deadline := time.Now().Add(5 * time.Second)
	for s.Connected() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if s.Connected() {
		t.Error("connection kept after an ack timeout")
	}
	if err := s.Add(ctxT(t), Workload{UID: "a", Netns: ns}); !errors.Is(err, ErrNoZtunnel) {
		t.Errorf("Add after drop = %v, want ErrNoZtunnel", err)
	}
}

// TestMultipleZtunnels: during an upgrade both ztunnels get a snapshot, Add goes to the
// newest, Del to both, and Add falls back to the older one when the newest leaves.
func TestMultipleZtunnels(t *testing.T) {
	checkLeaks(t)
	path := sockPath(t)
	ns := openNetns(t)
	defer ns.Close()
	s := startServer(t, ServerOptions{Path: path, Restore: []Workload{{UID: "a", Netns: ns}}})
	ctx := ctxT(t)

	oldZ := rawZtunnel(t, path)
	if got, want := serveRaw(t, oldZ, 2), []string{"add a fds=1", "snapshot fds=0"}; !slices.Equal(got, want) {
		t.Fatalf("old snapshot = %q, want %q", got, want)
	}
	newZ := rawZtunnel(t, path)
	if got, want := serveRaw(t, newZ, 2), []string{"add a fds=1", "snapshot fds=0"}; !slices.Equal(got, want) {
		t.Fatalf("new snapshot = %q, want %q", got, want)
	}

	errc := make(chan error, 1)
	go func() { errc <- s.Add(ctx, Workload{UID: "b", Netns: ns}) }()
	if got := serveRaw(t, newZ, 1); !slices.Equal(got, []string{"add b fds=1"}) {
		t.Fatalf("newest got %q", got)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	go func() { errc <- s.Del(ctx, "a") }()
	if got := serveRaw(t, oldZ, 1); !slices.Equal(got, []string{"del a fds=0"}) {
		t.Fatalf("old got %q", got)
	}
	if got := serveRaw(t, newZ, 1); !slices.Equal(got, []string{"del a fds=0"}) {
		t.Fatalf("new got %q", got)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	// The newest leaves (the keepalive or the next exchange notices): Add goes to the old.
	newZ.Close()
	go func() {
		for range 3 { // the first attempt may still pick the closed connection
			err := s.Add(ctx, Workload{UID: "c", Netns: ns})
			if err == nil || errors.Is(err, ErrNoZtunnel) {
				errc <- err
				return
			}
		}
		errc <- errors.New("add kept failing")
	}()
	if got := serveRaw(t, oldZ, 1); !slices.Equal(got, []string{"add c fds=1"}) {
		t.Fatalf("old got %q", got)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestClientRejects drives our Client with a hand-made node agent sending malformed
// requests: each is NACKed, every fd that came with it is closed, and the connection goes on.
func TestClientRejects(t *testing.T) {
	checkLeaks(t)
	path := sockPath(t)
	if err := os.MkdirAll(strings.TrimSuffix(path, "/ztunnel.sock"), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r := newRecorder()
	defer r.closeAll()
	c, stop := startClient(t, ClientOptions{Path: path, Handler: r})
	defer stop()
	conn, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, MaxMessageSize)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := readMsg(conn, buf, oobBuffer()); err != nil { // hello
		t.Fatal(err)
	}
	base := countFDs(t)

	add := &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: "a", WorkloadInfo: info("pa")}}}
	keep := &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Keep{Keep: &zdsapi.KeepWorkload{Uid: "a"}}}
	snap := &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_SnapshotSent{SnapshotSent: &zdsapi.SnapshotSent{}}}
	tests := []struct {
		name    string
		data    []byte
		fds     []string
		wantErr string // "" = ACK
	}{
		{"add without fd", marshal(t, add), nil, "wrong number of file descriptors"},
		{"add with two fds", marshal(t, add), []string{"net", "net"}, "wrong number of file descriptors"},
		{"add with five fds", marshal(t, add), []string{"net", "net", "net", "net", "net"}, "truncated"},
		{"add with a file", marshal(t, add), []string{"null"}, "not a network namespace"},
		{"keep with fd", marshal(t, keep), []string{"net"}, "wrong number of file descriptors"},
		{"garbage", []byte{0xff, 0xff}, []string{"net"}, "decoding"},
		{"oversized", make([]byte, MaxMessageSize+1), nil, "truncated"},
		{"add", marshal(t, add), []string{"net"}, ""},
		{"snapshot", marshal(t, snap), nil, ""},
		{"keep after snapshot", marshal(t, keep), nil, "after the snapshot"},
	}
	for _, tt := range tests {
		fds := openFDs(t, tt.fds...)
		var rights []byte
		if len(fds) > 0 {
			rights = unix.UnixRights(fds...)
		}
		if _, _, err := conn.WriteMsgUnix(tt.data, rights, nil); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		closeFDs(fds)
		b, _, err := readMsg(conn, buf, oobBuffer())
		if err != nil {
			t.Fatalf("%s: reading ack: %v", tt.name, err)
		}
		var resp zdsapi.WorkloadResponse
		if err := protoUnmarshal(b, &resp); err != nil {
			t.Fatal(err)
		}
		got := resp.GetAck().GetError()
		if (tt.wantErr == "") != (got == "") || !strings.Contains(got, tt.wantErr) {
			t.Errorf("%s: ack error %q, want %q", tt.name, got, tt.wantErr)
		}
	}
	if !c.Ready() {
		t.Error("client not ready after its snapshot")
	}
	if got, want := r.take(), []string{"add a ns/pa/sa", "snapshot a"}; !slices.Equal(got, want) {
		t.Errorf("handler events = %q, want %q", got, want)
	}
	// Only the handler's netns is still open.
	if got := countFDs(t); got != base+1 {
		t.Errorf("fds: %d after the rejects, want %d", got, base+1)
	}
}

// TestCloseReleases: closing a busy server and client leaves no fds or goroutines.
func TestCloseReleases(t *testing.T) {
	checkLeaks(t)
	path := sockPath(t)
	ns := openNetns(t)
	s, err := NewServer(ServerOptions{Path: path, Log: testLog(t), Restore: []Workload{{UID: "a", Netns: ns}}})
	ns.Close()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	r := newRecorder()
	c, err := NewClient(ClientOptions{Path: path, Handler: r, Log: testLog(t), MinBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cdone := make(chan error, 1)
	go func() { cdone <- c.Run(context.Background()) }()
	waitReady(t, c)
	// A connection that never says hello must not hold Close up.
	idle, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if err := s.WaitConnected(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	if err := s.WaitConnected(ctxT(t)); !errors.Is(err, ErrServerClosed) {
		t.Errorf("WaitConnected after Close = %v", err)
	}
	c.Close()
	if err := <-cdone; err != nil {
		t.Fatal(err)
	}
	r.closeAll()
}

// TestDelOverLostConnection: a Del that meets a connection whose ztunnel is gone (killed
// just before, not yet noticed) succeeds: the next ztunnel's snapshot omits the workload.
// A NACK from a live ztunnel is still an error.
func TestDelOverLostConnection(t *testing.T) {
	checkLeaks(t)
	path := sockPath(t)
	s := startServer(t, ServerOptions{Path: path, AckTimeout: 200 * time.Millisecond})
	zt := rawZtunnel(t, path)
	if got := serveRaw(t, zt, 1); !slices.Equal(got, []string{"snapshot fds=0"}) {
		t.Fatalf("snapshot = %q", got)
	}
	ns := openNetns(t)
	defer ns.Close()
	done := make(chan error, 1)
	go func() { done <- s.Add(ctxT(t), Workload{UID: "a", Netns: ns}) }()
	m, fds := readReq(t, zt)
	closeFDs(fds)
	sendAck(t, zt, "")
	if err := <-done; err != nil || describe(m) != "add a" {
		t.Fatalf("Add = %v (ztunnel got %q)", err, describe(m))
	}

	// A NACK of the Del is reported.
	go func() { done <- s.Del(ctxT(t), "a") }()
	m, _ = readReq(t, zt)
	sendAck(t, zt, "still draining")
	if err := <-done; !errors.Is(err, ErrNACK) || describe(m) != "del a" {
		t.Fatalf("Del = %v (ztunnel got %q), want the NACK", err, describe(m))
	}

	// ztunnel dies: the Del meets a dead connection and still succeeds.
	zt.Close()
	if err := s.Del(ctxT(t), "a"); err != nil {
		t.Fatalf("Del over a lost connection = %v, want nil", err)
	}
	if w := s.Workloads(); len(w) != 0 {
		t.Errorf("workloads after Del: %v", w)
	}
}

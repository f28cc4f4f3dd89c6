//go:build linux

package zds

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"log/slog"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// sockPath is a fresh socket path in a directory that does not exist yet (the Server
// creates it).
func sockPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "run", "ztunnel", "ztunnel.sock")
}

// openNetns opens this process's network namespace, a real nsfs file.
func openNetns(t testing.TB) *os.File {
	t.Helper()
	f, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// countFDs is the number of open fds of this process.
func countFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents) - 1 // the directory being read
}

// checkLeaks records fds and goroutines now and, at cleanup, fails if either grew.
func checkLeaks(t *testing.T) {
	t.Helper()
	fds, gs := countFDs(t), runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			nf, ng := countFDs(t), runtime.NumGoroutine()
			if nf <= fds && ng <= gs {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("leak: fds %d → %d, goroutines %d → %d\n%s", fds, nf, gs, ng, buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func fdOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

// event is one Handler call, as a string: "add uid ns/name/sa", "keep uid", "del uid",
// "snapshot a,b".
type recorder struct {
	mu      sync.Mutex
	events  []string
	have    map[string]*os.File // nil file for a kept workload without one
	fail    map[string]string   // uid → error text to return from Add/Keep/Del
	changed chan struct{}
}

func newRecorder() *recorder {
	return &recorder{have: map[string]*os.File{}, fail: map[string]string{}, changed: make(chan struct{}, 1)}
}

var _ Handler = (*recorder)(nil)

func (r *recorder) log(format string, args ...any) {
	r.events = append(r.events, fmt.Sprintf(format, args...))
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *recorder) Add(uid string, info *zdsapi.WorkloadInfo, netns *os.File) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log("add %s %s/%s/%s", uid, info.GetNamespace(), info.GetName(), info.GetServiceAccount())
	if msg := r.fail[uid]; msg != "" {
		return errors.New(msg)
	}
	if err := checkNetns(int(netns.Fd())); err != nil {
		return err
	}
	if old := r.have[uid]; old != nil {
		old.Close()
	}
	r.have[uid] = netns
	return nil
}

func (r *recorder) Keep(uid string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log("keep %s", uid)
	if _, ok := r.have[uid]; !ok {
		r.have[uid] = nil
	}
	return nil
}

func (r *recorder) Del(uid string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log("del %s", uid)
	if msg := r.fail[uid]; msg != "" {
		return errors.New(msg)
	}
	if f := r.have[uid]; f != nil {
		f.Close()
	}
	delete(r.have, uid)
	return nil
}

func (r *recorder) SnapshotSent(present []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log("snapshot %s", strings.Join(present, ","))
	for uid, f := range r.have {
		if !slices.Contains(present, uid) {
			if f != nil {
				f.Close()
			}
			delete(r.have, uid)
		}
	}
	return nil
}

func (r *recorder) setFail(uid, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail[uid] = msg
}

// uids is what the handler holds, sorted.
func (r *recorder) uids() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.have))
}

// take returns and clears the events so far.
func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev := r.events
	r.events = nil
	return ev
}

// waitEvents waits until n events were recorded since the last take, and takes them.
func (r *recorder) waitEvents(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		r.mu.Lock()
		got := len(r.events)
		r.mu.Unlock()
		if got >= n {
			return r.take()
		}
		select {
		case <-r.changed:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatalf("waiting for %d handler events, have %q", n, r.take())
		}
	}
}

func (r *recorder) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for uid, f := range r.have {
		if f != nil {
			f.Close()
		}
		delete(r.have, uid)
	}
}

// startServer runs a Server until the test ends.
func startServer(t *testing.T, opts ServerOptions) *Server {
	t.Helper()
	if opts.Log == nil {
		opts.Log = testLog(t)
	}
	s, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server Run: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("server Close: %v", err)
		}
	})
	return s
}

// startClient runs a Client until the test ends (or stop is called).
func startClient(t *testing.T, opts ClientOptions) (c *Client, stop func()) {
	t.Helper()
	if opts.Log == nil {
		opts.Log = testLog(t)
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff, opts.MaxBackoff = 10*time.Millisecond, 100*time.Millisecond
	}
	c, err := NewClient(opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			c.Close()
			if err := <-done; err != nil {
				t.Errorf("client Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return c, stop
}

func waitReady(t *testing.T, c *Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

// rawZtunnel is a hand-driven ztunnel: it connects and says hello.
func rawZtunnel(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := writeMsg(c, &zdsapi.ZdsHello{Version: zdsapi.Version_V1}, -1, time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	return c
}

// readReq reads one WorkloadRequest and its fds (which the caller closes).
func readReq(t *testing.T, c *net.UnixConn) (*zdsapi.WorkloadRequest, []int) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	b, fds, err := readMsg(c, make([]byte, MaxMessageSize), oobBuffer())
	if err != nil {
		t.Fatalf("reading request: %v", err)
	}
	var m zdsapi.WorkloadRequest
	if err := proto.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return &m, fds
}

func sendAck(t *testing.T, c *net.UnixConn, errText string) {
	t.Helper()
	resp := &zdsapi.WorkloadResponse{Payload: &zdsapi.WorkloadResponse_Ack{Ack: &zdsapi.Ack{Error: errText}}}
	if err := writeMsg(c, resp, -1, time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
}

// describe renders a request as "add uid", "keep uid", "del uid" or "snapshot".
func describe(m *zdsapi.WorkloadRequest) string {
	switch p := m.Payload.(type) {
	case *zdsapi.WorkloadRequest_Add:
		return "add " + p.Add.GetUid()
	case *zdsapi.WorkloadRequest_Keep:
		return "keep " + p.Keep.GetUid()
	case *zdsapi.WorkloadRequest_Del:
		return "del " + p.Del.GetUid()
	case *zdsapi.WorkloadRequest_SnapshotSent:
		return "snapshot"
	}
	return "?"
}

// serveRaw reads requests on c and acks them, recording them, until n were read.
func serveRaw(t *testing.T, c *net.UnixConn, n int) []string {
	t.Helper()
	var got []string
	for range n {
		m, fds := readReq(t, c)
		closeFDs(fds)
		got = append(got, fmt.Sprintf("%s fds=%d", describe(m), len(fds)))
		sendAck(t, c, "")
	}
	return got
}

func info(name string) *zdsapi.WorkloadInfo {
	return &zdsapi.WorkloadInfo{Name: name, Namespace: "ns", ServiceAccount: "sa"}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func protoUnmarshal(b []byte, m proto.Message) error { return proto.Unmarshal(b, m) }

// testLog writes to the test's output, shown only when it fails or with -v.
func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

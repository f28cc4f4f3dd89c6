package inpod

import (
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"istio.io/istio/pkg/zdsapi"
)

// fakePod records its lifecycle.
type fakePod struct {
	uid              string
	stopped, drained bool
	drainedFor       time.Duration
}

func (p *fakePod) Stop() { p.stopped = true }
func (p *fakePod) Drain(d time.Duration) {
	if !p.stopped {
		panic("Drain before Stop")
	}
	p.drained, p.drainedFor = true, d
}

type fakeStarter struct {
	mu      sync.Mutex
	started []*fakePod
	fail    error
}

func (f *fakeStarter) start(uid string, _ *zdsapi.WorkloadInfo, _ *os.File) (Pod, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	p := &fakePod{uid: uid}
	f.started = append(f.started, p)
	return p, nil
}

// netns opens this process's network namespace (any process may), standing for a pod's.
func netns(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Skipf("no network namespace file: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func newManager(t *testing.T, f *fakeStarter) *Manager {
	t.Helper()
	m, err := New(Options{Start: f.start, Drain: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]uint64{}
	// The namespace's identity is the file's name here, so a test can hand in "another"
	// namespace without privileges.
	m.netnsID = func(f *os.File) (uint64, error) {
		if _, ok := ids[f.Name()]; !ok {
			ids[f.Name()] = uint64(len(ids) + 1)
		}
		return ids[f.Name()], nil
	}
	t.Cleanup(m.Close)
	return m
}

// reopen returns a new file of the same namespace under name.
func reopen(t *testing.T, f *os.File, name string) *os.File {
	t.Helper()
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), name)
}

func TestManagerLifecycle(t *testing.T) {
	ns := netns(t)
	f := &fakeStarter{}
	m := newManager(t, f)
	info := &zdsapi.WorkloadInfo{Name: "client", Namespace: "default", ServiceAccount: "sleep"}

	if err := m.Add("a", info, reopen(t, ns, "ns-a")); err != nil {
		t.Fatal(err)
	}
	if err := m.Add("b", nil, reopen(t, ns, "ns-b")); err != nil {
		t.Fatal(err)
	}
	// A replay in the same namespace keeps the running listeners.
	if err := m.Add("a", info, reopen(t, ns, "ns-a")); err != nil {
		t.Fatal(err)
	}
	if len(f.started) != 2 {
		t.Fatalf("started %d listener sets, want 2 (a replay must not restart)", len(f.started))
	}
	// A new namespace restarts the pod there.
	if err := m.Add("a", info, reopen(t, ns, "ns-a2")); err != nil {
		t.Fatal(err)
	}
	if len(f.started) != 3 || !f.started[0].stopped {
		t.Fatalf("pod a in a new netns: started %d, first stopped %v", len(f.started), f.started[0].stopped)
	}
	if err := m.Keep("c"); err != nil {
		t.Fatal(err)
	}
	if got := m.Pods(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("Pods = %v", got)
	}
	// Del stops at once; an unknown uid is fine.
	if err := m.Del("b"); err != nil || !f.started[1].stopped {
		t.Fatalf("Del b: %v, stopped %v", err, f.started[1].stopped)
	}
	if err := m.Del("nope"); err != nil {
		t.Fatal(err)
	}
	// SnapshotSent drops what was not replayed.
	if err := m.Add("d", nil, reopen(t, ns, "ns-d")); err != nil {
		t.Fatal(err)
	}
	if err := m.SnapshotSent([]string{"d"}); err != nil {
		t.Fatal(err)
	}
	if got := m.Pods(); !slices.Equal(got, []string{"d"}) || !f.started[2].stopped {
		t.Fatalf("after snapshot [d]: Pods = %v, a stopped %v", got, f.started[2].stopped)
	}
	m.Close()
	for _, p := range f.started {
		if !p.stopped || !p.drained || p.drainedFor != 3*time.Second {
			t.Errorf("pod %s: stopped %v drained %v (for %v) after Close", p.uid, p.stopped, p.drained, p.drainedFor)
		}
	}
	if err := m.Add("e", nil, reopen(t, ns, "ns-e")); err == nil || !strings.Contains(err.Error(), "shutting down") {
		t.Errorf("Add after Close: %v", err)
	}
}

func TestManagerAddErrorsNameThePod(t *testing.T) {
	ns := netns(t)
	f := &fakeStarter{fail: errors.New("opening the outbound listener (:15001) in the pod's network namespace: address already in use")}
	m := newManager(t, f)
	info := &zdsapi.WorkloadInfo{Name: "client", Namespace: "default"}
	err := m.Add("uid-1", info, reopen(t, ns, "ns"))
	if err == nil || !strings.Contains(err.Error(), "default/client (uid uid-1)") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("failed start: %v", err)
	}
	notNetns, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer notNetns.Close()
	f.fail = nil
	err = m.Add("uid-2", info, notNetns)
	if err == nil || !strings.Contains(err.Error(), "default/client (uid uid-2)") || !strings.Contains(err.Error(), "not a namespace") {
		t.Fatalf("Add with /dev/null: %v", err)
	}
	if len(f.started) != 0 || len(m.Pods()) != 0 {
		t.Fatalf("a failed Add left state: started %d, pods %v", len(f.started), m.Pods())
	}
}

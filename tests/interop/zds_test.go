//go:build linux

package interop

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"

	"github.com/ambient-lite/ambient-lite/pkg/zds"
)

// Istio's node-agent ZDS server (istio.io/istio/cni/pkg/nodeagent, ztunnelServer) cannot
// be imported as a library: its constructor newZtunnelServer is unexported and the only
// exported entry point, nodeagent.NewServer, needs a Kubernetes client and programs
// iptables. So these tests speak Istio's zdsapi types through a transcription of its wire
// code (ztunnelserver_linux.go: readProto, sendDataAndWaitForAck, ReadHello) and of its
// test ztunnel (ztunnelserver_linux_test.go: connectZtClientToServer, sendHello,
// readRequest, sendAck), and check our Client and Server against them.

// istioReadWriteDeadline is Istio's readWriteDeadline.
const istioReadWriteDeadline = 5 * time.Second

// istioReadProto is Istio's readProto: a 1024-byte buffer, a deadline, truncation checks.
func istioReadProto[T any, PT interface {
	proto.Message
	*T
}](u *net.UnixConn, timeout time.Duration, oob []byte) (PT, int, error) {
	var buf [1024]byte
	if err := u.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, 0, err
	}
	n, oobn, flags, _, err := u.ReadMsgUnix(buf[:], oob)
	if err != nil {
		return nil, 0, err
	}
	if flags&unix.MSG_TRUNC != 0 {
		return nil, 0, fmt.Errorf("truncated message")
	}
	if flags&unix.MSG_CTRUNC != 0 {
		return nil, 0, fmt.Errorf("truncated control message")
	}
	var resp T
	var respPtr PT = &resp
	if err := proto.Unmarshal(buf[:n], respPtr); err != nil {
		return nil, 0, err
	}
	return respPtr, oobn, nil
}

// istioSendAndWaitForAck is Istio's SendMsgAndWaitForAck.
func istioSendAndWaitForAck(u *net.UnixConn, msg *zdsapi.WorkloadRequest, fd *int) (*zdsapi.WorkloadResponse, error) {
	data, err := proto.Marshal(msg)
	if err != nil {
		return nil, err
	}
	var rights []byte
	if fd != nil {
		rights = unix.UnixRights(*fd)
	}
	if err := u.SetWriteDeadline(time.Now().Add(istioReadWriteDeadline)); err != nil {
		return nil, err
	}
	if _, _, err := u.WriteMsgUnix(data, rights, nil); err != nil {
		return nil, err
	}
	m, _, err := istioReadProto[zdsapi.WorkloadResponse](u, istioReadWriteDeadline, nil)
	return m, err
}

// zdsHandler records what our Client hands it.
type zdsHandler struct {
	mu     sync.Mutex
	events []string
	have   map[string]*os.File
	nack   map[string]string
}

func (h *zdsHandler) Add(uid string, info *zdsapi.WorkloadInfo, netns *os.File) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, fmt.Sprintf("add %s %s/%s/%s", uid, info.GetNamespace(), info.GetName(), info.GetServiceAccount()))
	if msg := h.nack[uid]; msg != "" {
		return errors.New(msg)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(netns.Fd()), &st); err != nil || st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("not nsfs: %v", err)
	}
	if old := h.have[uid]; old != nil {
		old.Close()
	}
	h.have[uid] = netns
	return nil
}

func (h *zdsHandler) Keep(uid string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, "keep "+uid)
	return nil
}

func (h *zdsHandler) Del(uid string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, "del "+uid)
	if f := h.have[uid]; f != nil {
		f.Close()
	}
	delete(h.have, uid)
	return nil
}

func (h *zdsHandler) SnapshotSent(present []string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, "snapshot "+strings.Join(present, ","))
	for uid, f := range h.have {
		if !slices.Contains(present, uid) {
			f.Close()
			delete(h.have, uid)
		}
	}
	return nil
}

func (h *zdsHandler) take() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	ev := h.events
	h.events = nil
	return ev
}

func (h *zdsHandler) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, f := range h.have {
		f.Close()
	}
}

func zdsSocket(t *testing.T) string {
	return filepath.Join(t.TempDir(), "ztunnel.sock")
}

// TestIstioNodeAgentToOurClient: Istio's server side (snapshot of Add/Keep then
// SnapshotSent, then PodAdded and PodDeleted) drives our Client.
func TestIstioNodeAgentToOurClient(t *testing.T) {
	path := zdsSocket(t)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	h := &zdsHandler{have: map[string]*os.File{}, nack: map[string]string{"bad": "cannot start proxy"}}
	defer h.close()
	c, err := zds.NewClient(zds.ClientOptions{Path: path, Handler: h, MinBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	defer func() {
		c.Close()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	u, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	hello, _, err := istioReadProto[zdsapi.ZdsHello](u, istioReadWriteDeadline, nil) // ReadHello
	if err != nil {
		t.Fatal(err)
	}
	if hello.Version != zdsapi.Version_V1 {
		t.Fatalf("hello version %v", hello.Version)
	}

	netns, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer netns.Close()
	fd := int(netns.Fd())
	wl := &zdsapi.WorkloadInfo{Name: "p1", Namespace: "ns", ServiceAccount: "sa"}
	send := func(req *zdsapi.WorkloadRequest, fd *int) string {
		t.Helper()
		resp, err := istioSendAndWaitForAck(u, req, fd)
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetAck().GetError()
	}
	// sendSnapshot: Add for pods with a netns, Keep for those without, then SnapshotSent.
	if e := send(&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: "u1", WorkloadInfo: wl}}}, &fd); e != "" {
		t.Fatalf("add NACKed: %s", e)
	}
	if e := send(&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Keep{Keep: &zdsapi.KeepWorkload{Uid: "u2"}}}, nil); e != "" {
		t.Fatalf("keep NACKed: %s", e)
	}
	if c.Ready() {
		t.Error("ready before SnapshotSent")
	}
	if e := send(&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_SnapshotSent{SnapshotSent: &zdsapi.SnapshotSent{}}}, nil); e != "" {
		t.Fatalf("snapshot NACKed: %s", e)
	}
	if !c.Ready() {
		t.Error("not ready after SnapshotSent")
	}
	// PodAdded: a NACK comes back as the ack's error text.
	if e := send(&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: "bad", WorkloadInfo: wl}}}, &fd); e != "cannot start proxy" {
		t.Errorf("add NACK = %q", e)
	}
	// An Add without its fd is refused, as ztunnel does.
	if e := send(&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: "u3", WorkloadInfo: wl}}}, nil); !strings.Contains(e, "file descriptors") {
		t.Errorf("add without fd: ack %q", e)
	}
	// PodDeleted.
	if e := send(&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Del{Del: &zdsapi.DelWorkload{Uid: "u1"}}}, nil); e != "" {
		t.Fatalf("del NACKed: %s", e)
	}
	want := []string{"add u1 ns/p1/sa", "keep u2", "snapshot u1,u2", "add bad ns/p1/sa", "del u1"}
	if got := h.take(); !slices.Equal(got, want) {
		t.Errorf("handler saw %q, want %q", got, want)
	}
}

// TestOurServerToIstioZtunnel: our Server driven by Istio's test ztunnel.
func TestOurServerToIstioZtunnel(t *testing.T) {
	path := zdsSocket(t)
	netns, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer netns.Close()
	s, err := zds.NewServer(zds.ServerOptions{Path: path, Restore: []zds.Workload{
		{UID: "u1", Info: &zdsapi.WorkloadInfo{Name: "p1", Namespace: "ns", ServiceAccount: "sa"}, Netns: netns},
		{UID: "u2"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		s.Close()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	// connectZtClientToServer + sendHello.
	zt, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer zt.Close()
	write := func(m proto.Message) {
		t.Helper()
		data, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := zt.SetWriteDeadline(time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := zt.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	write(&zdsapi.ZdsHello{Version: zdsapi.Version_V1})
	// readRequest: 1024-byte oob, at most one SCM_RIGHTS message.
	readRequest := func() (string, int) {
		t.Helper()
		var oob [1024]byte
		m, oobn, err := istioReadProto[zdsapi.WorkloadRequest](zt, time.Second, oob[:])
		if err != nil {
			t.Fatal(err)
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) > 1 {
			t.Fatalf("control messages %d, %v", len(msgs), err)
		}
		var fds []int
		for _, msg := range msgs {
			got, err := unix.ParseUnixRights(&msg)
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, got...)
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
		switch p := m.Payload.(type) {
		case *zdsapi.WorkloadRequest_Add:
			return fmt.Sprintf("add %s %s", p.Add.Uid, p.Add.WorkloadInfo.GetName()), len(fds)
		case *zdsapi.WorkloadRequest_Keep:
			return "keep " + p.Keep.Uid, len(fds)
		case *zdsapi.WorkloadRequest_Del:
			return "del " + p.Del.Uid, len(fds)
		case *zdsapi.WorkloadRequest_SnapshotSent:
			return "snapshot", len(fds)
		}
		return "?", len(fds)
	}
	sendAck := func(e string) {
		write(&zdsapi.WorkloadResponse{Payload: &zdsapi.WorkloadResponse_Ack{Ack: &zdsapi.Ack{Error: e}}})
	}
	for _, want := range []struct {
		req string
		fds int
	}{{"add u1 p1", 1}, {"keep u2", 0}, {"snapshot", 0}} {
		if got, n := readRequest(); got != want.req || n != want.fds {
			t.Fatalf("got %q with %d fds, want %q with %d", got, n, want.req, want.fds)
		}
		sendAck("")
	}

	errc := make(chan error, 1)
	go func() {
		errc <- s.Add(ctx, zds.Workload{UID: "u3", Info: &zdsapi.WorkloadInfo{Name: "p3"}, Netns: netns})
	}()
	if got, n := readRequest(); got != "add u3 p3" || n != 1 {
		t.Fatalf("got %q with %d fds", got, n)
	}
	sendAck("netns gone")
	if err := <-errc; !errors.Is(err, zds.ErrNACK) || !strings.Contains(err.Error(), "netns gone") {
		t.Errorf("Add = %v, want the NACK", err)
	}
	go func() { errc <- s.Del(ctx, "u1") }()
	if got, n := readRequest(); got != "del u1" || n != 0 {
		t.Fatalf("got %q with %d fds", got, n)
	}
	sendAck("")
	if err := <-errc; err != nil {
		t.Error(err)
	}
}

//go:build linux

package zds

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// DefaultPath is where Istio's node agent listens and ztunnel connects.
const DefaultPath = "/var/run/ztunnel/ztunnel.sock"

// Wire limits, Istio's.
const (
	// MaxMessageSize is the read buffer both sides use: a datagram larger than this is
	// truncated by the kernel and rejected. Istio's node agent reads acks into 1024 bytes
	// and ztunnel reads requests into 1024 bytes, so the Server refuses to send more.
	MaxMessageSize = 1024
	// DefaultAckTimeout is how long the Server waits to write a request and for its ack
	// (Istio's readWriteDeadline).
	DefaultAckTimeout = 5 * time.Second
	// maxFDs is how many fds one read makes room for. Only AddWorkload carries one; room
	// for a few more lets the reader see (and close) extra fds and reject the message
	// instead of having the kernel silently drop them.
	maxFDs = 4
)

// Errors a Client reports (in its NACK) for a malformed request.
var (
	// ErrBadFDs: AddWorkload without exactly one fd, or another request with any.
	ErrBadFDs = errors.New("zds: wrong number of file descriptors")
	// ErrNotNetns: the fd of an AddWorkload is not a network namespace.
	ErrNotNetns = errors.New("zds: fd is not a network namespace")
	// ErrTruncated: a datagram or its control data did not fit the read buffers.
	ErrTruncated = errors.New("zds: truncated message")
)

// readMsg reads one datagram into buf and returns its payload and the fds that came with
// it. The fds are owned by the caller, also when err is not nil (then they are closed
// already: readMsg closes every fd of a message it rejects). Go's ReadMsgUnix is
// recvmsg(2) with MSG_CMSG_CLOEXEC on Linux, integrated with the poller (deadlines).
func readMsg(c *net.UnixConn, buf, oob []byte) ([]byte, []int, error) {
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, err
	}
	fds, perr := parseRights(oob[:oobn])
	switch {
	case perr != nil:
		closeFDs(fds)
		return nil, nil, perr
	case flags&unix.MSG_TRUNC != 0:
		closeFDs(fds)
		return nil, nil, fmt.Errorf("%w: datagram larger than %d bytes", ErrTruncated, len(buf))
	case flags&unix.MSG_CTRUNC != 0:
		closeFDs(fds)
		return nil, nil, fmt.Errorf("%w: control data", ErrTruncated)
	case n == 0 && oobn == 0:
		// A zero-length read with no ancillary data is how SOCK_SEQPACKET reports that the
		// peer closed (an empty protobuf is never sent: every message has a field).
		return nil, nil, errPeerClosed
	}
	return buf[:n], fds, nil
}

var errPeerClosed = fmt.Errorf("zds: peer closed the connection: %w", net.ErrClosed)

// parseRights returns every fd in oob's SCM_RIGHTS messages. On error it still returns
// the fds it found so the caller can close them.
func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parsing control message: %w", err)
	}
	var fds []int
	var errs []error
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		fds = append(fds, got...)
		if err != nil {
			errs = append(errs, fmt.Errorf("parsing SCM_RIGHTS: %w", err))
		}
	}
	return fds, errors.Join(errs...)
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

func oobBuffer() []byte { return make([]byte, unix.CmsgSpace(4*maxFDs)) }

// writeMsg sends m as one datagram, with fd (if not negative) as SCM_RIGHTS.
func writeMsg(c *net.UnixConn, m proto.Message, fd int, deadline time.Time) error {
	data, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("encoding %T: %w", m, err)
	}
	if len(data) > MaxMessageSize {
		return fmt.Errorf("encoding %T: %d bytes exceed the peer's %d-byte read buffer", m, len(data), MaxMessageSize)
	}
	var rights []byte
	if fd >= 0 {
		rights = unix.UnixRights(fd)
	}
	if err := c.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("setting write deadline: %w", err)
	}
	if _, _, err := c.WriteMsgUnix(data, rights, nil); err != nil {
		return fmt.Errorf("writing %T: %w", m, err)
	}
	return nil
}

// request is one decoded WorkloadRequest; netns is set for an add only and belongs to
// whoever receives the request.
type request struct {
	kind  requestKind
	uid   string
	info  *zdsapi.WorkloadInfo
	netns *os.File
}

type requestKind int

const (
	kindAdd requestKind = iota + 1
	kindKeep
	kindDel
	kindSnapshot
)

func (k requestKind) String() string {
	switch k {
	case kindAdd:
		return "add"
	case kindKeep:
		return "keep"
	case kindDel:
		return "del"
	case kindSnapshot:
		return "snapshot_sent"
	}
	return "unknown"
}

// decodeRequest decodes a WorkloadRequest and the fds that came with it, and checks them
// as ztunnel does: AddWorkload has a uid and exactly one fd, a network namespace;
// Keep and Del have a uid and no fd; SnapshotSent has no fd. It takes ownership of fds:
// on success the Add's fd is in the returned request's netns, and every other fd is
// closed, whatever the outcome.
func decodeRequest(b []byte, fds []int) (request, error) {
	var req request
	handed := -1
	defer func() {
		for i, fd := range fds {
			if i != handed {
				_ = unix.Close(fd)
			}
		}
	}()
	var m zdsapi.WorkloadRequest
	if err := proto.Unmarshal(b, &m); err != nil {
		return req, fmt.Errorf("zds: decoding WorkloadRequest: %w", err)
	}
	noFDs := func() error {
		if len(fds) != 0 {
			return fmt.Errorf("%w: %s carries %d, want 0", ErrBadFDs, req.kind, len(fds))
		}
		return nil
	}
	needUID := func() error {
		if req.uid == "" {
			return fmt.Errorf("zds: %s without a uid", req.kind)
		}
		return nil
	}
	switch p := m.Payload.(type) {
	case *zdsapi.WorkloadRequest_Add:
		req.kind, req.uid, req.info = kindAdd, p.Add.GetUid(), p.Add.GetWorkloadInfo()
		if err := needUID(); err != nil {
			return request{}, err
		}
		who := fmt.Sprintf("add of workload %s", req.uid)
		if info := req.info; info != nil {
			who = fmt.Sprintf("add of workload %s (pod %s/%s)", req.uid, info.GetNamespace(), info.GetName())
		}
		if len(fds) != 1 {
			return request{}, fmt.Errorf("%w: %s carries %d, want 1", ErrBadFDs, who, len(fds))
		}
		if err := checkNetns(fds[0]); err != nil {
			return request{}, fmt.Errorf("%s: %w", who, err)
		}
		handed = 0
		req.netns = os.NewFile(uintptr(fds[0]), "netns:"+req.uid)
		return req, nil
	case *zdsapi.WorkloadRequest_Keep:
		req.kind, req.uid = kindKeep, p.Keep.GetUid()
		return req, errors.Join(needUID(), noFDs())
	case *zdsapi.WorkloadRequest_Del:
		req.kind, req.uid = kindDel, p.Del.GetUid()
		return req, errors.Join(needUID(), noFDs())
	case *zdsapi.WorkloadRequest_SnapshotSent:
		req.kind = kindSnapshot
		return req, noFDs()
	default:
		return request{}, errors.New("zds: WorkloadRequest without a payload (unknown or missing oneof)")
	}
}

// checkNetns reports whether fd is a network namespace: a file on nsfs (fstatfs
// NSFS_MAGIC) whose namespace type is CLONE_NEWNET (ioctl NS_GET_NSTYPE).
func checkNetns(fd int) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return fmt.Errorf("%w: fstatfs: %w", ErrNotNetns, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("%w: filesystem magic %#x, want nsfs %#x", ErrNotNetns, st.Type, unix.NSFS_MAGIC)
	}
	t, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil {
		return fmt.Errorf("%w: NS_GET_NSTYPE: %w", ErrNotNetns, err)
	}
	if t != unix.CLONE_NEWNET {
		return fmt.Errorf("%w: namespace type %#x, want CLONE_NEWNET", ErrNotNetns, t)
	}
	return nil
}

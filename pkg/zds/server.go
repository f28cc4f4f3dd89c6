//go:build linux

package zds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// DefaultKeepalive is how often the Server checks that an idle ztunnel is still there.
const DefaultKeepalive = 5 * time.Second

// Errors the Server returns; callers branch on them.
var (
	// ErrNoZtunnel: Add found no connected ztunnel. The workload is still recorded and will
	// be replayed to the next ztunnel that connects.
	ErrNoZtunnel = errors.New("no ztunnel connected")
	// ErrNACK wraps the error text of a ztunnel's negative ack.
	ErrNACK = errors.New("ztunnel rejected the request")
	// ErrServerClosed: the Server was closed.
	ErrServerClosed = errors.New("zds server closed")
)

// Workload is one pod as ZDS knows it.
type Workload struct {
	// UID is the pod's uid, the workload's key. Required.
	UID string
	// Info names the pod (name, namespace, service account). May be nil.
	Info *zdsapi.WorkloadInfo
	// Netns is the pod's network namespace. The Server never takes ownership of it: it
	// keeps its own duplicate, so the caller may close Netns as soon as the call returns.
	// Nil means the netns is unknown (after a node agent restart, before the pod's netns
	// was found again): the workload is replayed as KeepWorkload, and Add refuses it.
	Netns *os.File
}

// ServerOptions configures a Server.
type ServerOptions struct {
	// Path is the socket's path. If empty, DefaultPath. Its directory is created if
	// missing, a stale socket file is removed, and the socket is made 0600.
	Path string
	// Restore is the set of workloads to start with, e.g. recovered after a node agent
	// restart, replayed to every ztunnel that connects. Workloads without a Netns are
	// replayed as KeepWorkload. The Server duplicates the fds.
	Restore []Workload
	// AckTimeout bounds writing each request and waiting for its ack. If zero,
	// DefaultAckTimeout.
	AckTimeout time.Duration
	// Keepalive is how often an idle connection is probed (a short read that must time
	// out). If zero, DefaultKeepalive.
	Keepalive time.Duration
	// Log receives connection events. If nil, slog.Default().
	Log *slog.Logger
}

// Server is the node agent's side of ZDS. It owns the current workloads (uid → info and a
// duplicate of the netns fd) and replays them, as AddWorkload (KeepWorkload without a
// netns) then SnapshotSent, to every ztunnel that connects.
//
// Several ztunnels may be connected at once: during a ztunnel upgrade the new pod connects
// before the old one exits. Like Istio's node agent (cni/pkg/nodeagent/ztunnelserver.go),
// every connection gets its own snapshot, Add goes to the newest connection only (falling
// back to the previous one if the newest goes away), and Del goes to all of them so the
// old ztunnel stops serving a deleted pod too. Unlike Istio, a connection counts only after
// its ZdsHello (Istio counts it at accept), and a connection whose ack times out is
// dropped rather than reused: acks are matched to requests only by order, so a late ack
// would be taken for the next request's. ztunnel reconnects and gets a fresh snapshot.
type Server struct {
	opts ServerOptions
	log  *slog.Logger
	ln   *net.UnixListener

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // connection goroutines

	mu        sync.Mutex
	workloads map[string]*entry
	conns     []*serverConn            // in the order they said hello; the last is the newest
	all       map[*serverConn]struct{} // every open connection, also before its hello
	changed   chan struct{}            // closed and replaced when conns changes
	closed    bool
}

type entry struct {
	info  *zdsapi.WorkloadInfo
	netns *os.File // the Server's own duplicate, or nil
}

// NewServer validates opts, binds the socket and returns a Server; call Run to accept
// connections.
func NewServer(opts ServerOptions) (*Server, error) {
	if opts.Path == "" {
		opts.Path = DefaultPath
	}
	if opts.AckTimeout <= 0 {
		opts.AckTimeout = DefaultAckTimeout
	}
	if opts.Keepalive <= 0 {
		opts.Keepalive = DefaultKeepalive
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	s := &Server{opts: opts, log: log.With("component", "zds-server"), workloads: map[string]*entry{}, all: map[*serverConn]struct{}{}, changed: make(chan struct{})}
	for _, w := range opts.Restore {
		if err := s.record(w); err != nil {
			s.closeWorkloads()
			return nil, fmt.Errorf("restoring workload %q: %w", w.UID, err)
		}
	}
	ln, err := listen(opts.Path)
	if err != nil {
		s.closeWorkloads()
		return nil, err
	}
	s.ln = ln
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

func listen(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("setting socket permissions: %w", err)
	}
	return ln, nil
}

// Addr is the socket's path.
func (s *Server) Addr() string { return s.opts.Path }

// Run accepts ztunnel connections until ctx is done or Close is called, then closes every
// connection and returns nil. It returns an error only if accepting fails otherwise.
func (s *Server) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { _ = s.Close() })
	defer stop()
	defer s.wg.Wait()
	var delay time.Duration
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if s.ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("zds accept failed; retrying", "err", err, "delay", delay)
				select {
				case <-time.After(delay):
					continue
				case <-s.ctx.Done():
					return nil
				}
			}
			_ = s.Close()
			return fmt.Errorf("accepting ztunnel connection: %w", err)
		}
		delay = 0
		sc := &serverConn{c: c, sem: make(chan struct{}, 1), done: make(chan struct{})}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			sc.close()
			return nil
		}
		s.all[sc] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serve(sc)
		}()
	}
}

// Close stops the Server: it closes the listener (removing the socket file) and every
// connection, and releases the netns duplicates. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	conns := slices.Collect(maps.Keys(s.all))
	s.conns = nil
	s.notifyLocked()
	s.mu.Unlock()
	s.cancel()
	err := s.ln.Close()
	for _, c := range conns {
		c.close()
	}
	s.wg.Wait()
	s.closeWorkloads()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (s *Server) closeWorkloads() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for uid, e := range s.workloads {
		if e.netns != nil {
			e.netns.Close()
		}
		delete(s.workloads, uid)
	}
}

// Connected reports whether a ztunnel is connected (it has said hello).
func (s *Server) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns) > 0
}

// WaitConnected blocks until a ztunnel is connected, ctx is done or the Server is closed.
func (s *Server) WaitConnected(ctx context.Context) error {
	for {
		s.mu.Lock()
		n, changed, closed := len(s.conns), s.changed, s.closed
		s.mu.Unlock()
		switch {
		case closed:
			return ErrServerClosed
		case n > 0:
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("waiting for ztunnel: %w", ctx.Err())
		}
	}
}

// Workloads returns the uids the Server currently holds, sorted.
func (s *Server) Workloads() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.workloads))
}

// Add records w (replacing any workload with its uid) and sends it to the newest
// ztunnel, waiting for the ack. The record stays even if sending fails, so the next
// ztunnel to connect gets it in its snapshot; remove it with Del. The error wraps
// ErrNoZtunnel when none is connected and ErrNACK when ztunnel rejects it. ctx bounds the
// wait for the connection (which may be replaying a snapshot); the exchange itself is
// bounded by AckTimeout.
func (s *Server) Add(ctx context.Context, w Workload) error {
	if w.Netns == nil {
		return fmt.Errorf("adding workload %q: no netns", w.UID)
	}
	if err := s.record(w); err != nil {
		return fmt.Errorf("adding workload %q: %w", w.UID, err)
	}
	s.mu.Lock()
	var c *serverConn
	for i := len(s.conns) - 1; i >= 0 && c == nil; i-- {
		if !s.conns[i].isClosed() {
			c = s.conns[i]
		}
	}
	s.mu.Unlock()
	if c == nil {
		return fmt.Errorf("adding workload %q: %w", w.UID, ErrNoZtunnel)
	}
	req := &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: w.UID, WorkloadInfo: w.Info}}}
	if err := s.exchange(ctx, c, req, int(w.Netns.Fd())); err != nil {
		return fmt.Errorf("adding workload %q: %w", w.UID, err)
	}
	return nil
}

// Del forgets the workload uid (closing its netns duplicate) and sends DelWorkload to
// every connected ztunnel, waiting for their acks. With no ztunnel connected there is
// nobody to tell and Del returns nil: the workload is absent from later snapshots.
func (s *Server) Del(ctx context.Context, uid string) error {
	s.mu.Lock()
	if e, ok := s.workloads[uid]; ok {
		if e.netns != nil {
			e.netns.Close()
		}
		delete(s.workloads, uid)
	}
	conns := slices.Clone(s.conns)
	s.mu.Unlock()
	req := &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Del{Del: &zdsapi.DelWorkload{Uid: uid}}}
	var errs []error
	for _, c := range conns {
		err := s.exchange(ctx, c, req, -1)
		switch {
		case err == nil:
		case errors.Is(err, ErrNACK):
			errs = append(errs, err)
		default:
			// The connection is dropped (or was already dead, say just after ztunnel
			// restarted): whoever reconnects gets a snapshot without uid, so the delete
			// holds for it as well.
			s.log.Info("ztunnel connection lost during a delete; its successor's snapshot omits the workload", "uid", uid, "err", err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("deleting workload %q: %w", uid, err)
	}
	return nil
}

// record stores w with a duplicate of its netns.
func (s *Server) record(w Workload) error {
	if w.UID == "" {
		return errors.New("workload without a uid")
	}
	e := &entry{info: proto.CloneOf(w.Info)}
	if w.Netns != nil {
		fd, err := unix.FcntlInt(w.Netns.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("duplicating netns fd: %w", err)
		}
		e.netns = os.NewFile(uintptr(fd), "netns:"+w.UID)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		if e.netns != nil {
			e.netns.Close()
		}
		return ErrServerClosed
	}
	if old, ok := s.workloads[w.UID]; ok && old.netns != nil {
		old.netns.Close()
	}
	s.workloads[w.UID] = e
	return nil
}

func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// serverConn is one ztunnel connection. sem serialises request/ack exchanges: acks are
// matched to requests only by order.
type serverConn struct {
	c    *net.UnixConn
	sem  chan struct{}
	done chan struct{} // closed by close
	once sync.Once
	buf  [MaxMessageSize]byte
}

func (c *serverConn) isClosed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *serverConn) close() {
	c.once.Do(func() {
		close(c.done)
		c.c.Close()
	})
}

// acquire takes c's exchange slot.
func (c *serverConn) acquire(ctx context.Context) error {
	select {
	case c.sem <- struct{}{}:
		return nil
	case <-c.done:
		return errors.New("ztunnel connection closed")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *serverConn) release() { <-c.sem }

// snapshotItem is one workload of a replay, with its own netns duplicate so a concurrent
// Del cannot close the fd being sent.
type snapshotItem struct {
	uid   string
	info  *zdsapi.WorkloadInfo
	netns *os.File
}

// serve runs one connection: hello, snapshot, then keepalive probes between exchanges.
func (s *Server) serve(c *serverConn) {
	defer func() {
		c.close()
		s.mu.Lock()
		delete(s.all, c)
		s.mu.Unlock()
	}()
	log := s.log.With("conn", fmt.Sprintf("%p", c))
	if err := s.readHello(c); err != nil {
		log.Warn("zds connection without hello", "err", err)
		return
	}
	// Register the connection and take the snapshot atomically, holding its exchange
	// slot: an Add or Del that sees this connection is sent after the snapshot, and one
	// that doesn't has already changed the state the snapshot is built from.
	c.sem <- struct{}{}
	snap, err := s.register(c)
	if err != nil {
		c.release()
		return
	}
	defer s.unregister(c)
	log.Info("ztunnel connected", "workloads", len(snap))
	err = s.sendSnapshot(c, snap, log)
	c.release()
	if err != nil {
		if s.ctx.Err() == nil {
			log.Warn("zds snapshot not delivered; dropping connection", "err", err)
		}
		return
	}
	t := time.NewTicker(s.opts.Keepalive)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		if err := s.probe(c); err != nil {
			if s.ctx.Err() == nil {
				log.Info("ztunnel disconnected", "reason", err)
			}
			return
		}
	}
}

func (s *Server) readHello(c *serverConn) error {
	if err := c.c.SetReadDeadline(time.Now().Add(s.opts.AckTimeout)); err != nil {
		return err
	}
	b, fds, err := readMsg(c.c, c.buf[:], oobBuffer())
	closeFDs(fds)
	if err != nil {
		return fmt.Errorf("reading hello: %w", err)
	}
	var h zdsapi.ZdsHello
	if err := proto.Unmarshal(b, &h); err != nil {
		return fmt.Errorf("decoding hello: %w", err)
	}
	if h.Version != zdsapi.Version_V1 {
		return fmt.Errorf("hello with unsupported version %v", h.Version)
	}
	return nil
}

func (s *Server) register(c *serverConn) ([]snapshotItem, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrServerClosed
	}
	s.conns = append(s.conns, c)
	s.notifyLocked()
	snap := make([]snapshotItem, 0, len(s.workloads))
	for _, uid := range slices.Sorted(maps.Keys(s.workloads)) {
		e := s.workloads[uid]
		it := snapshotItem{uid: uid, info: e.info}
		if e.netns != nil {
			fd, err := unix.FcntlInt(e.netns.Fd(), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				s.log.Warn("zds netns not duplicated; replaying as keep", "uid", uid, "err", err)
			} else {
				it.netns = os.NewFile(uintptr(fd), "netns:"+uid)
			}
		}
		snap = append(snap, it)
	}
	return snap, nil
}

// drop closes c and forgets it at once, so the next Add picks another connection.
func (s *Server) drop(c *serverConn) {
	c.close()
	s.unregister(c)
}

func (s *Server) unregister(c *serverConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.Index(s.conns, c); i >= 0 {
		s.conns = slices.Delete(s.conns, i, i+1)
		s.notifyLocked()
	}
}

// sendSnapshot replays snap then SnapshotSent; c's slot is held. A NACK of one workload
// is logged and the replay goes on, as Istio's does; a failed exchange ends it.
func (s *Server) sendSnapshot(c *serverConn, snap []snapshotItem, log *slog.Logger) error {
	defer func() {
		for _, it := range snap {
			if it.netns != nil {
				it.netns.Close()
			}
		}
	}()
	for _, it := range snap {
		req := &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Keep{Keep: &zdsapi.KeepWorkload{Uid: it.uid}}}
		fd := -1
		if it.netns != nil {
			req = &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: it.uid, WorkloadInfo: it.info}}}
			fd = int(it.netns.Fd())
		}
		err := s.exchangeLocked(c, req, fd)
		if errors.Is(err, ErrNACK) {
			log.Warn("ztunnel rejected a replayed workload", "uid", it.uid, "err", err)
			continue
		}
		if err != nil {
			return err
		}
	}
	err := s.exchangeLocked(c, &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_SnapshotSent{SnapshotSent: &zdsapi.SnapshotSent{}}}, -1)
	if errors.Is(err, ErrNACK) {
		log.Warn("ztunnel rejected the snapshot", "err", err)
		return nil
	}
	return err
}

// exchange sends req (with fd, if not negative) on c and waits for its ack.
func (s *Server) exchange(ctx context.Context, c *serverConn, req *zdsapi.WorkloadRequest, fd int) error {
	if err := c.acquire(ctx); err != nil {
		return fmt.Errorf("waiting to send: %w", err)
	}
	defer c.release()
	return s.exchangeLocked(c, req, fd)
}

// exchangeLocked is exchange with c's slot held. Any failure other than a NACK closes
// the connection: after a write error or a missing ack, later acks cannot be matched.
func (s *Server) exchangeLocked(c *serverConn, req *zdsapi.WorkloadRequest, fd int) error {
	deadline := time.Now().Add(s.opts.AckTimeout)
	err := writeMsg(c.c, req, fd, deadline)
	if err == nil {
		err = c.c.SetReadDeadline(deadline)
	}
	var b []byte
	if err == nil {
		var fds []int
		b, fds, err = readMsg(c.c, c.buf[:], oobBuffer())
		closeFDs(fds)
		if err != nil {
			err = fmt.Errorf("waiting for ack: %w", err)
		}
	}
	if err != nil {
		s.drop(c)
		return err
	}
	var resp zdsapi.WorkloadResponse
	if err := proto.Unmarshal(b, &resp); err != nil {
		s.drop(c)
		return fmt.Errorf("decoding ack: %w", err)
	}
	ack := resp.GetAck()
	if ack == nil {
		s.drop(c)
		return errors.New("ztunnel answered without an ack")
	}
	if ack.GetError() != "" {
		return fmt.Errorf("%w: %s", ErrNACK, ack.GetError())
	}
	return nil
}

// probe checks an idle connection with a short read that must time out: ztunnel sends
// nothing unprompted, so data is a protocol error and EOF means it left.
func (s *Server) probe(c *serverConn) error {
	select {
	case c.sem <- struct{}{}:
	default:
		return nil // an exchange is in flight: it will notice a dead peer itself
	}
	defer c.release()
	if err := c.c.SetReadDeadline(time.Now().Add(10 * time.Millisecond)); err != nil {
		return err
	}
	_, fds, err := readMsg(c.c, c.buf[:], oobBuffer())
	closeFDs(fds)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil
	case err == nil:
		return errors.New("protocol error: unsolicited message")
	case errors.Is(err, io.EOF):
		return io.EOF
	}
	return err
}

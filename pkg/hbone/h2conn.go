package hbone

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The HTTP/2 engine of both sides. One conn per TLS connection: one reader goroutine reads
// and dispatches every frame; any goroutine that sends (a Stream's Write, a server's
// response) encodes its frames under the write mutex and writes them itself, one flush per
// call. Control frames decided by goroutines that must never block on the write mutex
// (the reader, a Read returning flow-control credit, timers) are queued, encoded, and
// written by whichever goroutine holds or next takes the mutex.

// Settings we announce besides the windows and sizes of dialer.go (x/net's defaults,
// which the previous implementation announced).
const (
	serverMaxStreams        = 250
	headerTableSize         = 4096
	serverMaxHeaderListSize = MaxHeaderListSize + 10*32 // x/net pads net/http's limit for 10 fields
	initialWindow           = 65535                     // RFC 9113 initial windows
	maxWindow               = 1<<31 - 1
	maxStreamID             = 1<<31 - 1
	// maxWriteChunk bounds the DATA written in one hold of the write mutex: with its TLS
	// records it fits one batch of batchedTLS, so it leaves in one write syscall (a copy
	// buffer's 256 KiB Write is one frame, one syscall).
	maxWriteChunk = 256 << 10
	// smallWrite is the largest DATA payload copied into the write buffer; larger ones are
	// handed to TLS as they are.
	smallWrite = 32 << 10
	// maxQueuedControl bounds the control frames waiting for the write side (a peer that
	// floods PINGs without reading is cut off).
	maxQueuedControl = 10000
	// goAwayGrace is how long a drained server connection stays open after its GOAWAY for
	// the client to close first (closing with unread data in flight would reset the TCP
	// connection before the client read the GOAWAY).
	goAwayGrace = time.Second
)

var (
	errKeepaliveTimeout = errors.New("hbone connection: keepalive PING not answered")
	errTooManyControl   = errors.New("hbone connection: too many control frames queued")
)

// h2Error is a connection error: the conn sends GOAWAY with code and closes.
type h2Error struct {
	code   http2.ErrCode
	reason string
}

func (e h2Error) Error() string { return fmt.Sprintf("http2 %v: %s", e.code, e.reason) }

// streamRequest is a request a server conn parsed from HEADERS, for its Server.
type streamRequest struct {
	method, authority string
	header            http.Header
	// status, if not zero, refuses the request with this status before any Handler sees
	// it (malformed in a way HTTP answers, not one HTTP/2 resets), err saying why.
	status int
	err    error
}

type conn struct {
	nc     net.Conn // TLS; a *batchedTLS outside tests
	server bool

	br  *bufio.Reader
	rfr *http2.Framer // read side: the reader goroutine's only

	// The write side.
	wmu    sync.Mutex
	wb     writeBuf
	wfr    *http2.Framer // writes into wb
	henc   *hpack.Encoder
	hbuf   bytes.Buffer
	werr   error  // sticky write error
	tables uint32 // the peer's header table size applied to henc

	ctlMu      sync.Mutex
	ctl        []byte
	ctlFr      *http2.Framer // writes into ctl
	ctlN       int
	ctlPending atomic.Bool

	mu                sync.Mutex
	streams           map[uint32]*stream
	active            int    // streams in c.streams
	reserved          int    // client: slots reserved by reserve and not yet opened
	nextID            uint32 // client: the next stream's id
	maxPeerID         uint32 // server: the highest stream id the client used
	peerMaxStreams    uint32
	peerInitWindow    int64
	peerMaxFrame      uint32
	peerMaxHeaderList uint32
	peerTableSize     uint32
	sendWindow        int64         // connection window for what we send
	winWake           chan struct{} // closed when a send window grows; nil if nobody waits
	recvWindow        int64         // what the peer may still send on the connection
	recvUnacked       int64         // consumed, not yet returned to the peer
	goAwayRecv        bool
	goAwaySent        bool
	closed            bool
	err               error
	pinging           bool
	pingData          [8]byte
	pings             uint64
	kaSeen            uint64

	sawSettings bool // reader goroutine only
	canon       map[string]string

	frames      atomic.Uint64 // frames received, for keepalive
	ka          *time.Timer
	kaInterval  time.Duration
	kaTimeout   time.Duration
	done        chan struct{} // closed by close
	readDone    chan struct{} // closed when the reader goroutine returns
	onStream    func(st *stream, req *streamRequest)
	onDrained   func() // optional: the conn closed itself because drained
	closeTimer  *time.Timer
	maxListSize uint32 // the header list size we accept
}

func newConn(nc net.Conn, server bool) *conn {
	c := &conn{
		nc:                nc,
		server:            server,
		br:                bufio.NewReaderSize(nc, 4<<10),
		streams:           map[uint32]*stream{},
		nextID:            1,
		peerMaxStreams:    DefaultMaxStreamsPerConn, // until the peer's SETTINGS, as x/net
		peerInitWindow:    initialWindow,
		peerMaxFrame:      16 << 10,
		peerMaxHeaderList: 0, // unlimited until announced
		peerTableSize:     headerTableSize,
		tables:            headerTableSize,
		sendWindow:        initialWindow,
		kaInterval:        KeepaliveInterval,
		kaTimeout:         KeepaliveTimeout,
		done:              make(chan struct{}),
		readDone:          make(chan struct{}),
	}
	c.maxListSize = MaxHeaderListSize
	if server {
		c.maxListSize = serverMaxHeaderListSize
	}
	c.rfr = http2.NewFramer(nil, c.br)
	c.rfr.SetMaxReadFrameSize(MaxFrameSize)
	c.rfr.ReadMetaHeaders = hpack.NewDecoder(headerTableSize, nil)
	c.rfr.MaxHeaderListSize = c.maxListSize
	c.wfr = http2.NewFramer(&c.wb, nil)
	c.ctlFr = http2.NewFramer(ctlWriter{c}, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c
}

// startClient sends the client preface and starts the reader goroutine.
func (c *conn) startClient() error {
	c.mu.Lock()
	c.recvWindow = initialWindow + ConnWindow
	c.mu.Unlock()
	c.wmu.Lock()
	c.wb.Write([]byte(http2.ClientPreface))
	c.wfr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: StreamWindow},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: MaxFrameSize},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: MaxHeaderListSize},
	)
	c.wfr.WriteWindowUpdate(0, ConnWindow)
	err := c.flushLocked(nil)
	c.unlockWrite()
	if err != nil {
		return err
	}
	c.startKeepalive()
	go c.readLoop()
	return nil
}

// startServer sends the server's preface (SETTINGS and the connection's window).
func (c *conn) startServer() error {
	c.mu.Lock()
	c.recvWindow = ConnWindow
	c.mu.Unlock()
	c.wmu.Lock()
	c.wfr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: MaxFrameSize},
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: serverMaxStreams},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: serverMaxHeaderListSize},
		http2.Setting{ID: http2.SettingHeaderTableSize, Val: headerTableSize},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: StreamWindow},
	)
	c.wfr.WriteWindowUpdate(0, ConnWindow-initialWindow)
	err := c.flushLocked(nil)
	c.unlockWrite()
	return err
}

// serve runs a server connection after startServer: it reads the client's preface (before
// prefaceDeadline) and then frames until the connection ends, and closes it.
func (c *conn) serve(prefaceDeadline time.Time) error {
	defer close(c.readDone)
	_ = c.nc.SetReadDeadline(prefaceDeadline)
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.br, preface); err != nil || string(preface) != http2.ClientPreface {
		if err == nil {
			err = errors.New("bad client preface")
		}
		err = fmt.Errorf("reading the http2 preface: %w", err)
		c.close(err)
		return err
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	c.startKeepalive()
	err := c.readFrames()
	c.close(err)
	return err
}

func (c *conn) readLoop() {
	defer close(c.readDone)
	c.close(c.readFrames())
}

// close ends the connection and fails its streams with err. It is idempotent.
func (c *conn) close(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed, c.err = true, err
	streams := make([]*stream, 0, len(c.streams))
	for _, st := range c.streams {
		streams = append(streams, st)
	}
	clear(c.streams)
	c.wakeWritersLocked()
	if c.ka != nil {
		c.ka.Stop()
	}
	if c.closeTimer != nil {
		c.closeTimer.Stop()
	}
	c.mu.Unlock()
	close(c.done)
	c.nc.Close()
	for _, st := range streams {
		st.fail(connError{err})
	}
}

// Close closes the connection.
func (c *conn) Close() error {
	c.close(nil)
	return nil
}

func (c *conn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// closeErr is why the connection closed.
func (c *conn) closeErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return connError{c.err}
}

// closeDrained closes a connection that went away and has no stream left.
func (c *conn) closeDrained() {
	if !c.server {
		c.close(nil)
		return
	}
	c.mu.Lock()
	if !c.closed && c.closeTimer == nil {
		c.closeTimer = time.AfterFunc(goAwayGrace, func() { c.close(nil) })
	}
	c.mu.Unlock()
}

// drainedLocked reports whether the connection should close: it went away (either side)
// and has no stream left.
func (c *conn) drainedLocked() bool {
	return (c.goAwayRecv || c.goAwaySent) && c.active == 0 && c.reserved == 0 && !c.closed
}

// shutdown sends GOAWAY (server): no stream above the last one seen will be processed;
// the connection closes once the others ended.
func (c *conn) shutdown() {
	c.mu.Lock()
	if c.closed || c.goAwaySent {
		c.mu.Unlock()
		return
	}
	c.goAwaySent = true
	last := c.maxPeerID
	drained := c.drainedLocked()
	c.mu.Unlock()
	c.queueCtl(func(fr *http2.Framer) error { return fr.WriteGoAway(last, http2.ErrCodeNo, nil) })
	c.tryFlushCtl()
	if drained {
		c.closeDrained()
	}
}

// ---- the write side ----

// writeBuf gathers frames between flushes in a pooled buffer, released at each flush.
type writeBuf struct{ b *[]byte }

var writeBufPool = sync.Pool{New: func() any { b := make([]byte, 0, smallWrite+1<<10); return &b }}

func (w *writeBuf) Write(p []byte) (int, error) {
	if w.b == nil {
		w.b = writeBufPool.Get().(*[]byte)
	}
	*w.b = append(*w.b, p...)
	return len(p), nil
}

func (w *writeBuf) bytes() []byte {
	if w.b == nil {
		return nil
	}
	return *w.b
}

func (w *writeBuf) reset() {
	if w.b == nil {
		return
	}
	if cap(*w.b) <= 4*smallWrite {
		*w.b = (*w.b)[:0]
		writeBufPool.Put(w.b)
	}
	w.b = nil
}

type ctlWriter struct{ c *conn }

func (w ctlWriter) Write(p []byte) (int, error) {
	w.c.ctl = append(w.c.ctl, p...)
	return len(p), nil
}

// flushLocked writes the buffered frames, then tail (a large DATA payload, written
// without a copy), in one write to the TLS connection. A write error closes the
// connection.
func (c *conn) flushLocked(tail []byte) error {
	if c.werr != nil {
		c.wb.reset()
		return c.werr
	}
	buf := c.wb.bytes()
	var err error
	switch {
	case len(tail) > 0:
		if bt, ok := c.nc.(*batchedTLS); ok {
			err = bt.writeBatch(buf, tail)
		} else if _, err = c.nc.Write(buf); err == nil {
			_, err = c.nc.Write(tail)
		}
	case len(buf) > 0:
		_, err = c.nc.Write(buf)
	}
	c.wb.reset()
	if err != nil {
		c.werr = err
		c.close(fmt.Errorf("writing: %w", err))
	}
	return err
}

// unlockWrite releases the write mutex, first writing the control frames queued while it
// was held (their queuers could not take it).
func (c *conn) unlockWrite() {
	for {
		c.wmu.Unlock()
		if !c.ctlPending.Load() || !c.wmu.TryLock() {
			return
		}
		c.drainCtlLocked()
		c.flushLocked(nil)
	}
}

// queueCtl encodes a control frame for the write side. Then a goroutine other than the
// reader calls tryFlushCtl; the reader goroutine never writes to the connection (two
// readers blocked on full socket buffers would deadlock), it calls kickCtl before it
// blocks.
func (c *conn) queueCtl(write func(fr *http2.Framer) error) {
	c.ctlMu.Lock()
	_ = write(c.ctlFr)
	c.ctlN++
	over := c.ctlN > maxQueuedControl
	c.ctlPending.Store(true)
	c.ctlMu.Unlock()
	if over {
		c.close(errTooManyControl)
	}
}

// tryFlushCtl writes the queued control frames unless another goroutine holds the write
// mutex (which then writes them when it lets go).
func (c *conn) tryFlushCtl() {
	if !c.ctlPending.Load() || !c.wmu.TryLock() {
		return
	}
	c.drainCtlLocked()
	c.flushLocked(nil)
	c.unlockWrite()
}

// kickCtl is the reader goroutine's tryFlushCtl: if nobody holds the write mutex, a
// short-lived goroutine takes it over and writes the queued control frames, so the reader
// never blocks on a write. (Rare: on streams in use, WINDOW_UPDATEs are written by the
// Reads that free the window.)
func (c *conn) kickCtl() {
	if !c.ctlPending.Load() || !c.wmu.TryLock() {
		return
	}
	go func() {
		c.drainCtlLocked()
		c.flushLocked(nil)
		c.unlockWrite()
	}()
}

func (c *conn) drainCtlLocked() {
	if !c.ctlPending.Load() {
		return
	}
	c.ctlMu.Lock()
	c.wb.Write(c.ctl)
	if cap(c.ctl) > 64<<10 {
		c.ctl = nil
	} else {
		c.ctl = c.ctl[:0]
	}
	c.ctlN = 0
	c.ctlPending.Store(false)
	c.ctlMu.Unlock()
}

func (c *conn) wakeWritersLocked() {
	if c.winWake != nil {
		close(c.winWake)
		c.winWake = nil
	}
}

// awaitSend waits for flow-control credit to send up to n bytes on st, and takes it.
func (c *conn) awaitSend(st *stream, n int) (int, error) {
	for {
		expired, _ := st.wrDead.wait()
		if isClosed(expired) {
			return 0, os.ErrDeadlineExceeded
		}
		c.mu.Lock()
		if err := st.writeErrLocked(); err != nil {
			c.mu.Unlock()
			return 0, err
		}
		if c.closed {
			err := connError{c.err}
			c.mu.Unlock()
			return 0, err
		}
		if w := min(c.sendWindow, st.sendWindow); w > 0 {
			k := min(int64(n), w, int64(c.peerMaxFrame), maxWriteChunk)
			c.sendWindow -= k
			st.sendWindow -= k
			c.mu.Unlock()
			return int(k), nil
		}
		if c.winWake == nil {
			c.winWake = make(chan struct{})
		}
		wake := c.winWake
		c.mu.Unlock()
		select {
		case <-wake:
		case <-expired:
			return 0, os.ErrDeadlineExceeded
		case <-st.done:
		case <-c.done:
		}
	}
}

// writeData writes p, for which the caller took credit, as one DATA frame of st.
func (c *conn) writeData(st *stream, p []byte) error {
	c.wmu.Lock()
	defer c.unlockWrite()
	c.mu.Lock()
	err := st.writeErrLocked()
	if err == nil && c.closed {
		err = connError{c.err}
	}
	if err != nil {
		c.sendWindow += int64(len(p)) // unused
		c.mu.Unlock()
		return err
	}
	c.mu.Unlock()
	c.drainCtlLocked()
	n := len(p)
	id := st.id
	hdr := [9]byte{byte(n >> 16), byte(n >> 8), byte(n), byte(http2.FrameData), 0, byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}
	c.wb.Write(hdr[:])
	if n <= smallWrite {
		c.wb.Write(p)
		return c.flushLocked(nil)
	}
	return c.flushLocked(p)
}

// endStream queues END_STREAM (an empty DATA frame) for st, after what it wrote.
func (c *conn) endStream(st *stream) error {
	c.mu.Lock()
	if st.localEnded || st.resetSent || st.finished {
		c.mu.Unlock()
		return nil
	}
	if c.closed {
		err := connError{c.err}
		c.mu.Unlock()
		return err
	}
	st.localEnded = true
	drained := false
	if st.remoteEnded {
		drained = c.finishLocked(st)
	}
	c.mu.Unlock()
	id := st.id
	c.queueCtl(func(fr *http2.Framer) error { return fr.WriteData(id, true, nil) })
	c.tryFlushCtl()
	if drained {
		c.closeDrained()
	}
	return nil
}

// resetStream queues RST_STREAM for st unless it is over; the caller flushes (see
// queueCtl).
func (c *conn) resetStream(st *stream, code http2.ErrCode) {
	c.mu.Lock()
	if st.finished || c.closed {
		c.mu.Unlock()
		return
	}
	st.resetSent = true
	drained := c.finishLocked(st)
	c.mu.Unlock()
	id := st.id
	c.queueCtl(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
	if drained {
		c.closeDrained()
	}
}

// finishLocked removes st from the connection and reports whether the connection is now
// drained.
func (c *conn) finishLocked(st *stream) bool {
	if st.finished {
		return false
	}
	st.finished = true
	if c.streams[st.id] == st {
		delete(c.streams, st.id)
		c.active--
	}
	return c.drainedLocked()
}

// consumed returns receive credit for n bytes a Read took from st, in WINDOW_UPDATEs
// once half a window was consumed.
func (c *conn) consumed(st *stream, n int) {
	c.mu.Lock()
	var connInc, stInc int64
	c.recvUnacked += int64(n)
	if c.recvUnacked >= ConnWindow/2 {
		connInc = c.recvUnacked
		c.recvWindow += connInc
		c.recvUnacked = 0
	}
	if !st.remoteEnded && !st.finished {
		st.recvUnacked += int64(n)
		if st.recvUnacked >= StreamWindow/2 {
			stInc = st.recvUnacked
			st.recvWindow += stInc
			st.recvUnacked = 0
		}
	}
	c.mu.Unlock()
	if connInc == 0 && stInc == 0 {
		return
	}
	id := st.id
	c.queueCtl(func(fr *http2.Framer) error {
		if connInc > 0 {
			fr.WriteWindowUpdate(0, uint32(connInc))
		}
		if stInc > 0 {
			fr.WriteWindowUpdate(id, uint32(stInc))
		}
		return nil
	})
	c.tryFlushCtl()
}

// returnConnCredit returns connection credit for n received bytes nobody will read.
func (c *conn) returnConnCredit(n int64) {
	if c.queueConnCredit(n) {
		c.tryFlushCtl()
	}
}

func (c *conn) queueConnCredit(n int64) bool {
	c.mu.Lock()
	c.recvUnacked += n
	var inc int64
	if c.recvUnacked >= ConnWindow/2 && !c.closed {
		inc = c.recvUnacked
		c.recvWindow += inc
		c.recvUnacked = 0
	}
	c.mu.Unlock()
	if inc == 0 {
		return false
	}
	c.queueCtl(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, uint32(inc)) })
	return true
}

// ---- the client side ----

// canTakeNewStream reports whether the connection can open one more stream.
func (c *conn) canTakeNewStream() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.canTakeLocked()
}

func (c *conn) canTakeLocked() bool {
	return !c.closed && !c.goAwayRecv && c.nextID+2*uint32(c.reserved) < maxStreamID &&
		int64(c.active+c.reserved) < int64(c.peerMaxStreams)
}

// reserve takes a slot for a stream the caller will open with openStream.
func (c *conn) reserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.canTakeLocked() {
		return false
	}
	c.reserved++
	return true
}

// openStream sends HEADERS opening a stream on a slot taken with reserve.
func (c *conn) openStream(fields []hpack.HeaderField, endStream bool) (*stream, error) {
	c.wmu.Lock()
	defer c.unlockWrite()
	c.mu.Lock()
	c.reserved--
	switch {
	case c.closed:
		err := connError{c.err}
		c.mu.Unlock()
		return nil, err
	case c.goAwayRecv:
		drained := c.drainedLocked()
		c.mu.Unlock()
		if drained {
			c.closeDrained()
		}
		return nil, errRefused
	}
	st := newStream(c, c.nextID)
	c.nextID += 2
	st.sendWindow = c.peerInitWindow
	st.recvWindow = StreamWindow
	st.resp = make(chan *response, 1)
	st.localEnded = endStream
	c.streams[st.id] = st
	c.active++
	maxList, table := c.peerMaxHeaderList, c.peerTableSize
	c.mu.Unlock()

	if maxList > 0 {
		var size uint32
		for _, f := range fields {
			size += f.Size()
		}
		if size > maxList {
			c.mu.Lock()
			drained := c.finishLocked(st)
			c.mu.Unlock()
			if drained {
				c.closeDrained()
			}
			return nil, fmt.Errorf("request header list of %d bytes exceeds the server's limit of %d", size, maxList)
		}
	}
	c.writeHeadersLocked(st.id, fields, endStream, table)
	if err := c.flushLocked(nil); err != nil {
		return nil, err
	}
	return st, nil
}

// writeHeadersLocked encodes a header block and buffers it as HEADERS and CONTINUATION
// frames.
func (c *conn) writeHeadersLocked(id uint32, fields []hpack.HeaderField, endStream bool, table uint32) {
	if table != c.tables {
		c.tables = table
		c.henc.SetMaxDynamicTableSizeLimit(table)
	}
	c.hbuf.Reset()
	for _, f := range fields {
		c.henc.WriteField(f)
	}
	c.drainCtlLocked()
	block := c.hbuf.Bytes()
	c.mu.Lock()
	max := int(c.peerMaxFrame)
	c.mu.Unlock()
	first := true
	for first || len(block) > 0 {
		frag := block[:min(len(block), max)]
		block = block[len(frag):]
		if first {
			c.wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: endStream, EndHeaders: len(block) == 0})
			first = false
		} else {
			c.wfr.WriteContinuation(id, len(block) == 0, frag)
		}
	}
}

// awaitResponse waits for the response HEADERS of a client stream.
func (st *stream) awaitResponse(done <-chan struct{}) (*response, error) {
	select {
	case r := <-st.resp:
		return r, nil
	case <-st.done:
		select {
		case r := <-st.resp:
			return r, nil
		default:
		}
		return nil, st.recv.error()
	case <-done:
		return nil, nil
	}
}

// ---- the server side ----

// respond sends the response HEADERS of a server stream; a status other than 200 ends
// the stream's sending side.
func (c *conn) respond(st *stream, status int) error {
	end := status != http.StatusOK
	c.wmu.Lock()
	defer c.unlockWrite()
	c.mu.Lock()
	err := st.writeErrLocked()
	if err == nil && c.closed {
		err = connError{c.err}
	}
	var drained bool
	if err == nil && end {
		st.localEnded = true
		if st.remoteEnded {
			drained = c.finishLocked(st)
		}
	}
	table := c.peerTableSize
	c.mu.Unlock()
	if err != nil {
		return err
	}
	c.writeHeadersLocked(st.id, []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}, end, table)
	err = c.flushLocked(nil)
	if drained {
		c.closeDrained()
	}
	return err
}

// ---- the reader ----

func (c *conn) readFrames() error {
	for {
		if c.br.Buffered() == 0 {
			c.kickCtl()
		}
		fh, err := c.rfr.ReadFrameHeader()
		if err != nil {
			return c.readError(err)
		}
		c.frames.Add(1)
		if !c.sawSettings && fh.Type != http2.FrameSettings {
			return c.readError(h2Error{http2.ErrCodeProtocol, "first frame is not SETTINGS"})
		}
		if fh.Type == http2.FrameData {
			if err := c.readData(fh); err != nil {
				return c.readError(err)
			}
			continue
		}
		f, err := c.rfr.ReadFrameForHeader(fh)
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.streamError(se.StreamID, se.Code, se)
				continue
			}
			return c.readError(err)
		}
		if err := c.processFrame(f); err != nil {
			return c.readError(err)
		}
	}
}

// readError turns a reading error into the connection's end, sending GOAWAY for a
// protocol violation.
func (c *conn) readError(err error) error {
	var (
		he h2Error
		ce http2.ConnectionError
	)
	switch {
	case errors.As(err, &he):
	case errors.As(err, &ce):
		he = h2Error{http2.ErrCode(ce), "connection error"}
		if d := c.rfr.ErrorDetail(); d != nil {
			he.reason = d.Error()
		}
	case errors.Is(err, http2.ErrFrameTooLarge):
		he = h2Error{http2.ErrCodeFrameSize, "frame too large"}
	default:
		return err
	}
	c.mu.Lock()
	last := c.maxPeerID
	c.mu.Unlock()
	c.queueCtl(func(fr *http2.Framer) error { return fr.WriteGoAway(last, he.code, []byte(he.reason)) })
	// The connection ends: the reader may write its GOAWAY, for a while.
	if c.wmu.TryLock() {
		_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		c.drainCtlLocked()
		c.flushLocked(nil)
		c.wmu.Unlock()
	}
	return he
}

// streamError resets stream id with code (a stream error of the peer's making).
func (c *conn) streamError(id uint32, code http2.ErrCode, cause error) {
	c.mu.Lock()
	st := c.streams[id]
	if c.server && id%2 == 1 && id > c.maxPeerID {
		c.maxPeerID = id
	}
	c.mu.Unlock()
	if st != nil {
		st.reset(code, fmt.Errorf("hbone stream protocol error: %w", cause))
		return
	}
	c.queueCtl(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
}

// idleLocked reports whether id names a stream that was never opened.
func (c *conn) idleLocked(id uint32) bool {
	if c.server {
		return id%2 == 0 || id > c.maxPeerID
	}
	return id%2 == 0 || id >= c.nextID
}

func (c *conn) processFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		return c.processSettings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			c.mu.Lock()
			if c.pinging && f.Data == c.pingData {
				c.pinging = false
			}
			c.mu.Unlock()
			return nil
		}
		data := f.Data
		c.queueCtl(func(fr *http2.Framer) error { return fr.WritePing(true, data) })
	case *http2.WindowUpdateFrame:
		return c.processWindowUpdate(f)
	case *http2.RSTStreamFrame:
		c.mu.Lock()
		st := c.streams[f.StreamID]
		if st == nil {
			idle := c.idleLocked(f.StreamID)
			c.mu.Unlock()
			if idle {
				return h2Error{http2.ErrCodeProtocol, "RST_STREAM on an idle stream"}
			}
			return nil
		}
		drained := c.finishLocked(st)
		c.mu.Unlock()
		var err error = resetError{code: f.ErrCode, remote: true}
		if f.ErrCode == http2.ErrCodeRefusedStream {
			err = fmt.Errorf("%w: %w", errRefused, err)
		}
		st.fail(err)
		if drained {
			c.closeDrained()
		}
	case *http2.GoAwayFrame:
		c.processGoAway(f)
	case *http2.MetaHeadersFrame:
		if c.server {
			return c.serverHeaders(f)
		}
		return c.clientHeaders(f)
	case *http2.PushPromiseFrame:
		return h2Error{http2.ErrCodeProtocol, "PUSH_PROMISE"}
	}
	// PRIORITY, PRIORITY_UPDATE and unknown frames are ignored.
	return nil
}

func (c *conn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if f.NumSettings() > 100 || f.HasDuplicates() {
		return h2Error{http2.ErrCodeProtocol, "bad SETTINGS"}
	}
	c.mu.Lock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerInitWindow
			for _, st := range c.streams {
				st.sendWindow += delta
				if st.sendWindow > maxWindow {
					return h2Error{http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE overflows a window"}
				}
			}
			c.peerInitWindow = int64(s.Val)
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = s.Val
		case http2.SettingMaxHeaderListSize:
			c.peerMaxHeaderList = s.Val
		case http2.SettingHeaderTableSize:
			c.peerTableSize = min(s.Val, headerTableSize)
		}
		return nil
	})
	c.wakeWritersLocked()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	c.sawSettings = true
	c.queueCtl(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
	return nil
}

func (c *conn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		if c.sendWindow > maxWindow {
			return h2Error{http2.ErrCodeFlowControl, "connection window overflow"}
		}
		c.wakeWritersLocked()
		return nil
	}
	st := c.streams[f.StreamID]
	if st == nil {
		if c.idleLocked(f.StreamID) {
			return h2Error{http2.ErrCodeProtocol, "WINDOW_UPDATE on an idle stream"}
		}
		return nil
	}
	st.sendWindow += int64(f.Increment)
	if st.sendWindow > maxWindow {
		st.resetSent = true
		drained := c.finishLocked(st)
		id := st.id
		c.mu.Unlock()
		c.queueCtl(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeFlowControl) })
		st.fail(resetError{code: http2.ErrCodeFlowControl})
		if drained {
			c.closeDrained()
		}
		c.mu.Lock()
		return nil
	}
	c.wakeWritersLocked()
	return nil
}

func (c *conn) processGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	c.goAwayRecv = true
	var refused []*stream
	if !c.server {
		for id, st := range c.streams {
			if id > f.LastStreamID {
				refused = append(refused, st)
				st.finished = true
				delete(c.streams, id)
				c.active--
			}
		}
	}
	drained := c.drainedLocked()
	c.mu.Unlock()
	for _, st := range refused {
		st.fail(fmt.Errorf("%w (GOAWAY %v)", errRefused, f.ErrCode))
	}
	if drained {
		c.closeDrained()
	}
}

// readData reads a DATA frame's payload straight into its stream's buffer.
func (c *conn) readData(fh http2.FrameHeader) error {
	id := fh.StreamID
	if id == 0 {
		return h2Error{http2.ErrCodeProtocol, "DATA on stream 0"}
	}
	length := int64(fh.Length)
	data := int(fh.Length)
	pad := 0
	if fh.Flags.Has(http2.FlagDataPadded) {
		if data == 0 {
			return h2Error{http2.ErrCodeProtocol, "DATA padding length missing"}
		}
		b, err := c.br.ReadByte()
		if err != nil {
			return err
		}
		pad = int(b)
		data--
		if pad > data {
			return h2Error{http2.ErrCodeProtocol, "DATA padding longer than the payload"}
		}
		data -= pad
	}
	c.mu.Lock()
	if length > c.recvWindow {
		c.mu.Unlock()
		return h2Error{http2.ErrCodeFlowControl, "connection window exceeded"}
	}
	c.recvWindow -= length
	st := c.streams[id]
	var code http2.ErrCode
	deliver := false
	switch {
	case st == nil:
		if c.idleLocked(id) {
			c.mu.Unlock()
			return h2Error{http2.ErrCodeProtocol, "DATA on an idle stream"}
		}
	case st.remoteEnded:
		code = http2.ErrCodeStreamClosed
	case length > st.recvWindow:
		code = http2.ErrCodeFlowControl
	default:
		st.recvWindow -= length
		deliver = true
	}
	c.mu.Unlock()
	if !deliver {
		if _, err := io.CopyN(io.Discard, c.br, int64(data+pad)); err != nil {
			return err
		}
		c.queueConnCredit(length)
		if st != nil {
			st.reset(code, resetError{code: code})
		}
		return nil
	}
	dropped, err := st.recv.fill(c.br, data)
	if err != nil {
		return err
	}
	if pad > 0 {
		if _, err := io.CopyN(io.Discard, c.br, int64(pad)); err != nil {
			return err
		}
	}
	if padding := length - int64(data); padding > 0 || dropped > 0 {
		// Padding, and bytes of a stream closed locally, are never read: their
		// connection credit returns now (and the padding's stream credit).
		c.queueConnCredit(padding + int64(dropped))
		if padding > 0 {
			c.mu.Lock()
			st.recvWindow += padding
			c.mu.Unlock()
			c.queueCtl(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(id, uint32(padding)) })
		}
	}
	if fh.Flags.Has(http2.FlagDataEndStream) {
		c.remoteEnd(st)
	}
	return nil
}

// remoteEnd records the peer's END_STREAM on st.
func (c *conn) remoteEnd(st *stream) {
	c.mu.Lock()
	st.remoteEnded = true
	drained := false
	if st.localEnded {
		drained = c.finishLocked(st)
	}
	c.mu.Unlock()
	st.recv.setErr(io.EOF)
	if drained {
		c.closeDrained()
	}
}

func (c *conn) clientHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	st := c.streams[id]
	idle := st == nil && c.idleLocked(id)
	c.mu.Unlock()
	if idle {
		return h2Error{http2.ErrCodeProtocol, "HEADERS on an idle stream"}
	}
	if st == nil {
		return nil
	}
	if len(st.resp) > 0 || st.gotResponse {
		// Trailers.
		if !f.StreamEnded() {
			st.reset(http2.ErrCodeProtocol, errors.New("hbone stream: HEADERS after the response without END_STREAM"))
			return nil
		}
		c.remoteEnd(st)
		return nil
	}
	if f.Truncated {
		st.reset(http2.ErrCodeProtocol, errors.New("hbone response header list too long"))
		return nil
	}
	code, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || code < 100 || code > 999 {
		st.reset(http2.ErrCodeProtocol, fmt.Errorf("hbone response with malformed :status %q", f.PseudoValue("status")))
		return nil
	}
	if code < 200 {
		if f.StreamEnded() {
			st.reset(http2.ErrCodeProtocol, errors.New("hbone informational response ends the stream"))
		}
		return nil // 1xx: the response follows
	}
	st.gotResponse = true
	st.resp <- &response{status: code, header: c.header(f.RegularFields())}
	if f.StreamEnded() {
		c.remoteEnd(st)
	}
	return nil
}

// header builds an http.Header from header fields, canonicalizing names with a bounded
// cache.
func (c *conn) header(fields []hpack.HeaderField) http.Header {
	h := make(http.Header, len(fields))
	for _, f := range fields {
		k, ok := c.canon[f.Name]
		if !ok {
			k = textproto.CanonicalMIMEHeaderKey(f.Name)
			if len(c.canon) < 64 {
				if c.canon == nil {
					c.canon = map[string]string{}
				}
				c.canon[f.Name] = k
			}
		}
		h[k] = append(h[k], f.Value)
	}
	return h
}

// connHeaders are the connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2).
var connHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade"}

func (c *conn) serverHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 != 1 {
		return h2Error{http2.ErrCodeProtocol, "HEADERS with an even stream id"}
	}
	c.mu.Lock()
	if st := c.streams[id]; st != nil {
		c.mu.Unlock()
		// Trailers.
		switch {
		case st.remoteEnded:
			st.reset(http2.ErrCodeStreamClosed, resetError{code: http2.ErrCodeStreamClosed})
		case !f.StreamEnded():
			st.reset(http2.ErrCodeProtocol, errors.New("hbone stream: trailers without END_STREAM"))
		default:
			c.remoteEnd(st)
		}
		return nil
	}
	if id <= c.maxPeerID {
		c.mu.Unlock()
		return h2Error{http2.ErrCodeProtocol, "HEADERS reuse a stream id"}
	}
	c.maxPeerID = id
	switch {
	case c.goAwaySent || c.closed:
		c.mu.Unlock()
		return nil // above the GOAWAY's last stream: ignored
	case c.active >= serverMaxStreams:
		c.mu.Unlock()
		c.queueCtl(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) })
		return nil
	}
	method, scheme := f.PseudoValue("method"), f.PseudoValue("scheme")
	authority, path := f.PseudoValue("authority"), f.PseudoValue("path")
	if f.PseudoValue("protocol") != "" ||
		method == "CONNECT" && (path != "" || scheme != "" || authority == "") ||
		method != "CONNECT" && (method == "" || path == "" || scheme != "https" && scheme != "http" || path[0] != '/' && path != "*") ||
		(scheme == "http" || scheme == "https") && strings.IndexByte(authority, '@') >= 0 {
		c.mu.Unlock()
		c.queueCtl(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeProtocol) })
		return nil
	}
	st := newStream(c, id)
	st.sendWindow = c.peerInitWindow
	st.recvWindow = StreamWindow
	st.remoteEnded = f.StreamEnded()
	c.streams[id] = st
	c.active++
	c.mu.Unlock()
	if st.remoteEnded {
		st.recv.setErr(io.EOF)
	}
	req := &streamRequest{method: method, authority: authority, header: c.header(f.RegularFields())}
	if authority == "" {
		req.authority = req.header.Get("Host")
	}
	switch {
	case f.Truncated:
		req.status, req.err = http.StatusRequestHeaderFieldsTooLarge, errors.New("request header list too long")
	default:
		for _, k := range connHeaders {
			if _, ok := req.header[k]; ok {
				req.status, req.err = http.StatusBadRequest, fmt.Errorf("request header %q is not valid in HTTP/2", k)
			}
		}
		if te := req.header["Te"]; len(te) > 1 || len(te) == 1 && te[0] != "trailers" && te[0] != "" {
			req.status, req.err = http.StatusBadRequest, errors.New(`request header "TE" may only be "trailers" in HTTP/2`)
		}
	}
	c.onStream(st, req)
	return nil
}

// ---- keepalive ----

func (c *conn) startKeepalive() {
	if c.kaInterval <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.kaSeen = c.frames.Load()
	c.ka = time.AfterFunc(c.kaInterval, c.keepalive)
}

// keepalive runs every kaInterval while frames arrive; after a silent interval it sends a
// PING, and closes the connection if the PING has no ack kaTimeout later.
func (c *conn) keepalive() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	seen := c.frames.Load()
	switch {
	case c.pinging:
		c.mu.Unlock()
		c.close(errKeepaliveTimeout)
		return
	case seen != c.kaSeen:
		c.kaSeen = seen
		c.ka.Reset(c.kaInterval)
		c.mu.Unlock()
		return
	}
	c.pings++
	c.pinging = true
	c.pingData = [8]byte{'h', 'b', byte(c.pings >> 40), byte(c.pings >> 32), byte(c.pings >> 24), byte(c.pings >> 16), byte(c.pings >> 8), byte(c.pings)}
	data := c.pingData
	c.ka.Reset(c.kaTimeout)
	c.mu.Unlock()
	c.queueCtl(func(fr *http2.Framer) error { return fr.WritePing(false, data) })
	c.tryFlushCtl()
}

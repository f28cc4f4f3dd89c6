package hbone

// The connection's lifecycle: the settings we announce, the conn type, its prefaces,
// its reader goroutine's start, and its close. The other h2*.go files hold the rest of the
// engine: h2read.go (frame dispatch), h2write.go (the write mutex and control-frame queue),
// h2flow.go (flow control), h2client.go and h2server.go (each side's HEADERS), h2drain.go
// (GOAWAY, draining and keepalive), h2errors.go (its errors) and h2stream.go (streams).

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

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
	// maxCombined bounds the frames senders leave in the write buffer for the goroutine
	// that flushes them together (see flushCombinedLocked).
	maxCombined = 64 << 10
	// maxQueuedControl bounds the control frames waiting for the write side (a peer that
	// floods PINGs without reading is cut off).
	maxQueuedControl = 10000
	// goAwayGrace is how long a drained server connection stays open after its GOAWAY for
	// the client to close first (closing with unread data in flight would reset the TCP
	// connection before the client read the GOAWAY).
	goAwayGrace = time.Second
)

// conn is the HTTP/2 engine of both sides, one per TLS connection: one reader goroutine
// reads and dispatches every frame; any goroutine that sends (a Stream's Write, a server's
// response) encodes its frames under the write mutex and writes them itself, one flush per
// call (small DATA frames of senders running at once share one). Control frames decided by
// goroutines that must never block on the write mutex (the reader, a Read returning
// flow-control credit, timers) are queued, encoded, and written by whichever goroutine
// holds or next takes the mutex.
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
	// combining: a sender buffered frames and yields before flushing them (and any that
	// others buffer meanwhile); see flushCombinedLocked.
	combining bool

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

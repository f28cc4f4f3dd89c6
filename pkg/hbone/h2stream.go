package hbone

// The streams of the HTTP/2 engine: a stream's Read, Write, half-close and close, and its
// receive buffer, which the reader goroutine fills.

import (
	"context"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http2"
)

// stream is one HTTP/2 stream of a conn, client or server side: a full-duplex byte stream
// with net.Conn deadlines and half-close. Its protocol state (windows, ends) is guarded by
// the conn's mu; its receive buffer by its own.
type stream struct {
	c  *conn
	id uint32

	// guarded by c.mu
	sendWindow  int64 // bytes we may send
	recvWindow  int64 // bytes the peer may still send
	recvUnacked int64 // bytes consumed and not yet returned to the peer
	localEnded  bool  // END_STREAM sent (or queued)
	remoteEnded bool  // END_STREAM received
	resetSent   bool  // RST_STREAM sent (or queued)
	finished    bool  // no longer in c.streams

	// the client's response, set once by the reader goroutine
	resp        chan *response
	gotResponse bool // reader goroutine only

	wrMu   sync.Mutex // serializes Writes
	recv   recvBuf
	rdDead *deadline
	wrDead *deadline

	done     chan struct{} // closed when the stream fails or is closed locally
	doneOnce sync.Once
	ctx      context.Context // a server stream's context, ended with the stream; nil on the client
	cancel   context.CancelFunc
	closed   atomic.Bool // Close was called
}

// response is a client stream's response HEADERS.
type response struct {
	status int
	header map[string][]string
}

func newStream(c *conn, id uint32) *stream {
	return &stream{
		c:      c,
		id:     id,
		rdDead: newDeadline(),
		wrDead: newDeadline(),
		done:   make(chan struct{}),
		recv:   recvBuf{wake: make(chan struct{}, 1)},
	}
}

// fail ends the stream with err: Reads return err once the buffer is drained, Writes fail.
func (st *stream) fail(err error) {
	st.recv.setErr(err)
	st.doneOnce.Do(func() { close(st.done) })
	if st.cancel != nil {
		st.cancel()
	}
}

// Read reads the peer's bytes; io.EOF after its END_STREAM.
func (st *stream) Read(p []byte) (int, error) {
	if st.closed.Load() {
		return 0, net.ErrClosed
	}
	for {
		expired, _ := st.rdDead.wait()
		if isClosed(expired) {
			return 0, os.ErrDeadlineExceeded
		}
		n, err := st.recv.read(p)
		if n > 0 {
			st.c.consumed(st, n)
			return n, nil
		}
		if err != nil {
			if st.closed.Load() {
				return 0, net.ErrClosed
			}
			return 0, err
		}
		if len(p) == 0 {
			return 0, nil
		}
		select {
		case <-st.recv.wake:
		case <-expired:
			return 0, os.ErrDeadlineExceeded
		}
	}
}

// Write sends p as DATA frames; it returns once they were written to the connection.
func (st *stream) Write(p []byte) (int, error) {
	st.wrMu.Lock()
	defer st.wrMu.Unlock()
	if len(p) == 0 {
		return 0, st.writeErr()
	}
	var n int
	for len(p) > 0 {
		k, err := st.c.awaitSend(st, len(p))
		if err != nil {
			return n, err
		}
		if err := st.c.writeData(st, p[:k]); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

// writeErr is the error of a Write that had nothing to send.
func (st *stream) writeErr() error {
	st.c.mu.Lock()
	defer st.c.mu.Unlock()
	return st.writeErrLocked()
}

func (st *stream) writeErrLocked() error {
	switch {
	case st.closed.Load():
		return net.ErrClosed
	case st.localEnded && !st.resetSent:
		return errWriteClosed
	case st.finished || st.resetSent:
		if err := st.recv.error(); err != nil && err != io.EOF {
			return err
		}
		return net.ErrClosed
	}
	return nil
}

// CloseWrite half-closes the stream: END_STREAM follows the bytes already written.
func (st *stream) CloseWrite() error {
	if st.closed.Load() {
		return net.ErrClosed
	}
	st.wrMu.Lock()
	defer st.wrMu.Unlock()
	return st.c.endStream(st)
}

// reset ends both directions at once with RST_STREAM code (unless the stream is already
// over), failing local operations with err. It only queues the frame: the reader
// goroutine calls it; others call abort.
func (st *stream) reset(code http2.ErrCode, err error) {
	st.c.resetStream(st, code)
	st.fail(err)
}

// abort is reset for goroutines other than the reader.
func (st *stream) abort(code http2.ErrCode, err error) {
	st.reset(code, err)
	st.c.tryFlushCtl()
}

// close ends the stream as a TCP close would: an END_STREAM if the peer already ended its
// side (a clean close), a RST_STREAM with code otherwise. It releases the receive buffer.
func (st *stream) close(code http2.ErrCode) {
	if !st.closed.CompareAndSwap(false, true) {
		return
	}
	c := st.c
	c.mu.Lock()
	graceful := st.remoteEnded && !st.finished
	c.mu.Unlock()
	if graceful {
		_ = c.endStream(st)
	} else {
		c.resetStream(st, code)
		c.tryFlushCtl()
	}
	st.fail(net.ErrClosed)
	st.rdDead.stop()
	st.wrDead.stop()
	if n := st.recv.close(); n > 0 {
		c.returnConnCredit(int64(n))
	}
}

// recvBuf is a stream's received bytes: a queue of pooled chunks the reader goroutine fills
// and Read drains, never more than the stream's flow-control window (plus one chunk).
type recvBuf struct {
	mu     sync.Mutex
	q      []*chunk
	n      int   // bytes buffered
	err    error // io.EOF after END_STREAM, or why the stream failed; after the bytes
	closed bool  // closed locally: drop what arrives
	wake   chan struct{}

	// A spliced stream's destination (see splice.go), written by one goroutine at a time
	// (owner): the reader goroutine on the direct path, or the splicing goroutine with the
	// bytes it took, so the bytes reach it in order. sunk counts the direct path's bytes.
	sink        TryWriter
	owner       sinkOwner
	sinkClosing bool // clearSink waits for the reader goroutine's write
	sunk        int64
}

type sinkOwner uint8

const (
	sinkIdle    sinkOwner = iota
	sinkReader            // the reader goroutine is writing a DATA payload to the sink
	sinkSplicer           // the splicing goroutine took bytes and is writing them
)

const chunkSize = 16 << 10

type chunk struct {
	b       []byte // chunkSize
	r, w    int
	filling bool // the reader goroutine is reading into b[w:]
}

var chunkPool = sync.Pool{New: func() any { return &chunk{b: make([]byte, chunkSize)} }}

func (rb *recvBuf) signal() {
	select {
	case rb.wake <- struct{}{}:
	default:
	}
}

// wakeEvery bounds the bytes of one frame the reader goroutine delivers before waking the
// stream's reader, so a large frame is consumed while it arrives.
const wakeEvery = 256 << 10

// fill reads n bytes of a DATA frame from r into the buffer. It returns how many it
// dropped because the stream was closed locally (their connection credit is the caller's
// to return).
func (rb *recvBuf) fill(r io.Reader, n int) (dropped int, err error) {
	sinceWake := 0
	for n > 0 {
		rb.mu.Lock()
		if rb.closed || rb.err != nil {
			rb.mu.Unlock()
			m, err := io.CopyN(io.Discard, r, int64(n))
			return dropped + int(m), err
		}
		var ck *chunk
		if len(rb.q) > 0 {
			if t := rb.q[len(rb.q)-1]; t.w < len(t.b) {
				ck = t
			}
		}
		if ck == nil {
			ck = chunkPool.Get().(*chunk)
			ck.r, ck.w = 0, 0
			rb.q = append(rb.q, ck)
		}
		ck.filling = true
		space := ck.b[ck.w:min(len(ck.b), ck.w+n)]
		rb.mu.Unlock()

		k, rerr := io.ReadFull(r, space)

		rb.mu.Lock()
		ck.filling = false
		if rb.closed {
			// close left the chunk to us.
			chunkPool.Put(ck)
			dropped += k
		} else {
			ck.w += k
			rb.n += k
		}
		rb.mu.Unlock()
		n -= k
		sinceWake += k
		if rerr != nil {
			rb.signal()
			return dropped, rerr
		}
		if sinceWake >= wakeEvery {
			sinceWake = 0
			rb.signal()
		}
	}
	rb.signal()
	return dropped, nil
}

// read copies buffered bytes into p; with none, it returns the stream's end or error, or
// (0, nil) if there is neither yet.
func (rb *recvBuf) read(p []byte) (int, error) {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return rb.readLocked(p)
}

func (rb *recvBuf) readLocked(p []byte) (int, error) {
	var n int
	for len(p) > 0 && rb.n > 0 {
		ck := rb.q[0]
		k := copy(p, ck.b[ck.r:ck.w])
		ck.r += k
		rb.n -= k
		n += k
		p = p[k:]
		if ck.r == ck.w && !ck.filling {
			rb.q[0] = nil
			rb.q = rb.q[1:]
			chunkPool.Put(ck)
		}
	}
	if len(rb.q) == 0 {
		rb.q = nil
	}
	if n > 0 {
		return n, nil
	}
	if rb.closed {
		return 0, net.ErrClosed
	}
	return 0, rb.err
}

// buffered is the number of bytes waiting to be read.
func (rb *recvBuf) buffered() int {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return rb.n
}

func (rb *recvBuf) error() error {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return rb.err
}

// setErr sets the end of the buffered bytes (io.EOF, or why the stream failed) unless one
// is set.
func (rb *recvBuf) setErr(err error) {
	rb.mu.Lock()
	if rb.err == nil {
		rb.err = err
	}
	rb.mu.Unlock()
	rb.signal()
}

// close drops the buffered bytes and returns how many there were.
func (rb *recvBuf) close() int {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	rb.closed = true
	n := rb.n
	for _, ck := range rb.q {
		if !ck.filling { // a chunk being filled is left to fill
			chunkPool.Put(ck)
		}
	}
	rb.q, rb.n = nil, 0
	return n
}

// setSink makes tw the stream's destination for the reader goroutine's direct path.
func (rb *recvBuf) setSink(tw TryWriter) {
	rb.mu.Lock()
	rb.sink, rb.owner, rb.sinkClosing, rb.sunk = tw, sinkIdle, false, 0
	rb.mu.Unlock()
}

// clearSink ends the direct path, waiting for the reader goroutine's write in progress,
// and returns the bytes the direct path wrote.
func (rb *recvBuf) clearSink() int64 {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	rb.sinkClosing = true
	for rb.owner == sinkReader {
		rb.mu.Unlock()
		<-rb.wake
		rb.mu.Lock()
	}
	rb.sink, rb.owner, rb.sinkClosing = nil, sinkIdle, false
	return rb.sunk
}

// take is the splicing goroutine's read: it returns buffered bytes, which it must write
// to the sink and then release, or with none the stream's end or error, or (0, nil) if
// there is neither yet or the reader goroutine is writing to the sink.
func (rb *recvBuf) take(p []byte) (int, error) {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	if rb.owner == sinkReader {
		return 0, nil
	}
	n, err := rb.readLocked(p)
	if n > 0 {
		rb.owner = sinkSplicer
	}
	return n, err
}

// release ends the splicing goroutine's write of the bytes it took.
func (rb *recvBuf) release() {
	rb.mu.Lock()
	rb.owner = sinkIdle
	rb.mu.Unlock()
}

// claimSink gives the reader goroutine the sink for one DATA payload if nothing is
// buffered (the payload is then next in order), or returns nil.
func (rb *recvBuf) claimSink() TryWriter {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	if rb.sink == nil || rb.owner != sinkIdle || rb.n > 0 || rb.closed || rb.err != nil || rb.sinkClosing {
		return nil
	}
	rb.owner = sinkReader
	return rb.sink
}

// releaseSink ends the reader goroutine's write of k bytes to the sink. It wakes the
// splicing goroutine only if it waits for that write (the stream failed meanwhile, or
// clearSink).
func (rb *recvBuf) releaseSink(k int) {
	rb.mu.Lock()
	rb.owner = sinkIdle
	rb.sunk += int64(k)
	wake := rb.err != nil || rb.sinkClosing
	rb.mu.Unlock()
	if wake {
		rb.signal()
	}
}

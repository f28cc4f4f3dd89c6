package hbone

import (
	"io"
	"os"
	"sync"
)

// bodyPipe is the request body of a client stream: Stream.Write hands its buffer to the
// HTTP/2 transport, which copies it straight into DATA frames (one copy, as io.Pipe), with
// write deadlines and a half-close (EOF to the transport, so it sends END_STREAM).
type bodyPipe struct {
	wrMu sync.Mutex // serializes Writes
	wrCh chan []byte
	rdCh chan int

	once sync.Once
	done chan struct{} // closed by closeWithError
	rerr error         // what the transport's Read returns once done
	werr error         // what Write returns once done

	deadline *deadline
}

func newBodyPipe() *bodyPipe {
	return &bodyPipe{
		wrCh:     make(chan []byte),
		rdCh:     make(chan int),
		done:     make(chan struct{}),
		deadline: newDeadline(),
	}
}

// Read is called by the transport.
func (p *bodyPipe) Read(b []byte) (int, error) {
	select {
	case <-p.done:
		return 0, p.rerr
	default:
	}
	select {
	case bw := <-p.wrCh:
		n := copy(b, bw)
		p.rdCh <- n
		return n, nil
	case <-p.done:
		return 0, p.rerr
	}
}

// Close is called by the transport when it stops reading (stream finished or aborted).
func (p *bodyPipe) Close() error {
	p.closeWithError(io.ErrClosedPipe, errStreamGone)
	return nil
}

// write is Stream.Write.
func (p *bodyPipe) write(b []byte) (n int, err error) {
	expired, _ := p.deadline.wait()
	select {
	case <-p.done:
		return 0, p.werr
	case <-expired:
		return 0, os.ErrDeadlineExceeded
	default:
	}
	p.wrMu.Lock()
	defer p.wrMu.Unlock()
	for once := true; once || len(b) > 0; once = false {
		select {
		case p.wrCh <- b:
			nw := <-p.rdCh
			b = b[nw:]
			n += nw
		case <-p.done:
			return n, p.werr
		case <-expired:
			return n, os.ErrDeadlineExceeded
		}
	}
	return n, nil
}

// closeWithError ends the pipe once: the transport then reads rerr and Write returns werr.
func (p *bodyPipe) closeWithError(rerr, werr error) {
	p.once.Do(func() {
		p.rerr, p.werr = rerr, werr
		close(p.done)
	})
}

package hbone

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// sinkRecorder is a TryWriter that records which path each byte took; TryWrite takes at
// most take(p) bytes of p.
type sinkRecorder struct {
	mu           sync.Mutex
	buf          bytes.Buffer
	tried, wrote int
	take         func(p []byte) int
	writer       bool // a goroutine is in Write or TryWrite
	overlapped   bool // two were at once
}

func (s *sinkRecorder) enter() {
	s.mu.Lock()
	if s.writer {
		s.overlapped = true
	}
	s.writer = true
	s.mu.Unlock()
}

func (s *sinkRecorder) leave() {
	s.mu.Lock()
	s.writer = false
	s.mu.Unlock()
}

func (s *sinkRecorder) TryWrite(p []byte) int {
	s.enter()
	defer s.leave()
	n := len(p)
	if s.take != nil {
		n = s.take(p)
	}
	s.mu.Lock()
	s.buf.Write(p[:n])
	s.tried += n
	s.mu.Unlock()
	return n
}

func (s *sinkRecorder) Write(p []byte) (int, error) {
	s.enter()
	defer s.leave()
	time.Sleep(time.Duration(rand.IntN(50)) * time.Microsecond) // let the reader goroutine race
	s.mu.Lock()
	s.buf.Write(p)
	s.wrote += len(p)
	s.mu.Unlock()
	return len(p), nil
}

func (s *sinkRecorder) state() (got []byte, tried, wrote int, overlapped bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.buf.Bytes()), s.tried, s.wrote, s.overlapped
}

// source serves the test's downloads: it writes what it reads from msgs, then
// half-closes when msgs closes.
func source(msgs <-chan []byte) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		for m := range msgs {
			if _, err := c.Write(m); err != nil {
				return
			}
		}
		c.CloseWrite()
		io.Copy(io.Discard, c)
	}
}

// TestWriteToDirectPath: a request/response flow of small messages spliced into a
// TryWriter goes through the reader goroutine's direct path, in order, and WriteTo counts
// those bytes.
func TestWriteToDirectPath(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{})
	msgs := make(chan []byte)
	target := upstream(t, source(msgs))
	d := newDialer(t, DialerOptions{})
	s, err := d.Dial(context.Background(), e.request(target))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sink := &sinkRecorder{}
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := s.WriteTo(sink)
		done <- result{n, err}
	}()
	var want []byte
	for i := range 200 {
		m := bytes.Repeat([]byte{byte(i)}, 1+rand.IntN(2048))
		want = append(want, m...)
		msgs <- m
		eventually(t, "the message", func() bool { got, _, _, _ := sink.state(); return len(got) == len(want) })
	}
	close(msgs)
	r := <-done
	got, tried, wrote, overlapped := sink.state()
	if r.err != nil || r.n != int64(len(want)) || !bytes.Equal(got, want) {
		t.Fatalf("WriteTo = %d, %v; got %d bytes (equal %v), want %d", r.n, r.err, len(got), bytes.Equal(got, want), len(want))
	}
	if overlapped {
		t.Error("two goroutines wrote to the sink at once")
	}
	// Each message arrives alone: all but a message split across frames takes the direct path.
	if tried < len(want)*9/10 {
		t.Errorf("direct path took %d of %d bytes (Write %d)", tried, len(want), wrote)
	}
}

// TestWriteToPartialSink: a destination that takes only part of each frame, or nothing,
// gets every byte in order, the rest through the splicing goroutine.
func TestWriteToPartialSink(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{})
	msgs := make(chan []byte, 64)
	target := upstream(t, source(msgs))
	d := newDialer(t, DialerOptions{})
	s, err := d.Dial(context.Background(), e.request(target))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sink := &sinkRecorder{take: func(p []byte) int {
		if rand.IntN(3) == 0 {
			return 0
		}
		return rand.IntN(len(p) + 1)
	}}
	done := make(chan error, 1)
	go func() {
		_, err := s.WriteTo(sink)
		done <- err
	}()
	var want []byte
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		m := make([]byte, 1+rng.IntN(8<<10))
		for i := range m {
			m[i] = byte(rng.Uint32())
		}
		want = append(want, m...)
		msgs <- m
		if i < 20 {
			// Paced at first: each message is delivered before the next, so frames
			// arrive with nothing buffered and the direct path is taken however busy
			// the machine; the flood after it fills the buffer.
			eventually(t, "the sink taking the paced message", func() bool {
				got, _, _, _ := sink.state()
				return len(got) == len(want)
			})
		}
	}
	close(msgs)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got, tried, wrote, overlapped := sink.state()
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d (equal prefix %d)", len(got), len(want), commonPrefix(got, want))
	}
	if overlapped {
		t.Error("two goroutines wrote to the sink at once")
	}
	if tried == 0 || wrote == 0 {
		t.Errorf("direct %d, buffered %d: want both paths", tried, wrote)
	}
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// TestWriteToSocketStreamReset: splicing into a socket ends with the stream's error when
// the server resets it, and the sink is released (no goroutine left behind).
func TestWriteToSocketStreamReset(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{})
	target := upstream(t, func(c *net.TCPConn) {
		c.Write([]byte("hello"))
		time.Sleep(50 * time.Millisecond)
		c.SetLinger(0)
		c.Close() // a reset: the server aborts the stream
	})
	d := newDialer(t, DialerOptions{})
	s, err := d.Dial(context.Background(), e.request(target))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, b := tcpPair(t)
	n, err := s.WriteTo(a)
	if err == nil || n != 5 {
		t.Fatalf("WriteTo = %d, %v; want 5 bytes and the reset", n, err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(b, got); err != nil || string(got) != "hello" {
		t.Fatalf("socket got %q, %v", got, err)
	}
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln := listen(t)
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

package hbone

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// BenchmarkThroughput moves b.N MiB over one connection, directly over loopback TCP and
// then through Dialer → Server → upstream on the same loopback, and reports both rates and
// their ratio (hbone/direct). Run a large transfer with e.g. -benchtime=4096x (4 GiB).
func BenchmarkThroughput(b *testing.B) {
	b.Run("upload", func(b *testing.B) { benchThroughput(b, true, false) })
	b.Run("download", func(b *testing.B) { benchThroughput(b, false, false) })
	// Reads with a deadline set (the same path now: streams have real deadlines; this
	// once measured x/net's background reads).
	b.Run("download_read_deadline", func(b *testing.B) { benchThroughput(b, false, true) })
}

const benchChunk = 1 << 20

// upload sends size bytes to a sink that answers with the count; download asks a source
// for size bytes.
func upload(c net.Conn, size int64) error {
	buf := make([]byte, 256<<10)
	for sent := int64(0); sent < size; {
		n, err := c.Write(buf[:min(int64(len(buf)), size-sent)])
		sent += int64(n)
		if err != nil {
			return err
		}
	}
	if !closeWrite(c) {
		return io.ErrClosedPipe
	}
	var got [8]byte
	_, err := io.ReadFull(c, got[:])
	return err
}

func download(c net.Conn, size int64) error {
	var req [8]byte
	binary.BigEndian.PutUint64(req[:], uint64(size))
	if _, err := c.Write(req[:]); err != nil {
		return err
	}
	buf := make([]byte, 256<<10)
	for got := int64(0); got < size; {
		n, err := c.Read(buf)
		got += int64(n)
		if err != nil {
			return err
		}
	}
	return nil
}

// benchPeer serves both sides of the benchmark: an 8-byte size means "send me this many",
// anything else is an upload, acknowledged at EOF with the byte count.
func benchPeer(c *net.TCPConn) {
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	size := binary.BigEndian.Uint64(hdr[:])
	n, _ := io.Copy(io.Discard, c) // an upload, or EOF right away for a download
	if n > 0 {
		binary.BigEndian.PutUint64(hdr[:], uint64(n)+8)
		c.Write(hdr[:])
		return
	}
	buf := make([]byte, 256<<10)
	for sent := uint64(0); sent < size; {
		m, err := c.Write(buf[:min(uint64(len(buf)), size-sent)])
		sent += uint64(m)
		if err != nil {
			return
		}
	}
}

func benchThroughput(b *testing.B, isUpload, deadline bool) {
	e := newEnv(b, envOptions{})
	d := newDialer(b, DialerOptions{})
	target := upstream(b, benchPeer)
	size := int64(b.N) * benchChunk
	if isUpload {
		size += 8 // the peer reads an 8-byte header first
	}
	do := func(c net.Conn) time.Duration {
		start := time.Now()
		var err error
		if isUpload {
			err = upload(c, size)
		} else {
			err = download(&halfCloser{Conn: c}, size)
		}
		if err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}

	b.StopTimer()
	direct, err := new(net.Dialer).DialContext(context.Background(), "tcp", target.String())
	if err != nil {
		b.Fatal(err)
	}
	directTime := do(direct)
	direct.Close()

	s, err := d.Dial(context.Background(), e.request(target))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if deadline {
		s.SetReadDeadline(time.Now().Add(time.Hour))
	}
	b.SetBytes(benchChunk)
	b.StartTimer()
	hboneTime := do(s)
	b.StopTimer()

	mb := float64(size) / (1 << 20)
	b.ReportMetric(mb/directTime.Seconds(), "direct_MiB/s")
	b.ReportMetric(mb/hboneTime.Seconds(), "hbone_MiB/s")
	b.ReportMetric(directTime.Seconds()/hboneTime.Seconds(), "hbone/direct")
}

// halfCloser half-closes after the first write (the download request), so the peer's
// upload check sees EOF and starts sending.
type halfCloser struct {
	net.Conn
	done bool
}

func (h *halfCloser) Write(p []byte) (int, error) {
	n, err := h.Conn.Write(p)
	if err == nil && !h.done {
		h.done = true
		if !closeWrite(h.Conn) {
			return n, io.ErrClosedPipe
		}
	}
	return n, err
}

// BenchmarkPingPong sends 1 KiB and reads its 1 KiB echo per op over one stream, the
// request/response pattern of bench-l4's fortio run, and reports the process CPU per op
// (dialer, server and the echo upstream together).
func BenchmarkPingPong(b *testing.B) {
	e := newEnv(b, envOptions{})
	d := newDialer(b, DialerOptions{})
	target := upstream(b, echo)
	s, err := d.Dial(context.Background(), e.request(target))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	msg, got := make([]byte, 1024), make([]byte, 1024)
	cpu0 := cpuTime()
	b.ResetTimer()
	for range b.N {
		if _, err := s.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(s, got); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

package hbone

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/mtls/mtlstest"
)

// writeCounter counts the Writes reaching the TCP connection.
type writeCounter struct {
	net.Conn
	writes atomic.Int64
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.writes.Add(1)
	return w.Conn.Write(p)
}

func TestBatchedTLSGathersRecords(t *testing.T) {
	ca := mtlstest.NewCA(t, "batch")
	cert := ca.Issue(t, mtlstest.ID(t, "spiffe://cluster.local/ns/a/sa/b"))
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	raw := &writeCounter{Conn: a}
	client := newBatchedTLS(raw, func(c net.Conn) *tls.Conn {
		return tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	})
	server := tls.Server(b, &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS13})

	const size = 1 << 20
	got := make(chan []byte, 1)
	go func() {
		buf, _ := io.ReadAll(io.LimitReader(server, size+1))
		got <- buf
	}()
	if err := client.Conn.Handshake(); err != nil {
		t.Fatal(err)
	}
	before := raw.writes.Load()
	want := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	if n, err := client.Write(want); n != size || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	small := []byte("x")
	if _, err := client.Write(small); err != nil {
		t.Fatal(err)
	}
	// 64 records of 16 KiB in batches of batchSize, plus the small write.
	batches := int64((size + batchSize - 1) / batchSize)
	if w := raw.writes.Load() - before; w > batches+2 {
		t.Errorf("%d TCP writes for 1 MiB and one byte; want at most %d", w, batches+2)
	}
	client.Close()
	if buf := <-got; !bytes.Equal(buf, append(want, small...)) {
		t.Fatalf("received %d bytes, not what was written", len(buf))
	}
}

func TestRecordBatcherExposesSocket(t *testing.T) {
	ln := listen(t)
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var rb net.Conn = &recordBatcher{Conn: c}
	if _, ok := rb.(syscall.Conn); !ok {
		t.Fatal("recordBatcher hides the socket from a certificate callback")
	}
	if _, err := rb.(syscall.Conn).SyscallConn(); err != nil {
		t.Fatal(err)
	}
}

// chunkConn is a connection whose Reads return what is asked from data, then err.
type chunkConn struct {
	net.Conn
	data  []byte
	err   error
	reads int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	c.reads++
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.data)
	c.data = c.data[n:]
	if len(c.data) == 0 {
		return n, c.err
	}
	return n, nil
}

func TestReadAheadServesRecordsFromOneRead(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), (readAheadSize+readAheadSize/2)/16)
	raw := &chunkConn{data: data, err: syscall.ECONNRESET}
	ra := &readAhead{Conn: raw}
	var got []byte
	buf := make([]byte, 16<<10+5) // what crypto/tls asks for: a record and its header
	var err error
	for err == nil {
		var n int
		n, err = ra.Read(buf)
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, not the %d written", len(got), len(data))
	}
	if err != syscall.ECONNRESET {
		t.Errorf("error after the data: %v, want the read's ECONNRESET", err)
	}
	if raw.reads != 2 {
		t.Errorf("%d reads of the connection for %d bytes; want 2", raw.reads, len(data))
	}
	if ra.buf != nil {
		t.Error("the drained buffer was not released")
	}
}

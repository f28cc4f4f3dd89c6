package proxy

import (
	"bytes"
	"io"
	"net"
	"sync/atomic"
	"testing"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		ch <- c
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return c, <-ch
}

// TestPipeHalfClose: client → [pipe] → server. The client half-closes after its request;
// the server sees EOF, answers, and the client reads the whole answer.
func TestPipeHalfClose(t *testing.T) {
	client, proxyFront := tcpPair(t)
	proxyBack, server := tcpPair(t)
	var up, down atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		ab, ba, err := Pipe(proxyFront, proxyBack, func(n int64) { up.Add(n) }, func(n int64) { down.Add(n) })
		if err != nil || ab != 5 || ba != 1<<20 {
			t.Errorf("Pipe = %d, %d, %v; want 5, %d, nil", ab, ba, err, 1<<20)
		}
	}()
	go func() {
		req, _ := io.ReadAll(server) // returns at the client's half-close
		if string(req) != "hello" {
			t.Errorf("server read %q", req)
		}
		_, _ = server.Write(bytes.Repeat([]byte("x"), 1<<20))
		_ = server.Close()
	}()
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	_ = client.(*net.TCPConn).CloseWrite()
	resp, err := io.ReadAll(client)
	if err != nil || len(resp) != 1<<20 {
		t.Fatalf("client read %d bytes, %v", len(resp), err)
	}
	client.Close()
	<-done
	if up.Load() != 5 || down.Load() != 1<<20 {
		t.Errorf("counted %d up, %d down", up.Load(), down.Load())
	}
}

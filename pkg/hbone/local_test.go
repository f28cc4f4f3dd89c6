package hbone

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"
)

// TestLocal: a Handler that serves the stream itself reads the client's bytes, answers
// line by line with each Write reaching the client at once, sees the client's half-close
// as EOF, honours a read deadline, and its byte counts reach OnDone.
func TestLocal(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{})
	deadlineHit := make(chan error, 1)
	e.setHandler(func(ctx context.Context, req *Request) (net.Conn, error) {
		if req.Header.Get("X-Test") == "deadline" {
			return Local(func(c net.Conn) {
				// Nothing comes: the read deadline fires.
				c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				_, err := c.Read(make([]byte, 1))
				deadlineHit <- err
			}), nil
		}
		return Local(func(c net.Conn) {
			if c.LocalAddr().String() != req.LocalAddr.String() || c.RemoteAddr().String() != req.RemoteAddr.String() {
				t.Errorf("local conn addresses %v %v, want %v %v", c.LocalAddr(), c.RemoteAddr(), req.LocalAddr, req.RemoteAddr)
			}
			br := bufio.NewReader(c)
			line, err := br.ReadString('\n')
			if err != nil {
				t.Errorf("reading the first line: %v", err)
				return
			}
			if _, err := io.WriteString(c, "1:"+line); err != nil {
				t.Errorf("answering: %v", err)
				return
			}
			// The client waits for the answer before sending more: an unflushed Write
			// would deadlock the test.
			rest, err := io.ReadAll(br)
			if err != nil {
				t.Errorf("reading to EOF: %v", err)
			}
			io.WriteString(c, "2:"+string(rest))
		}), nil
	})
	d := newDialer(t, DialerOptions{})
	s, err := d.Dial(context.Background(), e.request(upstream(t, echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	io.WriteString(s, "hello\n")
	br := bufio.NewReader(s)
	if got, err := br.ReadString('\n'); err != nil || got != "1:hello\n" {
		t.Fatalf("first answer %q, %v", got, err)
	}
	io.WriteString(s, "tail")
	s.CloseWrite()
	if got, err := io.ReadAll(br); err != nil || string(got) != "2:tail" {
		t.Fatalf("second answer %q, %v", got, err)
	}
	req := e.request(upstream(t, echo))
	req.Header = http.Header{"X-Test": {"deadline"}}
	s2, err := d.Dial(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := <-deadlineHit; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	d.Close()
	eventually(t, "the completion callbacks", func() bool { return len(e.stats()) == 2 })
	st := e.stats()
	if st[0].ToUpstream == 0 {
		st[0], st[1] = st[1], st[0]
	}
	if st[0].Status != 200 || st[0].ToUpstream != int64(len("hello\ntail")) || st[0].FromUpstream != int64(len("1:hello\n2:tail")) || st[0].Err != nil {
		t.Errorf("stats of the first stream %+v", st[0])
	}
}

// TestLocalCloseWrite: a Local serve's CloseWrite ends only its direction: the client reads
// EOF and can still send, and the serve reads it.
func TestLocalCloseWrite(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{})
	got := make(chan string, 1)
	e.setHandler(func(ctx context.Context, req *Request) (net.Conn, error) {
		return Local(func(c net.Conn) {
			io.WriteString(c, "hi")
			if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
				t.Errorf("CloseWrite: %v", err)
			}
			if _, err := c.Write([]byte("x")); err == nil {
				t.Error("Write after CloseWrite succeeded")
			}
			in, err := io.ReadAll(c)
			if err != nil {
				t.Errorf("reading after CloseWrite: %v", err)
			}
			got <- string(in)
		}), nil
	})
	d := newDialer(t, DialerOptions{})
	s, err := d.Dial(context.Background(), e.request(upstream(t, echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if b, err := io.ReadAll(s); err != nil || string(b) != "hi" {
		t.Fatalf("read %q, %v; want \"hi\" then EOF", b, err)
	}
	io.WriteString(s, "after")
	s.CloseWrite()
	if in := <-got; in != "after" {
		t.Fatalf("serve read %q, want \"after\"", in)
	}
	eventually(t, "the completion callback", func() bool { return len(e.stats()) == 1 })
	if st := e.stats()[0]; st.Err != nil || st.ToUpstream != 5 || st.FromUpstream != 2 {
		t.Errorf("stats %+v", st)
	}
}

package sniff

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

func TestDetect(t *testing.T) {
	tests := []struct {
		in   string
		want Protocol
	}{
		{"", Unknown},
		{"G", Unknown},
		{"GET", Unknown},
		{"GET ", Unknown},
		{"GET /path HTTP/1.", Unknown},
		{"GET /path HTTP/1.1\r\n", HTTP1},
		{"POST /x HTTP/1.0\r\nHost: a\r\n", HTTP1},
		{"DELETE / HTTP/1.1\n", HTTP1},
		{"GET /path HTTP/2.0\r\n", TCP},
		{"GET /path FTP/1.1\r\n", TCP},
		{"FOO / HTTP/1.1\r\n", TCP},
		{"get / HTTP/1.1\r\n", TCP},
		{"\x16\x03\x01\x02\x00", TCP},
		{"SSH-2.0-OpenSSH\r\n", TCP},
		{"PRI * HTTP/2.0\r\n", Unknown},
		{Preface, HTTP2},
		{Preface + "\x00\x00\x12\x04", HTTP2},
		{"PRI * HTTP/1.1\r\n", TCP},
		{"GET\r\n", TCP},
	}
	for _, tt := range tests {
		if got := Detect([]byte(tt.in)); got != tt.want {
			t.Errorf("Detect(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestConn(t *testing.T) {
	tests := []struct {
		name  string
		write string
		close bool
		want  Protocol
	}{
		{"http1", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", false, HTTP1},
		{"h2c", Preface + "rest", false, HTTP2},
		{"opaque", "\x16\x03\x01hello", false, TCP},
		{"silent (server first)", "", false, TCP},
		{"partial then silent", "GE", false, TCP},
		{"eof", "GE", true, TCP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			go func() {
				io.WriteString(b, tt.write)
				if tt.close {
					b.Close()
				}
			}()
			// A peer that stays silent must not hold Conn past its timeout: a guard closes
			// the peer long after it, and Conn must have returned before (by its timeout,
			// not by the guard's EOF).
			var guarded atomic.Bool
			guard := time.AfterFunc(30*time.Second, func() { guarded.Store(true); b.Close() })
			p, c, err := Conn(a, 100*time.Millisecond)
			guard.Stop()
			if guarded.Load() {
				t.Fatal("Conn returned only when the peer closed, not at its timeout")
			}
			if err != nil && !tt.close {
				t.Fatal(err)
			}
			if p != tt.want {
				t.Errorf("got %s, want %s", p, tt.want)
			}
			if tt.close {
				return
			}
			// The bytes read while sniffing are replayed, and the deadline is cleared.
			go func() { io.WriteString(b, "!"); b.Close() }()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != tt.write+"!" {
				t.Errorf("replayed %q, %v; want %q", got, err, tt.write+"!")
			}
		})
	}
}

func FuzzDetect(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\n", Preface, "PRI", "\x16\x03\x01", "POST /a HTTP/1.0\n", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p := Detect(b)
		// Deciding is monotonic: once decided, more bytes do not change it.
		if p != Unknown {
			if q := Detect(append(b[:len(b):len(b)], "xyz\r\n"...)); q != p {
				t.Fatalf("Detect(%q) = %s but with more bytes %s", b, p, q)
			}
		}
		if len(b) >= MaxPeek && p == Unknown {
			t.Fatalf("undecided after %d bytes", len(b))
		}
	})
}

// Package sniff detects the application protocol of a connection from its first bytes, as
// Envoy's http_inspector does for a waypoint: an HTTP/1.x request line, or the HTTP/2
// prior-knowledge (h2c) preface "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"; anything else is opaque
// TCP.
//
// Detect is a pure function over a byte prefix; Conn reads that prefix from a connection
// with a deadline and gives back a connection that replays it. It does not parse HTTP
// beyond the request line.
package sniff

import (
	"bytes"
	"errors"
	"net"
	"os"
	"time"
)

// Protocol is a detected protocol.
type Protocol uint8

// Protocols.
const (
	// Unknown: not enough bytes yet to decide.
	Unknown Protocol = iota
	TCP
	HTTP1
	HTTP2
)

func (p Protocol) String() string {
	return [...]string{"unknown", "tcp", "http/1.1", "http/2"}[p]
}

// Preface is the HTTP/2 client connection preface.
const Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// MaxPeek bounds the bytes Detect needs: a request line longer than this is not sniffed as
// HTTP (Envoy's inspector reads at most 64 KiB; request lines are far shorter).
const MaxPeek = 8 << 10

var methods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
	"PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH"}

// Detect decides from b, the first bytes of a connection. It returns Unknown while b is a
// prefix of something that could still be HTTP and is shorter than MaxPeek.
func Detect(b []byte) Protocol {
	if len(b) == 0 {
		return Unknown
	}
	if n := min(len(b), len(Preface)); bytes.Equal(b[:n], []byte(Preface[:n])) {
		if len(b) >= len(Preface) {
			return HTTP2
		}
		return Unknown
	}
	// Method: a known token followed by a space.
	sp := bytes.IndexByte(b, ' ')
	if sp < 0 {
		if len(b) >= MaxPeek {
			return TCP
		}
		for _, m := range methods {
			if len(b) <= len(m) && m[:len(b)] == string(b) {
				return Unknown
			}
		}
		return TCP
	}
	if !isMethod(b[:sp]) {
		return TCP
	}
	line := b[sp+1:]
	eol := bytes.IndexByte(line, '\n')
	if eol < 0 {
		if len(b) >= MaxPeek || bytes.IndexByte(line, '\r') >= 0 && !bytes.HasSuffix(line, []byte("\r")) {
			return TCP
		}
		return Unknown
	}
	line = bytes.TrimSuffix(line[:eol], []byte("\r"))
	sp2 := bytes.LastIndexByte(line, ' ')
	if sp2 <= 0 {
		return TCP
	}
	v := line[sp2+1:]
	if len(v) == 8 && bytes.HasPrefix(v, []byte("HTTP/1.")) && (v[7] == '0' || v[7] == '1') {
		return HTTP1
	}
	return TCP
}

func isMethod(b []byte) bool {
	for _, m := range methods {
		if string(b) == m {
			return true
		}
	}
	return false
}

// Conn reads c until Detect decides or timeout passes (then TCP), and returns the
// protocol and a connection that replays what was read. A read error other than the
// timeout is returned with TCP.
func Conn(c net.Conn, timeout time.Duration) (Protocol, net.Conn, error) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	var buf []byte
	tmp := make([]byte, 1024)
	for {
		n, err := c.Read(tmp[:min(len(tmp), MaxPeek-len(buf))])
		buf = append(buf, tmp[:n]...)
		if p := Detect(buf); p != Unknown {
			return p, &replayConn{Conn: c, prefix: buf}, nil
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				err = nil
			}
			return TCP, &replayConn{Conn: c, prefix: buf}, err
		}
	}
}

// replayConn reads prefix before the connection.
type replayConn struct {
	net.Conn
	prefix []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

package proxy

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// writeCounter counts the writes to a connection.
type writeCounter struct {
	net.Conn
	writes atomic.Int32
}

func (c *writeCounter) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// serveH1 serves HTTP/1.x with handle on one end of a pipe and returns the other end and
// the server end's write counter; the loop ends when the client end closes.
func serveH1(t *testing.T, handle handlerFunc) (net.Conn, *writeCounter) {
	t.Helper()
	p := &Proxy{log: slog.New(slog.DiscardHandler)}
	client, server := net.Pipe()
	wc := &writeCounter{Conn: server}
	sv, _ := p.streams.add(wc)
	p.streams.serveHTTP(sv)
	lr := &limitReader{r: wc}
	lr.unlimited()
	br := getReader(lr)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer p.streams.remove(sv)
		p.serveHTTP1(context.Background(), sv, wc, lr, br, handle)
		server.Close()
	}()
	t.Cleanup(func() {
		client.Close()
		<-done
	})
	return client, wc
}

// readAll reads what the server sends until it closes the stream or goes quiet.
func readAll(c net.Conn, quiet time.Duration) string {
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		c.SetReadDeadline(time.Now().Add(quiet))
		n, err := c.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			return sb.String()
		}
	}
}

func TestH1Writer(t *testing.T) {
	big := strings.Repeat("x", 3000)
	tests := []struct {
		name    string
		req     string
		handle  handlerFunc
		want    []string // substrings of the raw response, in order unless they are header fields
		notWant []string
		closes  bool // the server closes the stream after the response
		writes  int32
	}{{
		name: "small body gets a Content-Length, one write",
		req:  "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		handle: func(_ context.Context, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("X-A", "1")
			io.WriteString(w, "hello")
		},
		want:    []string{"HTTP/1.1 200 OK\r\n", "Content-Length: 5\r\n", "X-A: 1\r\n", "\r\n\r\nhello"},
		notWant: []string{"chunked"},
		writes:  1,
	}, {
		name: "declared Content-Length, large body",
		req:  "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		handle: func(_ context.Context, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", "3000")
			io.WriteString(w, big)
		},
		want:    []string{"Content-Length: 3000\r\n", "\r\n\r\n" + big},
		notWant: []string{"chunked"},
		writes:  1,
	}, {
		name: "unknown length beyond the buffer goes chunked",
		req:  "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		handle: func(_ context.Context, w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, big)
		},
		want:    []string{"Transfer-Encoding: chunked\r\n", "\r\n\r\nbb8\r\n" + big + "\r\n0\r\n\r\n"},
		notWant: []string{"Content-Length"},
		writes:  1,
	}, {
		name: "flush sends the header at once, chunked",
		req:  "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		handle: func(_ context.Context, w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "a")
			w.(http.Flusher).Flush()
			io.WriteString(w, "b")
		},
		want:   []string{"Transfer-Encoding: chunked\r\n", "1\r\na\r\n", "1\r\nb\r\n0\r\n\r\n"},
		writes: 2,
	}, {
		name: "HEAD: no body, the declared length kept",
		req:  "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
		handle: func(_ context.Context, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", "5")
			io.WriteString(w, "hello")
		},
		want:    []string{"HTTP/1.1 200 OK\r\n", "Content-Length: 5\r\n"},
		notWant: []string{"hello", "chunked"},
		writes:  1,
	}, {
		name: "204: no body, no length",
		req:  "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		handle: func(_ context.Context, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", "5")
			w.WriteHeader(http.StatusNoContent)
			if _, err := io.WriteString(w, "hello"); err != http.ErrBodyNotAllowed {
				panic("a body was allowed on 204")
			}
		},
		want:    []string{"HTTP/1.1 204 No Content\r\n"},
		notWant: []string{"hello", "chunked", "Content-Length"},
		writes:  1,
	}, {
		name: "304: no body, no length or type",
		req:  "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		handle: func(_ context.Context, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", "5")
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Etag", `"x"`)
			w.WriteHeader(http.StatusNotModified)
		},
		want:    []string{"HTTP/1.1 304 Not Modified\r\n", "Etag: \"x\"\r\n"},
		notWant: []string{"Content-Length", "Content-Type", "chunked"},
		writes:  1,
	}, {
		name:   "Connection: close from the client",
		req:    "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
		handle: func(_ context.Context, w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "x") },
		want:   []string{"Connection: close\r\n", "Content-Length: 1\r\n"},
		closes: true,
		writes: 1,
	}, {
		name: "Connection: close from the handler",
		req:  "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		handle: func(_ context.Context, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Connection", "close")
		},
		want:   []string{"Connection: close\r\n", "Content-Length: 0\r\n"},
		closes: true,
		writes: 1,
	}, {
		name:    "HTTP/1.0 without keep-alive",
		req:     "GET / HTTP/1.0\r\n\r\n",
		handle:  func(_ context.Context, w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "x") },
		want:    []string{"HTTP/1.0 200 OK\r\n", "Content-Length: 1\r\n"},
		notWant: []string{"keep-alive", "chunked"},
		closes:  true,
		writes:  1,
	}, {
		name:   "HTTP/1.0 keep-alive with a length",
		req:    "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		handle: func(_ context.Context, w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "x") },
		want:   []string{"HTTP/1.0 200 OK\r\n", "Connection: keep-alive\r\n", "Content-Length: 1\r\n"},
		writes: 1,
	}, {
		name: "HTTP/1.0 keep-alive of unknown length: close delimited",
		req:  "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		handle: func(_ context.Context, w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, big)
		},
		want:    []string{"HTTP/1.0 200 OK\r\n", "\r\n\r\n" + big},
		notWant: []string{"chunked", "keep-alive", "Content-Length"},
		closes:  true,
		writes:  1,
	}, {
		name: "100-continue, body read",
		req:  "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
		handle: func(_ context.Context, w http.ResponseWriter, r *http.Request) {
			if _, ok := r.Header["Expect"]; ok {
				panic("Expect reached the handler")
			}
			b, _ := io.ReadAll(r.Body)
			w.Write(b)
		},
		want:   []string{"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", "\r\n\r\nabc"},
		writes: 2,
	}, {
		name:    "100-continue, body not read: answered and closed",
		req:     "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
		handle:  func(_ context.Context, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusForbidden) },
		want:    []string{"HTTP/1.1 403 Forbidden\r\n", "Connection: close\r\n"},
		notWant: []string{"100 Continue"},
		closes:  true,
		writes:  1,
	}, {
		name:    "an unknown expectation: 417",
		req:     "GET / HTTP/1.1\r\nHost: a\r\nExpect: telepathy\r\n\r\n",
		handle:  func(context.Context, http.ResponseWriter, *http.Request) { panic("handler called") },
		want:    []string{"HTTP/1.1 417 Expectation Failed\r\n", "Connection: close\r\n"},
		closes:  true,
		writes:  1,
		notWant: []string{"chunked"},
	}, {
		name: "pipelined requests answered in order",
		req:  "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
		handle: func(_ context.Context, w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "path "+r.URL.Path)
		},
		want:   []string{"path /1", "HTTP/1.1 200 OK\r\n", "path /2"},
		writes: 2,
	}, {
		name: "unread body drained for keep-alive",
		req:  "POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
		handle: func(_ context.Context, w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "path "+r.URL.Path)
		},
		want:   []string{"path /1", "path /2"},
		writes: 2,
	}, {
		name:    "missing Host: 400 and close",
		req:     "GET / HTTP/1.1\r\n\r\n",
		handle:  func(context.Context, http.ResponseWriter, *http.Request) { panic("handler called") },
		want:    []string{"HTTP/1.1 400 Bad Request: missing required Host header\r\n", "Connection: close"},
		closes:  true,
		writes:  1,
		notWant: []string{"200"},
	}, {
		name:    "unknown transfer coding: 501",
		req:     "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: zstd\r\n\r\n",
		handle:  func(context.Context, http.ResponseWriter, *http.Request) { panic("handler called") },
		want:    []string{"HTTP/1.1 501 Not Implemented\r\n", "Unsupported transfer encoding"},
		closes:  true,
		writes:  1,
		notWant: []string{"200"},
	}, {
		name:    "malformed request line: 400 and close",
		req:     "GARBAGE\r\n\r\n",
		handle:  func(context.Context, http.ResponseWriter, *http.Request) { panic("handler called") },
		want:    []string{"HTTP/1.1 400 Bad Request\r\n"},
		closes:  true,
		writes:  1,
		notWant: []string{"200"},
	}, {
		name: "an aborted response is cut, the stream closed",
		req:  "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		handle: func(_ context.Context, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", "10")
			io.WriteString(w, "start")
			panic(http.ErrAbortHandler)
		},
		want:   []string{"Content-Length: 10\r\n", "\r\n\r\nstart"},
		closes: true,
		writes: 1,
	}, {
		name: "trailers after a chunked body",
		req:  "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		handle: func(_ context.Context, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Trailer", "X-Sum")
			io.WriteString(w, "a")
			w.Header().Set("X-Sum", "1")
			w.Header().Set(http.TrailerPrefix+"X-Late", "2")
		},
		want:   []string{"Trailer: X-Sum\r\n", "Transfer-Encoding: chunked\r\n", "1\r\na\r\n0\r\n", "X-Sum: 1\r\n", "X-Late: 2\r\n\r\n"},
		writes: 1,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, wc := serveH1(t, tt.handle)
			go io.WriteString(c, tt.req)
			quiet := 500 * time.Millisecond
			got := readAll(c, quiet)
			rest := got
			for _, w := range tt.want {
				if isField(w) { // header order is not defined
					if !strings.Contains(got, w) {
						t.Fatalf("response lacks %q:\n%s", w, got)
					}
					continue
				}
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("response lacks %q (in order):\n%s", w, got)
				}
				rest = rest[i+len(w):]
			}
			for _, w := range tt.notWant {
				if strings.Contains(got, w) {
					t.Errorf("response has %q:\n%s", w, got)
				}
			}
			// readAll ends on the server's close (EOF) or on silence (a deadline).
			c.SetReadDeadline(time.Now().Add(quiet))
			_, err := c.Read(make([]byte, 1))
			if closed := err == io.EOF || err == io.ErrClosedPipe; closed != tt.closes {
				t.Errorf("stream closed: %v (%v), want %v", closed, err, tt.closes)
			}
			if n := wc.writes.Load(); n != tt.writes {
				t.Errorf("%d writes, want %d:\n%s", n, tt.writes, got)
			}
		})
	}
}

// isField: s is one header field line.
func isField(s string) bool {
	return strings.Count(s, "\r\n") == 1 && strings.HasSuffix(s, "\r\n") && strings.Contains(s, ": ") && !strings.HasPrefix(s, "HTTP/")
}

// TestH1KeepAlive: responses on a kept-alive stream parse with net/http, each in one
// write, and the stream's reader goes back to the pool only when nothing reads it.
func TestH1KeepAlive(t *testing.T) {
	c, wc := serveH1(t, func(_ context.Context, w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.Method+" "+string(b))
	})
	br := bufio.NewReader(c)
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")
		}()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != "POST body" || resp.ContentLength != 9 || resp.Close {
			t.Fatalf("request %d: %q length %d close %v", i, b, resp.ContentLength, resp.Close)
		}
		wg.Wait()
	}
	if n := wc.writes.Load(); n != 5 {
		t.Errorf("%d writes for 5 responses", n)
	}
}

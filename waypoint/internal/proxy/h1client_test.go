package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
)

// clientProxy is a Proxy with only what its HTTP/1.1 client needs: plain dials.
func clientProxy(t *testing.T) *Proxy {
	t.Helper()
	p := &Proxy{log: slog.New(slog.DiscardHandler), opts: Options{DialPlain: func(ctx context.Context, a netip.AddrPort) (net.Conn, error) {
		return new(net.Dialer).DialContext(ctx, "tcp", a.String())
	}}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	t.Cleanup(func() {
		p.cancel()
		p.wg.Wait()
		p.h1.closeIdle(true)
	})
	return p
}

func plainRoute(t *testing.T, addr string) meshstate.Route {
	t.Helper()
	return meshstate.Route{Kind: meshstate.Plaintext, Target: netip.MustParseAddrPort(addr)}
}

// request encodes a buffered request as forwardH1 does.
func request(method, path string, body string) *upRequest {
	h := http.Header{"X-Test": {"1"}}
	b := appendRequestHead(nil, method, path, "upstream", h, int64(len(body)))
	return &upRequest{msg: append(b, body...), method: method, replayable: true, idempotent: isIdempotent(method, h)}
}

// do runs a round trip and reads the whole body, closing it.
func do(t *testing.T, p *Proxy, route meshstate.Route, rq *upRequest) (*http.Response, string, error) {
	t.Helper()
	resp, err := p.roundTrip(context.Background(), keyOf(route, false), route, rq, nil)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

func TestH1ClientReuse(t *testing.T) {
	var mu sync.Mutex
	var remotes []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		remotes = append(remotes, r.RemoteAddr)
		mu.Unlock()
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		if r.URL.Path == "/big" {
			io.WriteString(w, strings.Repeat("y", 100<<10))
			return
		}
		io.WriteString(w, r.Method+" "+r.URL.Path+" "+string(b)+" "+r.Header.Get("X-Test"))
	}))
	defer srv.Close()
	route := plainRoute(t, srv.Listener.Addr().String())
	p := clientProxy(t)
	remote := func(i int) string {
		mu.Lock()
		defer mu.Unlock()
		return remotes[i]
	}

	tests := []struct {
		name      string
		rq        *upRequest
		body      string
		readPart  bool // close the body unread
		sameAsPre bool // served on the previous request's connection
	}{
		{"first", request("GET", "/a", ""), "GET /a  1", false, false},
		{"reused", request("POST", "/b", "hello"), "POST /b hello 1", false, true},
		{"upstream says close", request("GET", "/close", ""), "GET /close  1", false, true},
		{"no reuse after close", request("GET", "/c", ""), "GET /c  1", false, false},
		{"body left unread", request("GET", "/big", ""), "", true, true},
		{"no reuse after an unread body", request("GET", "/d", ""), "GET /d  1", false, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := p.roundTrip(context.Background(), keyOf(route, false), route, tt.rq, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.readPart {
				resp.Body.Read(make([]byte, 10))
				resp.Body.Close()
			} else {
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || string(b) != tt.body {
					t.Fatalf("got %q, %v; want %q", b, err, tt.body)
				}
			}
			if i > 0 && (remote(i) == remote(i-1)) != tt.sameAsPre {
				t.Errorf("connection %s after %s: same %v, want %v", remote(i), remote(i-1), !tt.sameAsPre, tt.sameAsPre)
			}
		})
	}
}

// TestH1ClientEarlyResponse: an upstream answering before it read a large upload does not
// deadlock the client, and the connection is not reused.
func TestH1ClientEarlyResponse(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusRequestEntityTooLarge)
	}))
	defer srv.Close()
	route := plainRoute(t, srv.Listener.Addr().String())
	p := clientProxy(t)
	pr, pw := io.Pipe()
	go func() { // a client sending slowly, far more than the upstream reads
		chunk := []byte(strings.Repeat("z", 32<<10))
		for range 256 {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	defer pr.CloseWithError(errors.New("test over"))
	const length = 8 << 20
	rq := &upRequest{msg: appendRequestHead(nil, "PUT", "/upload", "upstream", http.Header{}, length), method: "PUT", body: pr, length: length}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := p.roundTrip(ctx, keyOf(route, false), route, rq, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("status %d", resp.StatusCode)
	}
	if uc := p.h1.get(keyOf(route, false)); uc != nil {
		t.Errorf("the connection of an unfinished upload was pooled")
	}
}

// TestH1ClientUpstreamCloses: an upstream that closes before answering fails the round
// trip (forward answers 503 UF); one that closes mid-body cuts the body.
func TestH1ClientUpstreamCloses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				if req.URL.Path == "/mid" {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
				}
			}()
		}
	}()
	route := plainRoute(t, ln.Addr().String())
	p := clientProxy(t)
	if _, _, err := do(t, p, route, request("GET", "/before", "")); err == nil {
		t.Error("no error from an upstream closing before its response")
	}
	resp, body, err := do(t, p, route, request("GET", "/mid", ""))
	if resp == nil || resp.StatusCode != 200 || !errors.Is(err, io.ErrUnexpectedEOF) || body != "only ten b" {
		t.Errorf("cut response: %v %q %v, want 200, the ten bytes and an unexpected EOF", resp, body, err)
	}
}

// TestH1ClientStaleConnection: a pooled connection the upstream closed while idle fails
// before any response byte, and a replayable request is sent again on a new one.
func TestH1ClientStaleConnection(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.Method+" "+string(b))
	}))
	srv.Config.IdleTimeout = 100 * time.Millisecond
	srv.Start()
	defer srv.Close()
	route := plainRoute(t, srv.Listener.Addr().String())
	p := clientProxy(t)
	for _, rq := range []*upRequest{request("GET", "/", ""), request("GET", "/", "")} {
		if _, body, err := do(t, p, route, rq); err != nil || body != "GET " {
			t.Fatalf("GET: %q %v", body, err)
		}
		time.Sleep(300 * time.Millisecond) // the upstream closes the idle connection
	}
	time.Sleep(staleAfter)
	if _, body, err := do(t, p, route, request("POST", "/", "data")); err != nil || body != "POST data" {
		t.Fatalf("POST on a stale connection: %q %v", body, err)
	}
}

// TestH1ClientContext: cancelling the context ends a round trip waiting for a response.
func TestH1ClientContext(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer srv.Close()
	defer close(release)
	route := plainRoute(t, srv.Listener.Addr().String())
	p := clientProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := p.roundTrip(ctx, keyOf(route, false), route, request("GET", "/", ""), nil); err == nil {
		t.Fatal("no error after the context ended")
	}
}

func TestRequestHead(t *testing.T) {
	tests := []struct {
		name, method string
		header       http.Header
		length       int64
		want         string
	}{
		{"GET without body", "GET", http.Header{"A": {"1"}}, 0, "GET /p HTTP/1.1\r\nHost: h\r\nA: 1\r\n\r\n"},
		{"POST empty", "POST", nil, 0, "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"},
		{"chunked", "PUT", nil, -1, "PUT /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{"framing fields replaced", "POST", http.Header{"Content-Length": {"9"}, "Transfer-Encoding": {"gzip"}, "Host": {"x"}}, 3,
			"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n"},
		{"empty user agent left out", "GET", http.Header{"User-Agent": {""}}, 0, "GET /p HTTP/1.1\r\nHost: h\r\n\r\n"},
		{"newlines in values", "GET", http.Header{"A": {" x\r\ny "}}, 0, "GET /p HTTP/1.1\r\nHost: h\r\nA: x  y\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(appendRequestHead(nil, tt.method, "/p", "h", tt.header, tt.length)); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestChunkedBody(t *testing.T) {
	var sb strings.Builder
	body := strings.Repeat("q", 40<<10)
	if err := writeBody(&sb, strings.NewReader(body), -1); err != nil {
		t.Fatal(err)
	}
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + sb.String())))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(req.Body); err != nil || string(b) != body {
		t.Errorf("chunked body: %d bytes, %v", len(b), err)
	}
}

// FuzzRequestURI: the fast path of requestURI writes what parsing would.
func FuzzRequestURI(f *testing.F) {
	for _, s := range []string{"/", "/a/b?c=d", "/a b", "/%41?x#y", "//x/y", "*", "/a(b)!$&'*+,;=:@", "/é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !isPlainURI(s) {
			return
		}
		slow := requestURISlow(s)
		if s != slow {
			t.Errorf("requestURI(%q): fast path %q, parsed %q", s, s, slow)
		}
	})
}

package proxy_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestUpstreamFailures: an upstream that closes before answering gets the client a 503
// (UF); one that closes mid-response cuts the client's response.
func TestUpstreamFailures(t *testing.T) {
	e := newEnv(t, mesh())
	e.backend("v1", "10.0.0.11", id(t, "ns1", "reviews"), func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		if r.URL.Path == "/mid" {
			brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
			brw.Flush()
		}
	})
	e.setRoutes(defaultRoutes("reviews-v1", 9080))
	c := e.client(id(t, "client", "sleep"), "10.96.0.11:9080")

	resp, err := c.Get("http://reviews-v1.ns1.svc.cluster.local:9080/before")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || string(b) != "upstream connect error or disconnect/reset before headers. reset reason: connection failure" {
		t.Errorf("closed before the response: %d %q, want 503 and Envoy's reply", resp.StatusCode, b)
	}
	if f := e.accessFlags("/before"); f != "UF" {
		t.Errorf("access log flags %q, want UF", f)
	}

	resp, err = c.Get("http://reviews-v1.ns1.svc.cluster.local:9080/mid")
	if err != nil {
		t.Fatal(err)
	}
	b, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "only ten b" || err == nil {
		t.Errorf("closed mid-response: %d %q %v, want the start and an error", resp.StatusCode, b, err)
	}
}

// TestSniffServerFirst: a stream of unknown protocol whose server speaks first is passed
// through as TCP after the sniff timeout, and the client's bytes still flow afterwards.
func TestSniffServerFirst(t *testing.T) {
	e := newEnv(t, mesh())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "220 banner\n")
				io.Copy(c, c)
			}()
		}
	}()
	e.ztunnel("10.0.0.21", id(t, "ns1", "sniffed"), ln.Addr().String())
	e.setRoutes(defaultRoutes("sniffed", 8000))
	s, err := e.rawStream(id(t, "client", "sleep"), "10.96.0.21:8000")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(s)
	if line, err := r.ReadString('\n'); err != nil || line != "220 banner\n" {
		t.Fatalf("banner: %q %v", line, err)
	}
	io.WriteString(s, "hello after the sniff timeout\n")
	if line, err := r.ReadString('\n'); err != nil || line != "hello after the sniff timeout\n" {
		t.Errorf("echo: %q %v", line, err)
	}
}

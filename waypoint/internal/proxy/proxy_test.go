package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"istio.io/istio/pkg/workloadapi"
)

const reviews = "10.96.0.10:9080"

func mesh() []*workloadapi.Address {
	return []*workloadapi.Address{
		service("reviews", "10.96.0.10", 9080, workloadapi.AppProtocol_HTTP11),
		service("reviews-v1", "10.96.0.11", 9080, workloadapi.AppProtocol_HTTP11),
		service("reviews-v2", "10.96.0.12", 9080, workloadapi.AppProtocol_HTTP11),
		service("mirror", "10.96.0.13", 9080, workloadapi.AppProtocol_HTTP11),
		service("echo", "10.96.0.20", 7000, workloadapi.AppProtocol_TCP),
		service("sniffed", "10.96.0.21", 8000, workloadapi.AppProtocol_UNKNOWN),
		workload("reviews-v1", "ns1", "reviews", "10.0.0.11", map[string]uint32{"reviews-v1": 9080, "reviews": 9080}),
		workload("reviews-v2", "ns1", "reviews", "10.0.0.12", map[string]uint32{"reviews-v2": 9080}),
		workload("mirror", "ns1", "mirror", "10.0.0.13", map[string]uint32{"mirror": 9080}),
		workload("echo", "ns1", "echo", "10.0.0.20", map[string]uint32{"echo": 7000}),
		workload("sniffed", "ns1", "sniffed", "10.0.0.21", map[string]uint32{"sniffed": 8000}),
		workload("sleep", "client", "sleep", "10.0.0.5", nil),
	}
}

func setup(t *testing.T) *env {
	e := newEnv(t, mesh())
	e.backend("v1", "10.0.0.11", id(t, "ns1", "reviews"), func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/slow") {
			// Only the route's 200 ms timeout ends this in time: a waypoint that ignored
			// it would get "v1" after 30 s, and the test would see 200, not 504.
			select {
			case <-r.Context().Done():
			case <-time.After(30 * time.Second):
			}
		}
		io.WriteString(w, "v1 "+r.URL.Path)
	})
	e.backend("v2", "10.0.0.12", id(t, "ns1", "reviews"), nil)
	e.backend("mirror", "10.0.0.13", id(t, "ns1", "mirror"), nil)
	e.backend("sniffed", "10.0.0.21", id(t, "ns1", "sniffed"), nil)
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	e.ztunnel("10.0.0.20", id(t, "ns1", "echo"), echo.Addr().String())
	e.setRoutes(reviewsRoutes(t), defaultRoutes("echo", 7000), defaultRoutes("sniffed", 8000))
	return e
}

func get(t *testing.T, c *http.Client, path string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", "http://reviews.ns1.svc.cluster.local:9080"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestEndToEnd(t *testing.T) {
	e := setup(t)
	c := e.client(id(t, "client", "sleep"), reviews)

	t.Run("weighted split 80/20", func(t *testing.T) {
		before := len(e.requests("v1")) + len(e.requests("v2"))
		const n = 1000
		for i := 0; i < n; i++ {
			if resp, body := get(t, c, "/reviews/1"); resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
		}
		v1, v2 := 0, 0
		for _, s := range e.requests("")[before:] {
			switch s.Backend {
			case "v1":
				v1++
			case "v2":
				v2++
			}
		}
		share := 100 * float64(v1) / n
		t.Logf("v1 %d, v2 %d of %d: v1 share %.1f%%", v1, v2, n, share)
		if v1+v2 != n || share < 75 || share > 85 {
			t.Errorf("v1 %d, v2 %d of %d: want 80%% ± 5 points to v1", v1, v2, n)
		}
	})

	t.Run("header match and header modifiers", func(t *testing.T) {
		before := len(e.requests("v2"))
		resp, body := get(t, c, "/api/ratings", "x-version", "v2", "x-secret", "s3cret")
		if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "v2" || resp.Header.Get("X-Route") != "v2-by-header" {
			t.Fatalf("got %d %q backend %q route %q", resp.StatusCode, body, resp.Header.Get("X-Backend"), resp.Header.Get("X-Route"))
		}
		got := e.requests("v2")[before]
		if got.Header.Get("X-Routed") != "v2" || got.Header.Get("X-Secret") != "" {
			t.Errorf("upstream headers %v: want x-routed v2 and no x-secret", got.Header)
		}
	})

	t.Run("redirect", func(t *testing.T) {
		resp, _ := get(t, c, "/redirect?x=1")
		if loc := resp.Header.Get("Location"); resp.StatusCode != 302 || loc != "http://example.com/moved?x=1" {
			t.Errorf("got %d Location %q, want 302 http://example.com/moved?x=1", resp.StatusCode, loc)
		}
	})

	t.Run("prefix and host rewrite", func(t *testing.T) {
		before := len(e.requests("v1"))
		if resp, body := get(t, c, "/old/page?q=1"); resp.StatusCode != 200 {
			t.Fatalf("status %d %s", resp.StatusCode, body)
		}
		got := e.requests("v1")[before]
		if got.Path != "/new/page?q=1" || got.Host != "rewritten.example" {
			t.Errorf("upstream saw %s host %s, want /new/page?q=1 host rewritten.example", got.Path, got.Host)
		}
	})

	t.Run("mirror", func(t *testing.T) {
		before := len(e.requests("mirror"))
		resp, body := get(t, c, "/mirror/x")
		if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "v1" {
			t.Fatalf("got %d %q from %q, want 200 from v1", resp.StatusCode, body, resp.Header.Get("X-Backend"))
		}
		deadline := time.Now().Add(5 * time.Second)
		for len(e.requests("mirror")) == before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		ms := e.requests("mirror")
		if len(ms) != before+1 {
			t.Fatalf("mirror received %d requests, want 1", len(ms)-before)
		}
		if m := ms[before]; m.Path != "/mirror/x" || m.Host != "reviews.ns1.svc.cluster.local-shadow:9080" {
			t.Errorf("mirror saw %s host %s", m.Path, m.Host)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		resp, body := get(t, c, "/slow")
		if resp.StatusCode != 504 || body != "upstream request timeout" {
			t.Errorf("got %d %q, want the route timeout's 504", resp.StatusCode, body)
		}
	})

	t.Run("direct response", func(t *testing.T) {
		if resp, body := get(t, c, "/direct"); resp.StatusCode != 418 || body != "teapot" {
			t.Errorf("got %d %q", resp.StatusCode, body)
		}
	})

	t.Run("unresolvable backend", func(t *testing.T) {
		if resp, _ := get(t, c, "/gone"); resp.StatusCode != 500 {
			t.Errorf("got %d, want 500 (cluster_not_found_response_code)", resp.StatusCode)
		}
	})

	t.Run("RBAC deny on a path", func(t *testing.T) {
		before := len(e.requests(""))
		if resp, body := get(t, c, "/admin/users"); resp.StatusCode != 403 || body != "RBAC: access denied" {
			t.Errorf("got %d %q, want 403 RBAC: access denied", resp.StatusCode, body)
		}
		if n := len(e.requests("")); n != before {
			t.Errorf("a denied request reached a backend")
		}
		if resp, _ := get(t, c, "/api/x"); resp.StatusCode != 200 {
			t.Errorf("other path: %d, want 200", resp.StatusCode)
		}
	})

	t.Run("RBAC allow on a principal", func(t *testing.T) {
		other := e.client(id(t, "other", "sleep"), reviews)
		if resp, body := get(t, other, "/reviews/1"); resp.StatusCode != 403 || body != "RBAC: access denied" {
			t.Errorf("ns other: got %d %q, want 403", resp.StatusCode, body)
		}
		if resp, _ := get(t, c, "/reviews/1"); resp.StatusCode != 200 {
			t.Errorf("ns client: got %d, want 200", resp.StatusCode)
		}
	})

	t.Run("trace headers", func(t *testing.T) {
		before := len(e.requests("v1"))
		tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		get(t, c, "/old/trace", "traceparent", tp, "tracestate", "k=v", "x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7", "x-b3-spanid", "e457b5a2e4d86bd1")
		h := e.requests("v1")[before].Header
		if h.Get("Traceparent") != tp || h.Get("Tracestate") != "k=v" || h.Get("X-B3-Traceid") == "" || h.Get("X-B3-Spanid") == "" {
			t.Errorf("trace headers not propagated: %v", h)
		}
		if len(h.Get("X-Request-Id")) != 36 || h.Get("X-Forwarded-Proto") != "http" || h.Get("X-Forwarded-For") != "10.0.0.5" {
			t.Errorf("x-request-id %q, x-forwarded-proto %q, x-forwarded-for %q", h.Get("X-Request-Id"), h.Get("X-Forwarded-Proto"), h.Get("X-Forwarded-For"))
		}
	})

	t.Run("h2c", func(t *testing.T) {
		s, err := e.rawStream(id(t, "client", "sleep"), reviews)
		if err != nil {
			t.Fatal(err)
		}
		tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(context.Context, string, string, *tls.Config) (net.Conn, error) { return s, nil }}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get("http://reviews:9080/api/h2")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
			t.Errorf("got %d over %s", resp.StatusCode, resp.Proto)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		mfs, err := e.metrics.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		found := map[string]bool{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				l := map[string]string{}
				for _, lp := range m.GetLabel() {
					l[lp.GetName()] = lp.GetValue()
				}
				if mf.GetName() == "istio_requests_total" && l["reporter"] == "waypoint" && l["connection_security_policy"] == "mutual_tls" &&
					l["source_principal"] == "spiffe://cluster.local/ns/client/sa/sleep" && l["source_workload"] == "sleep" {
					found[l["response_code"]+" "+l["destination_service"]+" "+l["destination_workload"]] = true
				}
				if mf.GetName() == "istio_request_duration_milliseconds" {
					found["histogram"] = true
				}
			}
		}
		for _, want := range []string{"200 reviews-v1.ns1.svc.cluster.local reviews-v1", "403 reviews.ns1.svc.cluster.local unknown", "histogram"} {
			if !found[want] {
				t.Errorf("no istio_requests_total series %q in %v", want, found)
			}
		}
	})

	t.Run("tcp passthrough by app_protocol", func(t *testing.T) {
		echo(t, e, "10.96.0.20:7000", "hello over tcp\n")
	})

	t.Run("sniffed tcp", func(t *testing.T) {
		echo(t, e, "10.96.0.21:8000", "\x16\x03\x01 not http\n")
	})

	t.Run("sniffed http", func(t *testing.T) {
		s, err := e.rawStream(id(t, "client", "sleep"), "10.96.0.21:8000")
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		io.WriteString(s, "GET /hello HTTP/1.1\r\nHost: sniffed\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(s), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != "sniffed /hello" {
			t.Errorf("got %d %q", resp.StatusCode, b)
		}
	})
}

// echo checks that bytes sent over an HBONE stream to target come back (the TCP echo
// backend sits behind it; the sniffed service's backend is HTTP, so only the echo service
// echoes — for it the test expects the backend's HTTP error reply instead).
func echo(t *testing.T, e *env, target, msg string) {
	t.Helper()
	s, err := e.rawStream(id(t, "client", "sleep"), target)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(s, msg); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(s)
	line, err := r.ReadString('\n')
	if target == "10.96.0.20:7000" {
		if err != nil || line != msg {
			t.Errorf("echo: got %q, %v; want %q", line, err, msg)
		}
		return
	}
	// The sniffed service's backend speaks HTTP: opaque bytes passed through as TCP get
	// its 400 reply, which proves they reached it unparsed by the waypoint.
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 400") {
		t.Errorf("sniffed tcp: got %q, %v; want the backend's HTTP/1.1 400", line, err)
	}
}

package proxy_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// BenchmarkPOST: the bench-l7 request (a 1 KiB POST echoed back) through the waypoint on
// loopback, HBONE on both sides; for profiles of the waypoint's per-request work.
func BenchmarkPOST(b *testing.B) {
	e := newEnv(b, mesh())
	e.backend("v1", "10.0.0.11", id(b, "ns1", "reviews"), func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	e.setRoutes(defaultRoutes("reviews-v1", 9080))
	c := e.client(id(b, "client", "sleep"), "10.96.0.11:9080")
	body := strings.Repeat("x", 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		resp, err := c.Post("http://reviews-v1.ns1.svc.cluster.local:9080/echo", "text/plain", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || n != 1024 {
			b.Fatalf("status %d, %d bytes", resp.StatusCode, n)
		}
	}
}

package metrics

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestConnCounts(t *testing.T) {
	m := New()
	l := Labels{Reporter: ReporterDestination, SourcePrincipal: "spiffe://cluster.local/ns/a/sa/b", DestinationWorkload: "echo",
		RequestProtocol: "tcp", ConnectionSecurityPolicy: MutualTLS}
	c := m.Open(l)
	c.Received(100)
	c.Sent(250)
	c.Received(1)
	c.Close()
	c.Close()
	m.Open(l) // still open

	v := l.values()
	for name, tt := range map[string]struct {
		got  float64
		want float64
	}{
		"opened":   {testutil.ToFloat64(m.opened.WithLabelValues(v...)), 2},
		"closed":   {testutil.ToFloat64(m.closed.WithLabelValues(v...)), 1},
		"received": {testutil.ToFloat64(m.received.WithLabelValues(v...)), 101},
		"sent":     {testutil.ToFloat64(m.sent.WithLabelValues(v...)), 250},
		"active":   {testutil.ToFloat64(m.active), 1},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", name, tt.got, tt.want)
		}
	}

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`istio_tcp_connections_opened_total{connection_security_policy="mutual_tls",destination_app="unknown"`,
		`istio_tcp_received_bytes_total{`, `istio_tcp_sent_bytes_total{`, `istio_tcp_connections_closed_total{`,
		`reporter="destination"`, `source_principal="spiffe://cluster.local/ns/a/sa/b"`, "go_goroutines", "process_resident_memory_bytes",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

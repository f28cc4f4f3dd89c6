package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// series returns the label sets of name's samples, and the metrics themselves.
func series(t *testing.T, m *Metrics, name string) ([]map[string]string, []*dto.Metric) {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var out []map[string]string
		for _, s := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range s.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			out = append(out, l)
		}
		return out, mf.GetMetric()
	}
	return nil, nil
}

func TestRequestLabels(t *testing.T) {
	m := New()
	full := Labels{
		SourceWorkload: "sleep", SourceWorkloadNamespace: "client", SourcePrincipal: "spiffe://cluster.local/ns/client/sa/sleep",
		SourceApp: "sleep", SourceVersion: "v1", SourceCluster: "Kubernetes",
		DestinationService: "reviews.ns1.svc.cluster.local", DestinationServiceName: "reviews", DestinationServiceNamespace: "ns1",
		DestinationWorkload: "reviews-v2", DestinationWorkloadNamespace: "ns1", DestinationPrincipal: "spiffe://cluster.local/ns/ns1/sa/reviews",
		DestinationApp: "reviews", DestinationVersion: "v2", DestinationCluster: "Kubernetes",
		RequestProtocol: "http", ResponseCode: 503, ResponseFlags: "UF",
	}
	m.Request(&full, 12*time.Millisecond, 100, 2000)
	m.Request(&full, 3*time.Millisecond, 0, 0)
	m.Request(&Labels{RequestProtocol: "http", ResponseCode: 200}, time.Millisecond, 0, 0)

	want := map[string]string{
		"reporter":        "waypoint",
		"source_workload": "sleep", "source_workload_namespace": "client", "source_principal": "spiffe://cluster.local/ns/client/sa/sleep",
		"source_app": "sleep", "source_version": "v1", "source_cluster": "Kubernetes",
		"destination_service": "reviews.ns1.svc.cluster.local", "destination_service_name": "reviews", "destination_service_namespace": "ns1",
		"destination_workload": "reviews-v2", "destination_workload_namespace": "ns1",
		"destination_principal": "spiffe://cluster.local/ns/ns1/sa/reviews",
		"destination_app":       "reviews", "destination_version": "v2", "destination_cluster": "Kubernetes",
		"request_protocol": "http", "response_flags": "UF", "connection_security_policy": "mutual_tls", "response_code": "503",
	}
	sparse := map[string]string{"reporter": "waypoint", "response_code": "200", "response_flags": "-", "request_protocol": "http",
		"connection_security_policy": "mutual_tls", "source_workload": "unknown", "source_principal": "unknown",
		"destination_service": "unknown", "destination_workload": "unknown", "destination_principal": "unknown"}

	labels, ms := series(t, m, "istio_requests_total")
	if len(labels) != 2 {
		t.Fatalf("istio_requests_total has %d series, want 2: %v", len(labels), labels)
	}
	for i, l := range labels {
		if l["response_code"] == "503" {
			check(t, l, want, len(want))
			if c := ms[i].GetCounter().GetValue(); c != 2 {
				t.Errorf("the 503 series counts %v requests, want 2", c)
			}
		} else {
			check(t, l, sparse, len(want))
		}
	}

	for _, name := range []string{"istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"} {
		labels, ms := series(t, m, name)
		for i, l := range labels {
			if l["response_code"] != "503" {
				continue
			}
			check(t, l, want, len(want))
			h := ms[i].GetHistogram()
			if h.GetSampleCount() != 2 {
				t.Errorf("%s: %d samples, want 2", name, h.GetSampleCount())
			}
			wantSum := map[string]float64{"istio_request_duration_milliseconds": 15, "istio_request_bytes": 100, "istio_response_bytes": 2000}[name]
			if h.GetSampleSum() != wantSum {
				t.Errorf("%s: sum %v, want %v", name, h.GetSampleSum(), wantSum)
			}
		}
	}
}

func check(t *testing.T, got, want map[string]string, n int) {
	t.Helper()
	if len(got) != n {
		t.Errorf("%d labels, want %d: %v", len(got), n, got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("label %s = %q, want %q", k, got[k], v)
		}
	}
}

func TestTCP(t *testing.T) {
	m := New()
	l := &Labels{SourcePrincipal: "spiffe://cluster.local/ns/client/sa/sleep", DestinationService: "echo.ns1.svc.cluster.local", RequestProtocol: "tcp"}
	m.TCPOpen(l)
	m.TCPClose(l, 10, 20)
	for name, want := range map[string]float64{
		"istio_tcp_connections_opened_total": 1, "istio_tcp_connections_closed_total": 1,
		"istio_tcp_sent_bytes_total": 10, "istio_tcp_received_bytes_total": 20,
	} {
		labels, ms := series(t, m, name)
		if len(labels) != 1 {
			t.Fatalf("%s: %d series, want 1", name, len(labels))
		}
		if _, ok := labels[0]["response_code"]; ok {
			t.Errorf("%s has a response_code label", name)
		}
		check(t, labels[0], map[string]string{"reporter": "waypoint", "request_protocol": "tcp", "response_flags": "-",
			"destination_service": "echo.ns1.svc.cluster.local", "source_workload": "unknown"}, 19)
		if v := ms[0].GetCounter().GetValue(); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
}

func TestNilRecordsNothing(t *testing.T) {
	var m *Metrics
	m.Request(&Labels{}, time.Second, 1, 1)
	m.TCPOpen(&Labels{})
	m.TCPClose(&Labels{}, 1, 1)
}

func TestHandler(t *testing.T) {
	m := New()
	m.Request(&Labels{ResponseCode: 200}, time.Millisecond, 0, 0)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{`istio_requests_total{`, `reporter="waypoint"`, "# TYPE istio_request_duration_milliseconds histogram", "go_goroutines"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("exposition lacks %q", want)
		}
	}
}

func BenchmarkRequest(b *testing.B) {
	m := New()
	l := &Labels{SourceWorkload: "client", SourceWorkloadNamespace: "default", SourcePrincipal: "spiffe://cluster.local/ns/default/sa/client",
		DestinationService: "echo.default.svc.cluster.local", DestinationServiceName: "echo", DestinationServiceNamespace: "default",
		DestinationWorkload: "echo-v1", DestinationWorkloadNamespace: "default", RequestProtocol: "http", ResponseCode: 200}
	b.ReportAllocs()
	for b.Loop() {
		m.Request(l, time.Millisecond, 1024, 1024)
	}
}

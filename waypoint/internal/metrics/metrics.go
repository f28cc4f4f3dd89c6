// Package metrics is the waypoint's Prometheus instrumentation with Istio's names and
// labels, reporter="waypoint": istio_requests_total, istio_request_duration_milliseconds,
// istio_request_bytes and istio_response_bytes for HTTP, and the istio_tcp_* family for
// connections passed through as TCP, so Istio dashboards keep working.
//
// It records; deciding the labels of a request is the proxy's job. Empty labels are
// reported as "unknown", as Istio does.
package metrics

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Reporter is the reporter label of every waypoint metric.
const Reporter = "waypoint"

// MutualTLS is the connection_security_policy of everything the waypoint receives.
const MutualTLS = "mutual_tls"

// Labels are Istio's standard labels of one request or connection.
type Labels struct {
	SourceWorkload, SourceWorkloadNamespace, SourcePrincipal, SourceApp, SourceVersion, SourceCluster string

	DestinationService, DestinationServiceName, DestinationServiceNamespace                 string
	DestinationWorkload, DestinationWorkloadNamespace, DestinationPrincipal, DestinationApp string
	DestinationVersion, DestinationCluster                                                  string
	RequestProtocol, ResponseFlags                                                          string
	ResponseCode                                                                            int // HTTP only
}

var tcpNames = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version", "source_cluster",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
	"destination_version", "destination_cluster",
	"request_protocol", "response_flags", "connection_security_policy",
}

var httpNames = append(append([]string{}, tcpNames...), "response_code")

func unknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func (l *Labels) tcpValues() []string {
	v := []string{
		Reporter,
		l.SourceWorkload, l.SourceWorkloadNamespace, l.SourcePrincipal, l.SourceApp, l.SourceVersion, l.SourceCluster,
		l.DestinationService, l.DestinationServiceName, l.DestinationServiceNamespace,
		l.DestinationWorkload, l.DestinationWorkloadNamespace, l.DestinationPrincipal, l.DestinationApp,
		l.DestinationVersion, l.DestinationCluster,
		l.RequestProtocol, l.ResponseFlags, MutualTLS,
	}
	for i := range v {
		v[i] = unknown(v[i])
	}
	if l.ResponseFlags == "" {
		v[len(v)-2] = "-"
	}
	return v
}

func (l *Labels) httpValues() []string {
	return append(l.tcpValues(), strconv.Itoa(l.ResponseCode))
}

// Metrics holds the collectors in their own registry.
type Metrics struct {
	reg *prometheus.Registry
	// series caches each label set's collectors, so a request costs one map lookup instead
	// of four label hashes. Series are never deleted, so entries never go stale.
	series sync.Map // Labels -> *httpSeries

	requests                                *prometheus.CounterVec
	duration, reqBytes, respBytes           *prometheus.HistogramVec
	tcpOpened, tcpClosed, tcpSent, tcpRecvd *prometheus.CounterVec
}

// Istio's histogram buckets.
var (
	durationBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}
	sizeBuckets     = []float64{1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000}
)

// New registers the metrics and the Go and process collectors.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total", Help: "Total requests."}, httpNames)
	hist := func(name, help string, b []float64) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: b}, httpNames)
	}
	m.duration = hist("istio_request_duration_milliseconds", "Request duration in milliseconds.", durationBuckets)
	m.reqBytes = hist("istio_request_bytes", "Request size in bytes (headers and body).", sizeBuckets)
	m.respBytes = hist("istio_response_bytes", "Response size in bytes (headers and body).", sizeBuckets)
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, tcpNames)
	}
	m.tcpOpened = counter("istio_tcp_connections_opened_total", "The total number of TCP connections opened.")
	m.tcpClosed = counter("istio_tcp_connections_closed_total", "The total number of TCP connections closed.")
	m.tcpSent = counter("istio_tcp_sent_bytes_total", "Bytes sent to the client of a TCP connection.")
	m.tcpRecvd = counter("istio_tcp_received_bytes_total", "Bytes received from the client of a TCP connection.")
	m.reg.MustRegister(m.requests, m.duration, m.reqBytes, m.respBytes, m.tcpOpened, m.tcpClosed, m.tcpSent, m.tcpRecvd,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler { return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}) }

// Registry returns the registry, for tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Request records one HTTP request. A nil Metrics records nothing.
func (m *Metrics) Request(l *Labels, d time.Duration, reqBytes, respBytes int64) {
	if m == nil {
		return
	}
	s, ok := m.series.Load(*l)
	if !ok {
		v := l.httpValues()
		s, _ = m.series.LoadOrStore(*l, &httpSeries{
			requests: m.requests.WithLabelValues(v...), duration: m.duration.WithLabelValues(v...),
			reqBytes: m.reqBytes.WithLabelValues(v...), respBytes: m.respBytes.WithLabelValues(v...),
		})
	}
	hs := s.(*httpSeries)
	hs.requests.Inc()
	hs.duration.Observe(float64(d.Microseconds()) / 1000)
	hs.reqBytes.Observe(float64(reqBytes))
	hs.respBytes.Observe(float64(respBytes))
}

// httpSeries are the collectors of one label set.
type httpSeries struct {
	requests                      prometheus.Counter
	duration, reqBytes, respBytes prometheus.Observer
}

// TCPOpen counts an opened connection. A nil Metrics records nothing.
func (m *Metrics) TCPOpen(l *Labels) {
	if m != nil {
		m.tcpOpened.WithLabelValues(l.tcpValues()...).Inc()
	}
}

// TCPClose counts a closed connection and its bytes: sent to the client, received from it.
func (m *Metrics) TCPClose(l *Labels, sent, received int64) {
	if m == nil {
		return
	}
	v := l.tcpValues()
	m.tcpClosed.WithLabelValues(v...).Inc()
	m.tcpSent.WithLabelValues(v...).Add(float64(sent))
	m.tcpRecvd.WithLabelValues(v...).Add(float64(received))
}

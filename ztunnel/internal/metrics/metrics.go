// Package metrics is ztunnel's Prometheus instrumentation with Istio's metric and label
// names (istio_tcp_connections_opened_total, …), so dashboards and alerts written for Istio
// ambient keep working. It records; it does not decide what a connection's labels are
// beyond filling "unknown" for what the caller leaves empty.
package metrics

import (
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Reporter values: which side of the connection ztunnel reports for.
const (
	ReporterSource      = "source"
	ReporterDestination = "destination"
)

// Connection security policy values.
const (
	MutualTLS = "mutual_tls"
	Unknown   = "unknown"
)

// Labels are Istio's standard TCP metric labels. Empty values are reported as "unknown".
type Labels struct {
	Reporter string

	SourceWorkload, SourceWorkloadNamespace, SourcePrincipal, SourceApp, SourceVersion string
	SourceCanonicalService, SourceCanonicalRevision, SourceCluster                     string

	DestinationService, DestinationServiceNamespace, DestinationServiceName                           string
	DestinationWorkload, DestinationWorkloadNamespace, DestinationPrincipal, DestinationApp           string
	DestinationVersion, DestinationCanonicalService, DestinationCanonicalRevision, DestinationCluster string

	RequestProtocol, ResponseFlags, ConnectionSecurityPolicy string
}

var labelNames = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"source_canonical_service", "source_canonical_revision", "source_cluster",
	"destination_service", "destination_service_namespace", "destination_service_name",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
	"destination_version", "destination_canonical_service", "destination_canonical_revision", "destination_cluster",
	"request_protocol", "response_flags", "connection_security_policy",
}

func (l Labels) values() []string {
	v := []string{
		l.Reporter,
		l.SourceWorkload, l.SourceWorkloadNamespace, l.SourcePrincipal, l.SourceApp, l.SourceVersion,
		l.SourceCanonicalService, l.SourceCanonicalRevision, l.SourceCluster,
		l.DestinationService, l.DestinationServiceNamespace, l.DestinationServiceName,
		l.DestinationWorkload, l.DestinationWorkloadNamespace, l.DestinationPrincipal, l.DestinationApp,
		l.DestinationVersion, l.DestinationCanonicalService, l.DestinationCanonicalRevision, l.DestinationCluster,
		l.RequestProtocol, l.ResponseFlags, l.ConnectionSecurityPolicy,
	}
	for i := range v {
		if v[i] == "" {
			v[i] = Unknown
		}
	}
	return v
}

// Metrics holds ztunnel's collectors in their own registry.
type Metrics struct {
	reg                            *prometheus.Registry
	opened, closed, sent, received *prometheus.CounterVec
	active                         prometheus.Gauge
}

// New registers the TCP metrics and the Go and process collectors.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	counter := func(name, help string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labelNames)
		m.reg.MustRegister(c)
		return c
	}
	m.opened = counter("istio_tcp_connections_opened_total", "The total number of TCP connections opened.")
	m.closed = counter("istio_tcp_connections_closed_total", "The total number of TCP connections closed.")
	m.sent = counter("istio_tcp_sent_bytes_total", "The size of total bytes sent during response in case of a TCP connection.")
	m.received = counter("istio_tcp_received_bytes_total", "The size of total bytes received during request in case of a TCP connection.")
	m.active = prometheus.NewGauge(prometheus.GaugeOpts{Name: "ztunnel_active_connections", Help: "Connections ztunnel currently proxies."})
	m.reg.MustRegister(m.active, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry returns the registry, for tests and extra collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Conn records one proxied connection. Sent and Received may be called from the two copy
// directions concurrently; Close once.
type Conn struct {
	m              *Metrics
	closed         prometheus.Counter
	sent, received prometheus.Counter
	done           atomic.Bool
}

// Open counts a new connection with labels and returns its recorder.
func (m *Metrics) Open(l Labels) *Conn {
	v := l.values()
	m.opened.WithLabelValues(v...).Inc()
	m.active.Inc()
	return &Conn{m: m, closed: m.closed.WithLabelValues(v...), sent: m.sent.WithLabelValues(v...), received: m.received.WithLabelValues(v...)}
}

// Sent adds n bytes sent towards the connection's client (the response direction).
func (c *Conn) Sent(n int64) { c.sent.Add(float64(n)) }

// Received adds n bytes received from the connection's client (the request direction).
func (c *Conn) Received(n int64) { c.received.Add(float64(n)) }

// Close counts the connection as closed; later calls do nothing.
func (c *Conn) Close() {
	if c.done.CompareAndSwap(false, true) {
		c.closed.Inc()
		c.m.active.Dec()
	}
}

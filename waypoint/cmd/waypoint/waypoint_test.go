//go:build unix

package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const (
	addressType = "type.googleapis.com/istio.workload.Address"
	routeType   = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
)

// TestWaypointProcess runs the waypoint binary (this test binary as main) against a test
// CA and a test xDS server, both on unix sockets, with a backend on loopback. It checks the
// composition root: readiness only once the first configuration of both types arrived,
// Istio's metrics, a NACK that keeps the last good configuration, a later good one
// applied, and SIGTERM's drain (unready, new HBONE connections refused, the request in
// flight completed, exit 0 within the drain period).
func TestWaypointProcess(t *testing.T) {
	// Long, so "exited before the drain period ended" holds on any machine: the process
	// must end as soon as its last request does, not when the period runs out.
	const drain = 60 * time.Second
	ca := startCA(t)
	xs := startXDS(t, ca, addressType, routeType)

	slowStarted := make(chan struct{}, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			slowStarted <- struct{}{}
			time.Sleep(1500 * time.Millisecond)
		}
		_, _ = io.WriteString(w, "echo "+r.URL.Path)
	}))
	t.Cleanup(backend.Close)
	xs.set(t, routeType, echoRoutes("v1", ""))

	wp := startWaypoint(t, ca, xs.address, drain)
	wpID, clientID := mustID(t, "ns1", "waypoint"), mustID(t, "client", "client")
	clientCert := ca.workloadCert(t, clientID)

	// Route configurations are served, addresses held back (pkg/xds answers a stream's
	// types in type URL order, routes first): the certificate and one type only.
	waitFor(t, 10*time.Second, "the route configurations to be sent", func() bool { return xs.askedFor(addressType) })
	time.Sleep(300 * time.Millisecond)
	if code := wp.readinessStatus(t); code != http.StatusServiceUnavailable {
		t.Fatalf("readiness before the first addresses: %d, want 503", code)
	}

	xs.set(t, addressType, echoAddresses(netip.MustParseAddrPort(backend.Listener.Addr().String())))
	wp.waitReadiness(t, http.StatusOK)

	client := meshClient(t, ca, clientCert, clientID, wpID, wp.inbound, echoTarget)
	call := func(c *http.Client, path string) (*http.Response, string, error) {
		resp, err := c.Get("http://" + echoHost + path)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp, string(b), err
	}
	expect := func(path, config string) {
		t.Helper()
		resp, body, err := call(client, path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		if resp.StatusCode != http.StatusOK || body != "echo "+path || resp.Header.Get("X-Config") != config {
			t.Fatalf("GET %s: %d %q x-config %q, want 200 %q x-config %q", path, resp.StatusCode, body, resp.Header.Get("X-Config"), "echo "+path, config)
		}
	}
	expect("/hello", "v1")

	t.Run("metrics", func(t *testing.T) {
		code, body, err := get(wp.stats, "/metrics")
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET /metrics: %d, %v", code, err)
		}
		want := []string{`reporter="waypoint"`, `response_code="200"`, `destination_service="` + echoHost + `"`,
			`destination_service_name="echo"`, `destination_workload="echo"`, `source_principal="` + clientID.String() + `"`,
			`connection_security_policy="mutual_tls"`}
		if !hasSeries(body, "istio_requests_total", want) {
			t.Errorf("no istio_requests_total series with %q in\n%s", want, grep(body, "istio_"))
		}
		for _, name := range []string{"istio_request_duration_milliseconds_bucket", "istio_request_bytes_bucket", "istio_response_bytes_bucket"} {
			if !hasSeries(body, name, want[:2]) {
				t.Errorf("no %s series with %q", name, want[:2])
			}
		}
	})

	t.Run("NACK keeps the last good configuration", func(t *testing.T) {
		xs.set(t, routeType, echoRoutes("v2", "(unclosed"))
		waitFor(t, 10*time.Second, "a NACK naming "+echoKey, func() bool {
			for _, d := range xs.rejected() {
				if strings.Contains(d, "route configuration "+echoKey) && strings.Contains(d, "bad regex") {
					return true
				}
			}
			return false
		})
		expect("/after-nack", "v1")
		if code := wp.readinessStatus(t); code != http.StatusOK {
			t.Errorf("readiness after a NACK: %d, want 200", code)
		}
	})

	t.Run("a later good configuration applies", func(t *testing.T) {
		xs.set(t, routeType, echoRoutes("v3", ""))
		waitFor(t, 10*time.Second, "x-config v3", func() bool {
			resp, _, err := call(client, "/v3")
			return err == nil && resp.Header.Get("X-Config") == "v3"
		})
		expect("/v3", "v3")
	})

	t.Run("SIGTERM drains", func(t *testing.T) {
		type result struct {
			code int
			body string
			err  error
		}
		slow := make(chan result, 1)
		go func() {
			resp, body, err := call(client, "/slow")
			if err != nil {
				slow <- result{err: err}
				return
			}
			slow <- result{code: resp.StatusCode, body: body}
		}()
		select {
		case <-slowStarted:
		case <-time.After(10 * time.Second):
			t.Fatal("the slow request never reached the backend")
		}
		start := time.Now()
		wp.terminate(t)
		wp.waitReadiness(t, http.StatusServiceUnavailable)

		fresh := meshClient(t, ca, clientCert, clientID, wpID, wp.inbound, echoTarget)
		if resp, body, err := call(fresh, "/new"); err == nil {
			t.Errorf("a new HBONE connection while draining was served: %d %q", resp.StatusCode, body)
		}
		if c, err := net.DialTimeout("tcp", wp.inbound.String(), time.Second); err == nil {
			c.Close()
			t.Errorf("the inbound listener still accepts connections while draining")
		}

		r := <-slow
		if r.err != nil || r.code != http.StatusOK || r.body != "echo /slow" {
			t.Errorf("request in flight at SIGTERM: %d %q %v, want 200 %q", r.code, r.body, r.err, "echo /slow")
		}
		if code := wp.wait(t, drain+2*time.Second); code != 0 {
			t.Errorf("exit code %d, want 0", code)
		}
		if took := time.Since(start); took >= drain {
			t.Errorf("exited %v after SIGTERM: the drain waited out its period though nothing was in flight", took)
		}
		// The access log is written in batches; the exit flushes the last one.
		if out := wp.stdout.String(); !strings.Contains(out, `"path":"/slow"`) || !strings.Contains(out, `"path":"/v3"`) {
			t.Errorf("the access log at exit lacks the requests /v3 and /slow:\n%s", out)
		}
	})
}

// hasSeries reports whether the exposition has a sample of name carrying every label.
func hasSeries(exposition, name string, labels []string) bool {
	for _, l := range strings.Split(exposition, "\n") {
		if !strings.HasPrefix(l, name+"{") {
			continue
		}
		all := true
		for _, want := range labels {
			all = all && strings.Contains(l, want)
		}
		if all {
			return true
		}
	}
	return false
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

package proxy_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestTimeouts: the route timeout bounds the whole exchange, until the response is
// complete; per_try_timeout bounds the (only) try until the response starts, as in Envoy,
// which ignores it once response headers went downstream.
func TestTimeouts(t *testing.T) {
	e := newEnv(t, mesh())
	e.backend("v1", "10.0.0.11", id(t, "ns1", "reviews"), func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/stream") { // headers at once, the body later
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, "start ")
			http.NewResponseController(w).Flush()
		}
		delay := time.Second
		if strings.HasPrefix(r.URL.Path, "/never") {
			delay = 5 * time.Second
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(delay):
		}
		_, _ = io.WriteString(w, "done")
	})
	ms := func(d time.Duration) *durationpb.Duration { return durationpb.New(d * time.Millisecond) }
	route := func(path string, timeout, perTry *durationpb.Duration) *routev3.Route {
		a := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster("reviews-v1", 9080)}, Timeout: timeout}
		if perTry != nil {
			a.RetryPolicy = &routev3.RetryPolicy{PerTryTimeout: perTry}
		}
		return &routev3.Route{Name: path, Match: prefix(path), Action: &routev3.Route_Route{Route: a}}
	}
	rc := defaultRoutes("reviews", 9080)
	rc.GetVirtualHosts()[0].Routes = []*routev3.Route{
		route("/never-per-try", ms(0), ms(150)),
		route("/stream-per-try", ms(0), ms(400)),
		route("/stream-route", ms(400), nil),
		route("/never-route-first", ms(150), ms(5000)),
		route("/within", ms(3000), ms(2500)),
	}
	e.setRoutes(rc)
	c := e.client(id(t, "client", "sleep"), reviews)

	tests := []struct {
		path     string
		code     int
		body     string
		bodyErr  bool          // the response started, then was cut
		atLeast  time.Duration // the timeouts cannot fire sooner; the outcome says which fired
		scenario string
	}{
		{"/never-per-try", 504, "upstream request timeout", false, 150 * time.Millisecond, "no headers within per_try_timeout, no route timeout"},
		{"/stream-per-try", 200, "start done", false, time.Second, "headers within per_try_timeout, body after it"},
		{"/stream-route", 200, "", true, 400 * time.Millisecond, "the route timeout cuts a response in progress"},
		{"/never-route-first", 504, "upstream request timeout", false, 150 * time.Millisecond, "route timeout shorter than per_try_timeout"},
		{"/within", 200, "done", false, time.Second, "both longer than the response"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			start := time.Now()
			resp, err := c.Get("http://reviews.ns1.svc.cluster.local:9080" + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			took := time.Since(start)
			if resp.StatusCode != tt.code || (err != nil) != tt.bodyErr || !tt.bodyErr && string(b) != tt.body {
				t.Errorf("%s: %d %q (body error %v), want %d %q (body cut: %v)", tt.scenario, resp.StatusCode, b, err, tt.code, tt.body, tt.bodyErr)
			}
			if tt.bodyErr && tt.code == 200 && !strings.HasPrefix(string(b), "start") {
				t.Errorf("%s: the cut response had %q, want its start", tt.scenario, b)
			}
			if flags := e.accessFlags(tt.path); flags != map[bool]string{true: "UT", false: "-"}[tt.code == 504 || tt.bodyErr] {
				t.Errorf("%s: access log flags %q", tt.scenario, flags)
			}
			if took < tt.atLeast {
				t.Errorf("%s: took %v, want at least %v", tt.scenario, took, tt.atLeast)
			}
		})
	}
}

// accessFlags returns the response flags of the last access log line for path.
func (e *env) accessFlags(path string) string {
	var flags string
	for _, l := range e.logLines("request") {
		if l["path"] == path {
			flags, _ = l["flags"].(string)
		}
	}
	return flags
}

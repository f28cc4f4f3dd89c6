package l7config

import (
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestRetryPolicy(t *testing.T) {
	tests := []struct {
		name    string
		rp      *routev3.RetryPolicy
		perTry  time.Duration
		wantErr string
	}{
		{name: "none", rp: nil},
		{name: "per_try_timeout, as istiod-lite emits it", rp: &routev3.RetryPolicy{PerTryTimeout: durationpb.New(3 * time.Second)}, perTry: 3 * time.Second},
		{name: "num_retries 0 asks for nothing", rp: &routev3.RetryPolicy{NumRetries: wrapperspb.UInt32(0), PerTryTimeout: durationpb.New(time.Second)}, perTry: time.Second},
		{name: "num_retries", rp: &routev3.RetryPolicy{NumRetries: wrapperspb.UInt32(2)}, wantErr: "retries are not supported"},
		{name: "retry_on", rp: &routev3.RetryPolicy{RetryOn: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"}, wantErr: "retries are not supported"},
		{name: "retriable status codes", rp: &routev3.RetryPolicy{RetriableStatusCodes: []uint32{503}}, wantErr: "retries are not supported"},
		{name: "back off", rp: &routev3.RetryPolicy{RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Second)}}, wantErr: "retries are not supported"},
		{name: "negative per_try_timeout", rp: &routev3.RetryPolicy{PerTryTimeout: durationpb.New(-time.Second)}, wantErr: "bad per_try_timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := &routev3.RouteConfiguration{Name: "ns1/reviews", VirtualHosts: []*routev3.VirtualHost{{Name: "reviews:9080", Domains: []string{"reviews"},
				Routes: []*routev3.Route{{Name: "r", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "outbound|9080||reviews.ns1.svc.cluster.local"}, RetryPolicy: tt.rp}}}}}}}
			tab, err := Compile(rc)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "route 0 (r)") {
					t.Fatalf("err %v, want one naming the route and %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := tab.VirtualHost(9080).Routes[0].Forward.PerTryTimeout; got != tt.perTry {
				t.Errorf("PerTryTimeout %v, want %v", got, tt.perTry)
			}
		})
	}
}

package discovery

import (
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/l7config"
)

func route(t *testing.T, cluster string) *anypb.Any {
	a, err := anypb.New(&routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{Name: "h:80", Routes: []*routev3.Route{{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestHandlerNACKsAndKeepsLastGood(t *testing.T) {
	routes := l7config.NewStore()
	var firsts []string
	h := Handler(meshstate.NewStore("cluster.local"), routes, func(typeURL string) { firsts = append(firsts, typeURL) })
	if err := h(RouteType, []*xds.Resource{{Name: "ns/h", Resource: route(t, "outbound|80||h")}}, nil); err != nil {
		t.Fatal(err)
	}
	err := h(RouteType, []*xds.Resource{{Name: "ns/h", Resource: route(t, "h")}}, nil)
	if err == nil || !strings.Contains(err.Error(), "ns/h") || !strings.Contains(err.Error(), `cluster "h"`) {
		t.Fatalf("got %v, want a NACK naming ns/h and the cluster", err)
	}
	if got := routes.Current()["ns/h"]; got == nil || got.VirtualHost(80).Routes[0].Forward.Clusters[0].Cluster.Hostname != "h" {
		t.Fatal("last good configuration lost")
	}
	if err := h(AddressType, nil, nil); err != nil {
		t.Fatal(err)
	}
	if len(firsts) != 2 || firsts[0] != RouteType || firsts[1] != AddressType {
		t.Errorf("first calls %v", firsts)
	}
	if err := h("type.googleapis.com/other", nil, nil); err == nil {
		t.Error("unknown type accepted")
	}
}

func TestNode(t *testing.T) {
	n := Node("10.0.0.9", "wp-0", "ns1", "waypoint")
	if n.ID != "waypoint~10.0.0.9~wp-0.ns1~ns1.svc.cluster.local" || n.Metadata.GetFields()["GATEWAY_NAME"].GetStringValue() != "waypoint" {
		t.Errorf("node %v", n)
	}
}

package proxy_test

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestUpdateAppliesToOpenConnections: a route configuration update applies to the next
// request on a connection accepted before it, as Envoy takes the route configuration per
// request — new routes, and above all new policies, reach kept-alive clients.
func TestUpdateAppliesToOpenConnections(t *testing.T) {
	e := setup(t)
	c := e.client(id(t, "client", "sleep"), reviews)
	if resp, body := get(t, c, "/direct"); resp.StatusCode != 418 {
		t.Fatalf("before the update: %d %q, want 418", resp.StatusCode, body)
	}

	rc := reviewsRoutes(t)
	vh := rc.GetVirtualHosts()[0]
	vh.Routes = append([]*routev3.Route{{Name: "updated", Match: prefix("/direct"), Action: &routev3.Route_DirectResponse{
		DirectResponse: &routev3.DirectResponseAction{Status: 299, Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "updated"}}}}}},
		vh.Routes...)
	e.setRoutes(rc)
	if resp, body := get(t, c, "/direct"); resp.StatusCode != 299 || body != "updated" {
		t.Errorf("after a route update, same connection: %d %q, want 299 updated", resp.StatusCode, body)
	}

	rc = proto.Clone(rc).(*routev3.RouteConfiguration)
	rc.GetVirtualHosts()[0].TypedPerFilterConfig = map[string]*anypb.Any{"istio.authz.deny": rbacAny(t, rbacv3.RBAC_DENY,
		map[string]*rbacv3.Policy{"ns[ns1]-policy[deny-all]-rule[0]": {Permissions: anyPermission(), Principals: anyPrincipal()}})}
	e.setRoutes(rc)
	if resp, body := get(t, c, "/direct"); resp.StatusCode != 403 || body != "RBAC: access denied" {
		t.Errorf("after a DENY policy was added, same connection: %d %q, want 403", resp.StatusCode, body)
	}
}

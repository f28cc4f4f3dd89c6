package l7config

import (
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/ambient-lite/ambient-lite/waypoint/internal/authz"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/match"
)

// FuzzCompile feeds arbitrary RouteConfiguration bytes (as they arrive over xDS) to the
// validator: it must never panic, and what it accepts must route any request without
// panicking.
func FuzzCompile(f *testing.F) {
	seeds := []*routev3.RouteConfiguration{
		rc(&routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}, Action: fwd(v1)}),
		rc(&routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/x"}, Headers: []*routev3.HeaderMatcher{hdr(":method", "GET")}},
			Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{HostRedirect: "h"}}}),
	}
	for _, s := range seeds {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "/x?y=1", "GET")
	}
	f.Fuzz(func(t *testing.T, b []byte, path, method string) {
		cfg := &routev3.RouteConfiguration{}
		if err := proto.Unmarshal(b, cfg); err != nil {
			return
		}
		tbl, err := Compile(cfg)
		if err != nil {
			return
		}
		for _, port := range []uint16{80, 9080} {
			if vh := tbl.VirtualHost(port); vh != nil {
				r := &match.Request{Method: method, Path: path, Host: "h"}
				vh.Route(r)
				vh.Authz.Evaluate(&authz.Attributes{HTTP: true, Request: *r})
				vh.Authz.Evaluate(&authz.Attributes{})
			}
		}
	})
}

//go:build unix

package main

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambient-lite/ambient-lite/pkg/hbone"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/mtls"
)

// The mesh of the test: Service echo (VIP echoVIP, port 80) backed by one workload outside
// the mesh on loopback, so the waypoint reaches it with plain HTTP.
const (
	echoHost    = "echo.ns1.svc.cluster.local"
	echoKey     = "ns1/" + echoHost
	echoCluster = "outbound|80||" + echoHost
	echoVIP     = "127.0.10.1"
	echoTarget  = echoVIP + ":80"
)

func mustID(t *testing.T, ns, sa string) identity.ID {
	t.Helper()
	id, err := identity.New("cluster.local", ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// echoAddresses are the workload API resources of Service echo, its endpoint listening on
// backend (127.0.0.1:port).
func echoAddresses(backend netip.AddrPort) map[string]proto.Message {
	svc := &workloadapi.Service{Name: "echo", Namespace: "ns1", Hostname: echoHost,
		Addresses: []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr(echoVIP).AsSlice()}},
		Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: uint32(backend.Port())}}}
	w := &workloadapi.Workload{Uid: "cluster1//Pod/ns1/echo-1", Name: "echo-1", Namespace: "ns1", ServiceAccount: "echo",
		WorkloadName: "echo", Addresses: [][]byte{backend.Addr().AsSlice()}, TunnelProtocol: workloadapi.TunnelProtocol_NONE,
		Status:   workloadapi.WorkloadStatus_HEALTHY,
		Services: map[string]*workloadapi.PortList{echoKey: {Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: uint32(backend.Port())}}}}}
	return map[string]proto.Message{
		echoKey:    &workloadapi.Address{Type: &workloadapi.Address_Service{Service: svc}},
		w.GetUid(): &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}},
	}
}

// echoRoutes is the route configuration of Service echo as istiod-lite sends it: every
// path to echo, with header x-config: version on the responses. pathRegex, if set, is the
// first route's safe_regex path match (a bad one makes the configuration unusable).
func echoRoutes(version, pathRegex string) map[string]proto.Message {
	match := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	if pathRegex != "" {
		match.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: pathRegex}}
	}
	rc := &routev3.RouteConfiguration{Name: echoKey, VirtualHosts: []*routev3.VirtualHost{{
		Name: echoHost + ":80", Domains: []string{echoHost, echoHost + ":80"},
		Routes: []*routev3.Route{{
			Name: "default", Match: match,
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier:            &routev3.RouteAction_Cluster{Cluster: echoCluster},
				ClusterNotFoundResponseCode: routev3.RouteAction_INTERNAL_SERVER_ERROR,
			}},
			ResponseHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-config", Value: version}}},
		}},
	}}}
	return map[string]proto.Message{echoKey: rc}
}

// meshClient sends HTTP to target through the waypoint at wp, each connection one HBONE
// stream, presenting cert. Each meshClient has its own HBONE connection pool.
func meshClient(t *testing.T, ca *testCA, cert *tls.Certificate, src, wpID identity.ID, wp netip.AddrPort, target string) *http.Client {
	t.Helper()
	d, err := hbone.NewDialer(hbone.DialerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	cfg, err := mtls.ClientConfig(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }, ca.ca.Roots, wpID)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		return d.Dial(ctx, hbone.DialRequest{
			Key:     hbone.PoolKey{Source: src, Destinations: hbone.IdentitySet(wpID), DestinationIP: wp.Addr()},
			Address: wp, Target: netip.MustParseAddrPort(target), TLS: cfg,
		})
	}
	tr := &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

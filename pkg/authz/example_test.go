package authz_test

import (
	"fmt"
	"net/netip"

	"github.com/ambient-lite/ambient-lite/pkg/authz"
	"istio.io/istio/pkg/workloadapi/security"
)

// PeerAuthentication STRICT with port 9090 PERMISSIVE, as istiod compiles it for ztunnel: a
// DENY policy, listed by the workloads it selects, whose one rule ANDs notPrincipals
// [presence] with notDestinationPorts [9090].
func Example_peerAuthenticationStrict() {
	p, err := authz.New([]*security.Authorization{{
		Name:      "converted_peer_authentication_strict",
		Namespace: "default",
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		Groups: []*security.Group{{Rules: []*security.Rules{
			{Matches: []*security.Match{{NotPrincipals: []*security.StringMatch{{MatchType: &security.StringMatch_Presence{}}}}}},
			{Matches: []*security.Match{{NotDestinationPorts: []uint32{9090}}}},
		}}},
	}}, authz.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, port := range []uint16{8080, 9090} {
		d := p.Evaluate(authz.Connection{
			SourceIP:             netip.MustParseAddr("10.0.0.1"), // plaintext: no SourceIdentity
			DestinationIP:        netip.MustParseAddr("10.0.1.1"),
			DestinationPort:      port,
			DestinationNamespace: "default",
			DestinationPolicies:  []string{"default/converted_peer_authentication_strict"},
		})
		fmt.Printf("plaintext to %d: allowed=%v (%s) %s\n", port, d.Allowed, d.Reason, d.Policy)
	}
	// Output:
	// plaintext to 8080: allowed=false (matched a DENY policy) default/converted_peer_authentication_strict
	// plaintext to 9090: allowed=true (no ALLOW policy applies)
}

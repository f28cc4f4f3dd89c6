package app

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"istio.io/istio/pkg/workloadapi"
)

func TestPrefetchIdentities(t *testing.T) {
	hbone, tcp := workloadapi.TunnelProtocol_HBONE, workloadapi.TunnelProtocol_NONE
	n := byte(0)
	workload := func(ns, sa, node string, proto workloadapi.TunnelProtocol) *workloadapi.Address {
		n++
		ip := netip.AddrFrom4([4]byte{10, 0, 0, n})
		return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
			Uid: fmt.Sprint("uid-", n), Name: sa, Namespace: ns, ServiceAccount: sa, Node: node,
			Addresses: [][]byte{ip.AsSlice()}, TunnelProtocol: proto,
		}}}
	}
	store := meshstate.NewStore("cluster.local")
	if err := store.Apply([]*workloadapi.Address{
		// What ztunnel saw at start in the bug report: none of these is enrolled.
		workload("kube-system", "coredns", "node-a", tcp),
		workload("istio-system", "istiod", "node-a", tcp),
		workload("istio-system", "istio-cni", "node-a", tcp), // host network
		// Enrolled on this node: two pods of one service account, one of another.
		workload("shop", "cart", "node-a", hbone),
		workload("shop", "cart", "node-a", hbone),
		workload("shop", "pay", "node-a", hbone),
		// Enrolled elsewhere.
		workload("shop", "ads", "node-b", hbone),
	}, nil); err != nil {
		t.Fatal(err)
	}
	id := func(ns, sa string) identity.ID {
		v, err := identity.Parse("spiffe://cluster.local/ns/" + ns + "/sa/" + sa)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name, node string
		want       []identity.ID
	}{
		{"enrolled workloads of this node, each identity once", "node-a", []identity.ID{id("shop", "cart"), id("shop", "pay")}},
		{"other node", "node-b", []identity.ID{id("shop", "ads")}},
		{"node without enrolled workloads", "node-c", nil},
		{"no node name", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := prefetchIdentities(store.Snapshot(), tt.node)
			slices.SortFunc(got, func(a, b identity.ID) int { return strings.Compare(a.String(), b.String()) })
			if !slices.Equal(got, tt.want) {
				t.Errorf("prefetchIdentities(%q) = %v, want %v", tt.node, got, tt.want)
			}
		})
	}
}

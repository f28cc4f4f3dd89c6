// Package discovery feeds the waypoint from istiod-lite over delta xDS: it describes the
// waypoint as an xDS node, dials the control plane, and applies each response atomically —
// istio.workload.Address to the mesh state, envoy.config.route.v3.RouteConfiguration to the
// route tables — returning an error (a NACK naming the resource and the problem) for a
// response it cannot use, so the last good configuration stays in force.
//
// It is glue between pkg/xds and the waypoint's stores; it decides nothing about routing.
package discovery

import (
	"fmt"
	"sync"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/l7config"
)

// Type URLs the waypoint subscribes to.
const (
	AddressType = meshstate.AddressType
	RouteType   = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
)

// Node describes the waypoint as the contract says: id
// waypoint~<ip>~<pod>.<ns>~<ns>.svc.cluster.local, metadata NAME, NAMESPACE, GATEWAY_NAME.
func Node(podIP, podName, podNamespace, gateway string) *xds.Node {
	meta, _ := structpb.NewStruct(map[string]any{"NAME": podName, "NAMESPACE": podNamespace, "GATEWAY_NAME": gateway, "INSTANCE_IPS": podIP})
	return &xds.Node{ID: fmt.Sprintf("waypoint~%s~%s.%s~%s.svc.cluster.local", podIP, podName, podNamespace, podNamespace), Metadata: meta}
}

// Handler returns the xDS handler applying responses to state and routes; first is called
// once per type URL, after its first response was applied.
func Handler(state *meshstate.Store, routes *l7config.Store, first func(typeURL string)) xds.Handler {
	var seen sync.Map
	return func(typeURL string, upserts []*xds.Resource, removals []string) error {
		var err error
		switch typeURL {
		case AddressType:
			err = state.ApplyResources(upserts, removals)
		case RouteType:
			rcs := make(map[string]*routev3.RouteConfiguration, len(upserts))
			for _, r := range upserts {
				rc := &routev3.RouteConfiguration{}
				if uerr := r.Resource.UnmarshalTo(rc); uerr != nil {
					return fmt.Errorf("decoding route configuration %s: %w", r.Name, uerr)
				}
				rcs[r.Name] = rc
			}
			err = routes.Apply(rcs, removals)
		default:
			return fmt.Errorf("unexpected type %s", typeURL)
		}
		if err != nil {
			return err
		}
		if _, loaded := seen.LoadOrStore(typeURL, true); !loaded && first != nil {
			first(typeURL)
		}
		return nil
	}
}

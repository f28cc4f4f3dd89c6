package l7

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func TestHTTPRouteStatus(t *testing.T) {
	services := map[types.NamespacedName]Service{
		{Namespace: "app", Name: "web"}:  {Namespace: "app", Name: "web", Hostname: "web.app.svc.cluster.local", Ports: []int32{80}, Waypoint: types.NamespacedName{Namespace: "app", Name: "waypoint"}},
		{Namespace: "app", Name: "bare"}: {Namespace: "app", Name: "bare", Hostname: "bare.app.svc.cluster.local", Ports: []int32{80}},
	}
	tests := []struct {
		name, spec string
		want       []string // per parent: "Accepted=<status>/<reason> ResolvedRefs=... ResolvedWaypoints=<message>"
	}{
		{"valid", `{parentRefs: [{kind: Service, name: web}], rules: [{backendRefs: [{name: web, port: 80}]}]}`,
			[]string{"Accepted=True/Accepted ResolvedRefs=True/ResolvedRefs " + msgWaypointsResolved}},
		{"no waypoint", `{parentRefs: [{kind: Service, name: bare}], rules: [{backendRefs: [{name: bare, port: 80}]}]}`,
			[]string{"Accepted=True/Accepted ResolvedRefs=True/ResolvedRefs " + msgMissingUseWaypoint}},
		{"parent not found", `{parentRefs: [{kind: Service, name: gone}]}`,
			[]string{"Accepted=False/NoMatchingParent ResolvedRefs=True/ResolvedRefs " + msgParentNotFound}},
		{"gateway parents are not ours; repeats once", `{parentRefs: [{name: gw}, {kind: Service, name: web}, {kind: Service, name: web}, {kind: Service, name: web, port: 80}]}`,
			[]string{"Accepted=True/Accepted ResolvedRefs=True/ResolvedRefs " + msgWaypointsResolved, "Accepted=True/Accepted ResolvedRefs=True/ResolvedRefs " + msgWaypointsResolved}},
		{"backend not found", `{parentRefs: [{kind: Service, name: web}], rules: [{backendRefs: [{name: nope, port: 80}]}]}`,
			[]string{"Accepted=True/Accepted ResolvedRefs=False/BackendNotFound " + msgWaypointsResolved}},
		{"invalid kind", `{parentRefs: [{kind: Service, name: web}], rules: [{backendRefs: [{kind: Bucket, group: x.io, name: b, port: 80}]}]}`,
			[]string{"Accepted=True/Accepted ResolvedRefs=False/InvalidKind " + msgWaypointsResolved}},
		{"unsupported filter", `{parentRefs: [{kind: Service, name: web}], rules: [{filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: F, name: f}}], backendRefs: [{name: web, port: 80}]}]}`,
			[]string{"Accepted=True/Accepted ResolvedRefs=False/InvalidFilter " + msgWaypointsResolved}},
		{"bad regex", `{parentRefs: [{kind: Service, name: web}], rules: [{matches: [{path: {type: RegularExpression, value: "("}}], backendRefs: [{name: web, port: 80}]}]}`,
			[]string{"Accepted=False/UnsupportedValue ResolvedRefs=True/ResolvedRefs " + msgWaypointsResolved}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &gatewayv1.HTTPRoute{Spec: fromYAML[gatewayv1.HTTPRouteSpec](t, tt.spec)}
			r.Namespace, r.Name, r.Generation = "app", "r", 7
			got := HTTPRouteStatus(r, services, "")
			if len(got) != len(tt.want) {
				t.Fatalf("%d parents, want %d: %+v", len(got), len(tt.want), got)
			}
			for i, p := range got {
				if p.ControllerName != ControllerName {
					t.Errorf("controller %q", p.ControllerName)
				}
				var parts []string
				for _, c := range p.Conditions {
					if c.ObservedGeneration != 7 {
						t.Errorf("%s observedGeneration %d, want 7", c.Type, c.ObservedGeneration)
					}
					if c.Type == string(ConditionResolvedWaypoints) {
						parts = append(parts, c.Message)
						continue
					}
					parts = append(parts, c.Type+"="+string(c.Status)+"/"+c.Reason)
				}
				if s := strings.Join(parts, " "); s != tt.want[i] {
					t.Errorf("parent %d: %s\nwant %s", i, s, tt.want[i])
				}
			}
		})
	}
}

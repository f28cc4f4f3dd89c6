// Package l7 translates Kubernetes objects into a waypoint's L7 configuration, as the
// contract in waypoint/README.md defines it: Gateway API HTTPRoutes attached to Services
// (GAMMA) and L7 AuthorizationPolicies (targetRefs) become one Envoy RouteConfiguration per
// Service bound to the waypoint, named <namespace>/<hostname>, plus gateway/<ns>/<name> for
// the Gateway's own policies. It also computes the status istiod writes on mesh HTTPRoutes.
//
// The translation follows istiod (pilot/pkg/config/kube/gateway/conversion.go, then
// pilot/pkg/networking/core/route, and pilot/pkg/security/authz/builder and model), with the
// differences documented where they are made.
//
// It is pure translation: no informers, no client, no xDS, no logging. Only istiod-lite
// imports it; the controller feeds it objects and serves the resources it returns.
package l7

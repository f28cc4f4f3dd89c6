package controller

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/l7"
	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/translate"
	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// dirty is what changed since the last flush. The event handlers fill it; flush takes it.
type dirty struct {
	all        bool                // everything (first build)
	pods       map[string]struct{} // "namespace/name"
	services   map[string]struct{} // "namespace/name"
	namespaces map[string]struct{} // every pod of these namespaces
	nodes      map[string]struct{} // every pod on these nodes (their locality changed)
	slices     map[string]struct{} // EndpointSlices "namespace/name": their own workloads
	// selections are the selectors of changed Services (old and new): the pods they
	// select gain or lose the Service.
	selections []selection
	// policyNamespaces are the namespaces of changed policies: their pods' policy lists
	// may change (every pod when the root namespace is among them).
	policyNamespaces map[string]struct{}
	// serviceNamespaces are namespaces whose labels changed: every Service of theirs may
	// gain or lose its waypoint.
	serviceNamespaces map[string]struct{}
	// gateways: a Gateway or GatewayClass changed, so the waypoints are recomputed.
	gateways bool
	// routes: an HTTPRoute changed, so the waypoints' L7 configuration is recomputed.
	routes bool
}

type selection struct {
	namespace string
	selector  map[string]string
}

func newDirty() *dirty {
	return &dirty{
		pods: map[string]struct{}{}, services: map[string]struct{}{}, namespaces: map[string]struct{}{},
		nodes: map[string]struct{}{}, slices: map[string]struct{}{}, policyNamespaces: map[string]struct{}{},
		serviceNamespaces: map[string]struct{}{},
	}
}

func (d *dirty) empty() bool {
	return !d.all && len(d.pods) == 0 && len(d.services) == 0 && len(d.namespaces) == 0 &&
		len(d.nodes) == 0 && len(d.slices) == 0 && len(d.selections) == 0 && len(d.policyNamespaces) == 0 &&
		len(d.serviceNamespaces) == 0 && !d.gateways && !d.routes
}

// index is the controller's incremental state: the resources served and which object
// produced each. Only Run's goroutine touches it; readers see the immutable snapshots it
// publishes.
type index struct {
	addresses      map[string]*xds.Resource // published copy-on-write
	authorizations map[string]*xds.Resource // published copy-on-write
	podNames       map[string]string        // pod key → resource name
	serviceNames   map[string]string        // service key → resource name
	sliceNames     map[string][]string      // EndpointSlice key → resource names
	selecting      selectorIndex
	// waypoints are the usable waypoints (translate.GatewayWaypoint of every Gateway).
	waypoints translate.Waypoints
	// skipped maps objects that did not translate to the reason, so that each problem is
	// logged once rather than on every flush.
	skipped map[string]string
	// unbound maps Services whose waypoint is not used to the reason (istiod's binding
	// status), logged once likewise.
	unbound map[string]string
	// l7services are the translatable Services as the L7 translation sees them, with the
	// waypoint each is bound to (published copy-on-write; l7cloned: already copied in this
	// apply; l7changed: changed in this apply).
	l7services          map[types.NamespacedName]l7.Service
	l7cloned, l7changed bool
	// l7 are the waypoints' L7 configurations by key (published; replaced, never changed).
	l7 map[string]*waypointConfig
	// l7problems are the L7 translation's object errors, logged once (freshL7Problems: the
	// new ones of the last apply).
	l7problems, freshL7Problems map[string]string
}

func newIndex() *index {
	return &index{
		addresses: map[string]*xds.Resource{}, authorizations: map[string]*xds.Resource{},
		podNames: map[string]string{}, serviceNames: map[string]string{}, sliceNames: map[string][]string{},
		selecting: selectorIndex{}, skipped: map[string]string{}, waypoints: translate.Waypoints{},
		unbound: map[string]string{}, l7services: map[types.NamespacedName]l7.Service{},
		l7: map[string]*waypointConfig{}, l7problems: map[string]string{},
	}
}

// changes are the resource names whose version changed or that were removed, per type.
type changes map[string][]string

// apply retranslates what d marks dirty, publishes the new maps and returns the changed
// names, the newly skipped objects with their reasons, and the Services newly left without
// the waypoint they ask for, with the reason.
func (x *index) apply(c *Controller, d *dirty) (changes, map[string]string, map[string]string) {
	out := changes{}
	fresh := map[string]string{}
	freshUnbound := map[string]string{}
	unbound := func(object string, err error) {
		if err == nil {
			delete(x.unbound, object)
			return
		}
		if x.unbound[object] != err.Error() {
			freshUnbound[object] = err.Error()
		}
		x.unbound[object] = err.Error()
	}
	skip := func(object, reason string) {
		if x.skipped[object] != reason {
			fresh[object] = reason
		}
		x.skipped[object] = reason
	}
	unskip := func(object string) { delete(x.skipped, object) }
	x.l7cloned, x.l7changed, x.freshL7Problems = false, false, nil

	aps, err := c.authzs.List(labels.Everything())
	if err != nil {
		skip("AuthorizationPolicy lister", err.Error())
	}
	pas, err := c.peerAuths.List(labels.Everything())
	if err != nil {
		skip("PeerAuthentication lister", err.Error())
	}
	sortObjects(aps)
	sortObjects(pas)
	root := c.opts.Policy.Root()

	// Policies are few: any policy change retranslates all of them.
	if d.all || len(d.policyNamespaces) > 0 {
		next := map[string]*xds.Resource{}
		policies, policySkips := translate.Policies(aps, pas, c.opts.Policy)
		now := map[string]string{}
		for _, s := range policySkips {
			now[s.Policy] = s.Reason
		}
		for object := range x.skipped {
			if _, still := now[object]; isPolicyObject(object) && !still {
				unskip(object)
			}
		}
		for object, reason := range now {
			skip(object, reason)
		}
		for _, a := range policies {
			name := a.Namespace + "/" + a.Name
			r, err := resource(AuthorizationType, name, a)
			if err != nil {
				skip("Authorization "+name, err.Error())
				continue
			}
			next[name] = r
		}
		out[AuthorizationType] = changedNames(x.authorizations, next)
		x.authorizations = next
	}

	addresses := x.addresses
	cloned := false
	set := func(name string, r *xds.Resource) {
		old, ok := addresses[name]
		if r == nil && !ok || r != nil && ok && old.Version == r.Version {
			return
		}
		if !cloned {
			addresses, cloned = maps.Clone(addresses), true
		}
		if r == nil {
			delete(addresses, name)
		} else {
			addresses[name] = r
		}
		out[AddressType] = append(out[AddressType], name)
	}

	// Waypoints: recomputed from every Gateway when one changed; the objects that may be
	// bound to a waypoint that changed are retranslated.
	rebind := map[string]struct{}{} // Services
	if (d.all || d.gateways) && c.gateways != nil {
		next := x.translateWaypoints(c, skip, unskip)
		for key := range changedWaypoints(x.waypoints, next) {
			if !d.all {
				x.markBound(c, d, rebind, key)
			}
		}
		x.waypoints = next
	}
	for ns := range d.serviceNamespaces {
		list, _ := c.services.Services(ns).List(labels.Everything())
		for _, svc := range list {
			rebind[svc.Namespace+"/"+svc.Name] = struct{}{}
		}
	}

	// Services: the selector index is rebuilt (cheap: one entry per Service) whenever a
	// Service changed, then each changed Service is retranslated (and those whose waypoint
	// may have changed).
	if d.all || len(d.services) > 0 || len(rebind) > 0 {
		services, err := c.services.List(labels.Everything())
		if err != nil {
			skip("Service lister", err.Error())
		}
		x.selecting = selectorIndex{}
		for _, svc := range services {
			x.selecting.add(svc)
		}
		keys := maps.Clone(d.services)
		maps.Copy(keys, rebind)
		if d.all {
			keys = map[string]struct{}{}
			for _, svc := range services {
				keys[svc.Namespace+"/"+svc.Name] = struct{}{}
			}
		}
		for key := range keys {
			ns, name := splitKey(key)
			object := "Service " + key
			svc, err := c.services.Services(ns).Get(name)
			var s *workloadapi.Service
			ok := false
			if err == nil {
				s, ok = translate.Service(svc, c.opts.Translate)
				if !ok && svc.Spec.Type != corev1.ServiceTypeExternalName {
					skip(object, "cluster IP does not parse")
				} else {
					unskip(object)
				}
			} else {
				unskip(object)
			}
			if !ok {
				if old, had := x.serviceNames[key]; had {
					set(old, nil)
					delete(x.serviceNames, key)
				}
				unbound(object, nil)
				x.setL7Service(key, nil)
				continue
			}
			svcNS, _ := c.namespaces.Get(svc.Namespace)
			unbound(object, translate.BindServiceWaypoint(s, svc, svcNS, x.waypoints))
			w, _ := translate.ServiceWaypoint(svc, svcNS, x.waypoints) // as bound just above
			l7s := l7Service(svc, s.Hostname, w)
			x.setL7Service(key, &l7s)
			rname := s.Namespace + "/" + s.Hostname
			r, err := resource(AddressType, rname, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}})
			if err != nil {
				skip(object, err.Error())
				continue
			}
			if old, had := x.serviceNames[key]; had && old != rname {
				set(old, nil)
			}
			x.serviceNames[key] = rname
			set(rname, r)
		}
	}

	// A changed Service changes the Workloads of its EndpointSlices and the services map of
	// the pods they bind to it.
	for key := range d.services {
		for _, es := range x.slicesOf(c, indexService, key) {
			d.slices[es.Namespace+"/"+es.Name] = struct{}{}
			for _, pod := range podBindings(es) {
				d.pods[pod] = struct{}{}
			}
		}
	}

	// EndpointSlices: the Workloads of their endpoints that are not pods.
	if d.all || len(d.slices) > 0 {
		keys := d.slices
		if d.all {
			list, err := c.slices.List(labels.Everything())
			if err != nil {
				skip("EndpointSlice lister", err.Error())
			}
			keys = map[string]struct{}{}
			for key := range x.sliceNames {
				keys[key] = struct{}{}
			}
			for _, es := range list {
				keys[es.Namespace+"/"+es.Name] = struct{}{}
			}
		}
		for key := range keys {
			ns, name := splitKey(key)
			object := "EndpointSlice " + key
			var ws []*workloadapi.Workload
			var problems []string
			if es, err := c.slices.EndpointSlices(ns).Get(name); err == nil {
				var svc *corev1.Service
				if svcName, ok := translate.SliceService(es); ok {
					svc, _ = c.services.Services(ns).Get(svcName)
				}
				ws, problems = translate.EndpointSliceWorkloads(es, svc, c.opts.Translate)
			}
			if len(problems) > 0 {
				skip(object, strings.Join(problems, "; "))
			} else {
				unskip(object)
			}
			now := make([]string, 0, len(ws))
			for _, w := range ws {
				r, err := resource(AddressType, w.Uid, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}})
				if err != nil {
					skip(object, err.Error())
					continue
				}
				now = append(now, w.Uid)
				set(w.Uid, r)
			}
			for _, old := range x.sliceNames[key] {
				if !slices.Contains(now, old) {
					set(old, nil)
				}
			}
			if len(now) == 0 {
				delete(x.sliceNames, key)
			} else {
				x.sliceNames[key] = now
			}
		}
	}

	// Pods: the changed ones, those of changed namespaces and nodes, those a changed Service
	// selects or selected, and those whose policies may have changed.
	pods := map[string]*corev1.Pod{}
	gone := map[string]struct{}{}
	addPods := func(list []*corev1.Pod) {
		for _, p := range list {
			pods[p.Namespace+"/"+p.Name] = p
		}
	}
	if _, rootChanged := d.policyNamespaces[root]; d.all || rootChanged {
		list, err := c.pods.List(labels.Everything())
		if err != nil {
			skip("Pod lister", err.Error())
		}
		addPods(list)
		for key := range x.podNames {
			if _, ok := pods[key]; !ok {
				gone[key] = struct{}{}
			}
		}
	} else {
		for ns := range d.namespaces {
			list, _ := c.pods.Pods(ns).List(labels.Everything())
			addPods(list)
		}
		for ns := range d.policyNamespaces {
			list, _ := c.pods.Pods(ns).List(labels.Everything())
			addPods(list)
		}
		for node := range d.nodes {
			list, _ := c.podsByNode.ByIndex(indexNode, node)
			for _, obj := range list {
				if p, ok := obj.(*corev1.Pod); ok {
					pods[p.Namespace+"/"+p.Name] = p
				}
			}
		}
		for _, s := range d.selections {
			if len(s.selector) == 0 {
				continue
			}
			list, _ := c.pods.Pods(s.namespace).List(labels.SelectorFromSet(s.selector))
			addPods(list)
		}
	}
	for key := range d.pods {
		ns, name := splitKey(key)
		p, err := c.pods.Pods(ns).Get(name)
		if err != nil {
			delete(pods, key)
			gone[key] = struct{}{}
			continue
		}
		pods[key] = p
	}
	for key := range gone {
		if old, had := x.podNames[key]; had {
			set(old, nil)
			delete(x.podNames, key)
		}
		unskip("Pod " + key)
	}
	for key, pod := range pods {
		ns, _ := c.namespaces.Get(pod.Namespace)
		in := translate.PodInputs{Pod: enrolled(pod, ns), Namespace: ns, Services: x.selecting.candidates(pod), Waypoints: x.waypoints}
		if pod.Spec.NodeName != "" {
			in.Node, _ = c.nodes.Get(pod.Spec.NodeName)
		}
		in.EndpointSlices = x.slicesOf(c, indexPod, key)
		for _, es := range in.EndpointSlices {
			if name, ok := translate.SliceService(es); ok {
				if svc, err := c.services.Services(es.Namespace).Get(name); err == nil {
					in.Services = append(in.Services, svc)
				}
			}
		}
		w, ok := translate.Workload(in, c.opts.Translate)
		if !ok { // no IP yet, or finished: not a workload (not an error)
			if old, had := x.podNames[key]; had {
				set(old, nil)
				delete(x.podNames, key)
			}
			unskip("Pod " + key)
			continue
		}
		w.AuthorizationPolicies = translate.WorkloadPolicies(pod.Namespace, pod.Labels, aps, pas, c.opts.Policy)
		if pod.Spec.HostNetwork {
			// As istiod: the address is the node's, shared with everything on the host.
			w.NetworkMode = workloadapi.NetworkMode_HOST_NETWORK
		}
		r, err := resource(AddressType, w.Uid, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}})
		if err != nil {
			skip("Pod "+key, err.Error())
			continue
		}
		unskip("Pod " + key)
		if old, had := x.podNames[key]; had && old != w.Uid {
			set(old, nil)
		}
		x.podNames[key] = w.Uid
		set(w.Uid, r)
	}
	x.addresses = addresses

	// The waypoints' L7 configuration.
	if c.gateways != nil && (d.all || d.gateways || d.routes || len(d.policyNamespaces) > 0 || x.l7changed) {
		names, problems := x.applyL7(c, aps, skip)
		out[RouteType] = names
		for object, reason := range problems {
			if x.l7problems[object] != reason {
				if x.freshL7Problems == nil {
					x.freshL7Problems = map[string]string{}
				}
				x.freshL7Problems[object] = reason
			}
		}
		x.l7problems = problems
	}
	return out, fresh, freshUnbound
}

// translateWaypoints translates every Gateway, reporting each one's problems as a skip
// reason of "Gateway namespace/name".
func (x *index) translateWaypoints(c *Controller, skip func(object, reason string), unskip func(object string)) translate.Waypoints {
	gws, err := c.gateways.List(labels.Everything())
	if err != nil {
		skip("Gateway lister", err.Error())
	}
	next := translate.Waypoints{}
	seen := map[string]struct{}{}
	for _, gw := range gws {
		object := "Gateway " + gw.Namespace + "/" + gw.Name
		seen[object] = struct{}{}
		class, _ := c.gatewayClasses.Get(string(gw.Spec.GatewayClassName))
		w, problems := translate.GatewayWaypoint(gw, class, c.opts.Translate)
		if len(problems) > 0 {
			skip(object, strings.Join(problems, "; "))
		} else {
			unskip(object)
		}
		if w != nil {
			next[w.Key()] = w
		}
	}
	for object := range x.skipped {
		if _, ok := seen[object]; strings.HasPrefix(object, "Gateway ") && object != "Gateway lister" && !ok {
			unskip(object)
		}
	}
	return next
}

// changedWaypoints are the keys of the waypoints added, removed or changed from a to b.
func changedWaypoints(a, b translate.Waypoints) map[string]struct{} {
	out := map[string]struct{}{}
	for key, w := range b {
		if !w.Equal(a[key]) {
			out[key] = struct{}{}
		}
	}
	for key := range a {
		if _, ok := b[key]; !ok {
			out[key] = struct{}{}
		}
	}
	return out
}

// markBound marks what may be bound to the waypoint key ("namespace/name"), over-inclusively
// by name: the Services (into rebind) and pods labelled istio.io/use-waypoint=<name> in any
// namespace, the Services and pods of namespaces so labelled, and the waypoint's own pods
// (gateway.networking.k8s.io/gateway-name=<name> in its namespace).
func (x *index) markBound(c *Controller, d *dirty, rebind map[string]struct{}, key string) {
	wpNS, name := splitKey(key)
	byName := labels.SelectorFromSet(labels.Set{translate.LabelUseWaypoint: name})
	svcs, _ := c.services.List(byName)
	for _, svc := range svcs {
		rebind[svc.Namespace+"/"+svc.Name] = struct{}{}
	}
	pods, _ := c.pods.List(byName)
	for _, p := range pods {
		d.pods[p.Namespace+"/"+p.Name] = struct{}{}
	}
	nss, _ := c.namespaces.List(byName)
	for _, ns := range nss {
		d.namespaces[ns.Name] = struct{}{}
		list, _ := c.services.Services(ns.Name).List(labels.Everything())
		for _, svc := range list {
			rebind[svc.Namespace+"/"+svc.Name] = struct{}{}
		}
	}
	own, _ := c.pods.Pods(wpNS).List(labels.SelectorFromSet(labels.Set{translate.LabelGatewayName: name}))
	for _, p := range own {
		d.pods[p.Namespace+"/"+p.Name] = struct{}{}
	}
}

// slicesOf returns the cached EndpointSlices filed under key in the named index.
func (x *index) slicesOf(c *Controller, indexName, key string) []*discoveryv1.EndpointSlice {
	objs, _ := c.slicesBy.ByIndex(indexName, key)
	out := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, obj := range objs {
		if es, ok := obj.(*discoveryv1.EndpointSlice); ok {
			out = append(out, es)
		}
	}
	return out
}

// changedNames lists the names whose version differs between a and b, or that only one has.
func changedNames(a, b map[string]*xds.Resource) []string {
	var out []string
	for name, r := range b {
		if old, ok := a[name]; !ok || old.Version != r.Version {
			out = append(out, name)
		}
	}
	for name := range a {
		if _, ok := b[name]; !ok {
			out = append(out, name)
		}
	}
	return out
}

func isPolicyObject(object string) bool {
	for _, prefix := range []string{"AuthorizationPolicy ", "PeerAuthentication ", "Authorization "} {
		if strings.HasPrefix(object, prefix) {
			return true
		}
	}
	return false
}

func splitKey(key string) (namespace, name string) {
	namespace, name, _ = cache.SplitMetaNamespaceKey(key)
	return namespace, name
}

// sortObjects orders policies by namespace and name, so the translation, whose ties go to
// the first in the list, does not depend on the lister's map order.
func sortObjects[T interface {
	GetNamespace() string
	GetName() string
}](objs []T) {
	sort.Slice(objs, func(i, j int) bool {
		if objs[i].GetNamespace() != objs[j].GetNamespace() {
			return objs[i].GetNamespace() < objs[j].GetNamespace()
		}
		return objs[i].GetName() < objs[j].GetName()
	})
}

// resource marshals m deterministically; its version is a short hash of those bytes.
func resource(typeURL, name string, m proto.Message) (*xds.Resource, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshalling %s %s: %w", typeURL, name, err)
	}
	sum := sha256.Sum256(b)
	return &xds.Resource{
		Name:     name,
		Version:  hex.EncodeToString(sum[:8]),
		Resource: &anypb.Any{TypeUrl: typeURL, Value: b},
	}, nil
}

// policyKeys are the namespaces of policies, for the dirty set.
func policyNamespace(obj any) (string, bool) {
	switch p := obj.(type) {
	case *securityclient.AuthorizationPolicy:
		return p.Namespace, true
	case *securityclient.PeerAuthentication:
		return p.Namespace, true
	}
	return "", false
}

// Package controller is istiod-lite's xDS glue: it watches Namespaces, Nodes, Pods,
// Services, EndpointSlices, AuthorizationPolicies, PeerAuthentications, and Gateway API
// Gateways, GatewayClasses (waypoints) and HTTPRoutes through informers, retranslates only
// what each change touches into istio.workload.Address and istio.security.Authorization
// resources with the pure translate package, and the waypoints' L7 configuration
// (envoy.config.route.v3.RouteConfiguration) with the pure l7 package (at most one flush per
// debounce period; a change after a quiet period at once), and serves them to pkg/xds as
// Sources, pushing only the names that changed. RouteConfigurations go only to a waypoint's
// own streams (see entitled). It is not the xDS protocol (pkg/xds) nor the translation
// (translate, l7); only istiod-lite's composition root imports it.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	securitylisters "istio.io/client-go/pkg/listers/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
	gatewaylisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/l7"
	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/translate"
	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"github.com/ambient-lite/ambient-lite/pkg/xds/xdsserver"
)

// Type URLs of the resources the controller serves (Istio's).
const (
	AddressType       = "type.googleapis.com/istio.workload.Address"
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"
)

// DefaultDebounce is the shortest time between two flushes: changes that arrive within it
// of the last flush are applied together at its end; a change after a quiet period is
// applied at once.
const DefaultDebounce = 20 * time.Millisecond

// Pusher is told which type URLs changed after a rebuild; *xdsserver.Server implements it.
type Pusher interface {
	Push(typeURL string, names []string)
}

// Options configure a Controller.
type Options struct {
	// Kube provides the Namespace, Node, Pod, Service and EndpointSlice informers. Required;
	// the caller starts it
	// (after New) and shuts it down.
	Kube informers.SharedInformerFactory
	// Istio provides the AuthorizationPolicy and PeerAuthentication informers. Required; the
	// caller starts it (after New) and shuts it down.
	Istio istioinformers.SharedInformerFactory
	// Gateway provides the Gateway API v1 Gateway, GatewayClass and HTTPRoute informers,
	// from which the waypoints are found (see translate.GatewayWaypoint) and their L7
	// configuration built. The caller starts it (after New) and shuts it down; the Gateway
	// API CRDs must be installed (the informers sync before the first snapshot). If nil, no
	// waypoint is known: no Service or Workload gets the waypoint field, and no stream gets
	// a RouteConfiguration.
	Gateway gatewayinformers.SharedInformerFactory
	// Translate are the mesh settings of workloads and services. The zero value is Istio's
	// default single-cluster mesh.
	Translate translate.Options
	// Policy are the mesh settings of security policies. The zero value is Istio's default.
	Policy translate.PolicyOptions
	// Pusher is told, after each flush, the names that changed per type URL. If nil,
	// nothing is pushed (clients only see changes on their next request).
	Pusher Pusher
	// ServicesChanged is called after a flush that changed L7Services (a Service added,
	// removed, re-ported or bound to another waypoint), from Run's goroutine; it must not
	// block. If nil, nothing is called.
	ServicesChanged func()
	// Debounce is the shortest time between two flushes. Zero means DefaultDebounce.
	Debounce time.Duration
	// Log receives translation problems. If nil, slog.Default().
	Log *slog.Logger
}

// Controller builds the snapshots and serves them. Create it with New, start the informer
// factories, then Run it; Ready is closed once the first snapshot exists.
type Controller struct {
	opts Options
	log  *slog.Logger

	namespaces corelisters.NamespaceLister
	nodes      corelisters.NodeLister
	pods       corelisters.PodLister
	services   corelisters.ServiceLister
	slices     discoverylisters.EndpointSliceLister
	// podsByNode and slicesBy index the pod and EndpointSlice caches (see the index names).
	podsByNode cache.Indexer
	slicesBy   cache.Indexer
	authzs     securitylisters.AuthorizationPolicyLister
	peerAuths  securitylisters.PeerAuthenticationLister
	// gateways and gatewayClasses are nil without Options.Gateway.
	gateways       gatewaylisters.GatewayLister
	gatewayClasses gatewaylisters.GatewayClassLister
	httpRoutes     gatewaylisters.HTTPRouteLister
	synced         []cache.InformerSynced

	kick  chan struct{}
	ready chan struct{}
	snap  atomic.Pointer[snapshot]

	mu    sync.Mutex // guards dirty
	dirty *dirty

	// idx is the incremental state; only Run's goroutine touches it.
	idx *index
}

// snapshot is one immutable build: resources by name, per type URL; the waypoints' L7
// configurations by waypoint key ("namespace/name"); the Services as L7 sees them.
type snapshot struct {
	byType   map[string]map[string]*xds.Resource
	routes   map[string]*waypointConfig
	services map[types.NamespacedName]l7.Service
}

// New registers the informers and their event handlers.
func New(opts Options) (*Controller, error) {
	if opts.Kube == nil || opts.Istio == nil {
		return nil, errors.New("controller: Kube and Istio informer factories are required")
	}
	if opts.Debounce <= 0 {
		opts.Debounce = DefaultDebounce
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	c := &Controller{
		opts: opts, log: log,
		kick:  make(chan struct{}, 1),
		ready: make(chan struct{}),
		dirty: newDirty(),
		idx:   newIndex(),
	}
	c.dirty.all = true
	core := opts.Kube.Core().V1()
	sec := opts.Istio.Security().V1()
	slices := opts.Kube.Discovery().V1().EndpointSlices()
	if err := core.Pods().Informer().SetTransform(slimPod); err != nil {
		return nil, fmt.Errorf("slimming cached pods: %w", err)
	}
	if err := core.Nodes().Informer().SetTransform(slimNode); err != nil {
		return nil, fmt.Errorf("slimming cached nodes: %w", err)
	}
	if err := core.Pods().Informer().AddIndexers(cache.Indexers{indexNode: podNode}); err != nil {
		return nil, fmt.Errorf("indexing pods by node: %w", err)
	}
	if err := slices.Informer().AddIndexers(cache.Indexers{indexService: sliceService, indexPod: slicePods}); err != nil {
		return nil, fmt.Errorf("indexing endpoint slices: %w", err)
	}
	type watch struct {
		inf  cache.SharedIndexInformer
		mark func(d *dirty, old, obj any)
	}
	handlers := []watch{
		{core.Namespaces().Informer(), markNamespace},
		{core.Pods().Informer(), func(d *dirty, _, obj any) {
			if p, ok := obj.(*corev1.Pod); ok {
				d.pods[p.Namespace+"/"+p.Name] = struct{}{}
			}
		}},
		{core.Services().Informer(), func(d *dirty, old, obj any) {
			for _, o := range []any{old, obj} {
				if svc, ok := o.(*corev1.Service); ok {
					d.services[svc.Namespace+"/"+svc.Name] = struct{}{}
					d.selections = append(d.selections, selection{svc.Namespace, svc.Spec.Selector})
				}
			}
		}},
		{core.Nodes().Informer(), markNode},
		{slices.Informer(), markSlice},
		{sec.AuthorizationPolicies().Informer(), markPolicy},
		{sec.PeerAuthentications().Informer(), markPolicy},
	}
	if opts.Gateway != nil {
		gw := opts.Gateway.Gateway().V1()
		// Gateways are few: any change recomputes every waypoint, and only the objects bound
		// to a waypoint that changed are retranslated (see index.apply).
		markGateways := func(d *dirty, _, _ any) { d.gateways = true }
		handlers = append(handlers,
			watch{gw.Gateways().Informer(), markGateways},
			watch{gw.GatewayClasses().Informer(), markGateways},
			watch{gw.HTTPRoutes().Informer(), markRoute})
		c.gateways = gw.Gateways().Lister()
		c.gatewayClasses = gw.GatewayClasses().Lister()
		c.httpRoutes = gw.HTTPRoutes().Lister()
	}
	for _, h := range handlers {
		reg, err := h.inf.AddEventHandler(c.handler(h.mark))
		if err != nil {
			return nil, fmt.Errorf("registering an event handler: %w", err)
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	c.namespaces = core.Namespaces().Lister()
	c.nodes = core.Nodes().Lister()
	c.pods = core.Pods().Lister()
	c.services = core.Services().Lister()
	c.slices = slices.Lister()
	c.podsByNode = core.Pods().Informer().GetIndexer()
	c.slicesBy = slices.Informer().GetIndexer()
	c.authzs = sec.AuthorizationPolicies().Lister()
	c.peerAuths = sec.PeerAuthentications().Lister()
	return c, nil
}

// markNamespace marks the namespace's pods; when its labels changed (istio.io/use-waypoint,
// or labels a waypoint's allowedRoutes selector reads), its Services too.
func markNamespace(d *dirty, old, obj any) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return
	}
	d.namespaces[ns.Name] = struct{}{}
	if o, ok := old.(*corev1.Namespace); !ok || !maps.Equal(o.Labels, ns.Labels) {
		d.serviceNamespaces[ns.Name] = struct{}{}
	}
}

// markRoute marks the L7 configuration for retranslation, unless the event is a resync.
func markRoute(d *dirty, old, obj any) {
	r, ok := obj.(*gatewayv1.HTTPRoute)
	if !ok {
		return
	}
	if o, ok := old.(*gatewayv1.HTTPRoute); ok && o.ResourceVersion == r.ResourceVersion && r.ResourceVersion != "" {
		return
	}
	d.routes = true
}

func markPolicy(d *dirty, _, obj any) {
	if ns, ok := policyNamespace(obj); ok {
		d.policyNamespaces[ns] = struct{}{}
	}
}

// markNode marks a node whose locality may have changed: the pods on it are retranslated.
// Nodes are updated often (status, leases) but their locality labels almost never change.
func markNode(d *dirty, old, obj any) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	if o, ok := old.(*corev1.Node); ok && proto.Equal(translate.Locality(o), translate.Locality(n)) {
		return
	}
	d.nodes[n.Name] = struct{}{}
}

// markSlice marks the slice (its own Workloads) and the pods whose binding to a Service
// through it was added or removed; a readiness change of a pod endpoint touches no pod.
func markSlice(d *dirty, old, obj any) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	var before map[string]string
	if o, ok := old.(*discoveryv1.EndpointSlice); ok {
		if o.ResourceVersion == es.ResourceVersion && o.ResourceVersion != "" {
			return // a resync: nothing changed
		}
		before = podBindings(o)
	}
	d.slices[es.Namespace+"/"+es.Name] = struct{}{}
	now := podBindings(es)
	for _, pair := range [][2]map[string]string{{now, before}, {before, now}} {
		for binding, pod := range pair[0] {
			if _, ok := pair[1][binding]; !ok {
				d.pods[pod] = struct{}{}
			}
		}
	}
}

// podBindings are the (pod, UID, Service) bindings the slice makes: binding → pod key.
func podBindings(es *discoveryv1.EndpointSlice) map[string]string {
	svc, ok := translate.SliceService(es)
	if !ok {
		return nil
	}
	out := map[string]string{}
	for _, ep := range es.Endpoints {
		if ref := ep.TargetRef; ref != nil && ref.Kind == "Pod" {
			pod := ref.Namespace + "/" + ref.Name
			out[pod+"\x00"+string(ref.UID)+"\x00"+es.Namespace+"/"+svc] = pod
		}
	}
	return out
}

// handler records each event in the dirty set and kicks Run.
func (c *Controller) handler(mark func(d *dirty, old, obj any)) cache.ResourceEventHandler {
	record := func(old, obj any) {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		c.mu.Lock()
		mark(c.dirty, old, obj)
		empty := c.dirty.empty()
		c.mu.Unlock()
		if !empty {
			c.trigger()
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { record(nil, obj) },
		UpdateFunc: func(old, obj any) { record(old, obj) },
		DeleteFunc: func(obj any) { record(nil, obj) },
	}
}

func (c *Controller) trigger() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Ready is closed once the informers have synced and the first snapshot is built.
func (c *Controller) Ready() <-chan struct{} { return c.ready }

// Run waits for the informers to sync, builds the first snapshot, then applies changes
// until ctx ends, at most once per Debounce: a change after a quiet period at once, the
// changes that arrive within Debounce of a flush together at its end. Each flush is
// incremental, so a steady stream of changes elsewhere (EndpointSlice churn, say) never
// holds a change back for more than Debounce. It returns ctx's error only if the informers
// never synced.
func (c *Controller) Run(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return fmt.Errorf("waiting for the controller's informers: %w", ctx.Err())
	}
	// Drain the kicks of the initial list: the first build sees all of it.
	select {
	case <-c.kick:
	default:
	}
	c.flush()
	close(c.ready)
	var (
		timer = time.NewTimer(time.Hour)
		fire  <-chan time.Time
		last  = time.Now()
	)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.kick:
			if fire != nil {
				continue // a flush is already due
			}
			if wait := c.opts.Debounce - time.Since(last); wait > 0 {
				timer.Reset(wait)
				fire = timer.C
				continue
			}
			c.flush()
			last = time.Now()
		case <-fire:
			fire = nil
			c.flush()
			last = time.Now()
		}
	}
}

// flush applies the pending changes, publishes the new snapshot and pushes the names
// that changed.
func (c *Controller) flush() {
	c.mu.Lock()
	d := c.dirty
	c.dirty = newDirty()
	c.mu.Unlock()
	if d.empty() && c.snap.Load() != nil {
		return
	}
	changed, skipped, notes := c.idx.apply(c, d)
	servicesChanged := c.idx.l7changed
	c.snap.Store(&snapshot{byType: map[string]map[string]*xds.Resource{
		AddressType:       c.idx.addresses,
		AuthorizationType: c.idx.authorizations,
	}, routes: c.idx.l7, services: c.idx.l7services})
	for object, reason := range skipped {
		c.log.Warn("object skipped by translation", "object", object, "reason", reason)
	}
	for object, reason := range notes {
		c.log.Info("waypoint not bound", "object", object, "reason", reason)
	}
	for object, reason := range c.idx.freshL7Problems {
		c.log.Warn("waypoint configuration problem", "object", object, "reason", reason)
	}
	if servicesChanged && c.opts.ServicesChanged != nil {
		c.opts.ServicesChanged()
	}
	if c.opts.Pusher == nil {
		return
	}
	for _, typeURL := range []string{AddressType, AuthorizationType, RouteType} {
		if names := changed[typeURL]; len(names) > 0 {
			c.opts.Pusher.Push(typeURL, names)
		}
	}
}

// enrolled returns pod, or for a pod outside the ambient mesh a copy that translate.Workload
// accepts: istiod sends every pod with an IP, and a pod outside the mesh simply keeps the
// TCP tunnel protocol (it carries no redirection annotation). The copy is labelled
// istio.io/dataplane-mode=ambient, which no translated field reads, and loses hostNetwork and
// the sidecar status annotation, which only InMesh reads.
func enrolled(pod *corev1.Pod, ns *corev1.Namespace) *corev1.Pod {
	if translate.InMesh(pod, ns) {
		return pod
	}
	cp := pod.DeepCopy()
	if cp.Labels == nil {
		cp.Labels = map[string]string{}
	}
	cp.Labels["istio.io/dataplane-mode"] = "ambient"
	delete(cp.Annotations, "sidecar.istio.io/status")
	cp.Spec.HostNetwork = false
	return cp
}

// Sources returns the xds.Sources of the three type URLs, answered from the current
// snapshot. A stream asking before the first snapshot waits for it (or for its own end), so
// a proxy reconnecting to a fresh istiod-lite is never told its resources are gone.
// RouteType answers each stream with the configuration of the waypoint it is entitled to.
func (c *Controller) Sources() map[string]xdsserver.Source {
	return map[string]xdsserver.Source{
		AddressType:       source{c: c, typeURL: AddressType},
		AuthorizationType: source{c: c, typeURL: AuthorizationType},
		RouteType:         routeSource{c: c},
	}
}

type source struct {
	c       *Controller
	typeURL string
}

var _ xdsserver.Source = source{}

// Generate implements xdsserver.Source.
func (s source) Generate(ctx context.Context, req *xdsserver.Request) (*xdsserver.Delta, error) {
	select {
	case <-s.c.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return xdsserver.Diff(s.c.snap.Load().byType[s.typeURL], req), nil
}

// selectorIndex finds the Services that may select a pod without checking every Service of
// its namespace: each Service is filed under one label pair of its selector (its anchor), so
// a Service that selects a pod is always among the Services filed under the pod's own label
// pairs. translate.Workload still checks the whole selector.
type selectorIndex map[string][]*corev1.Service // "namespace\x00key\x00value" → services

func newSelectorIndex() selectorIndex { return selectorIndex{} }

func (x selectorIndex) add(svc *corev1.Service) {
	if len(svc.Spec.Selector) == 0 {
		return // selects nothing
	}
	anchor := ""
	for k := range svc.Spec.Selector {
		if anchor == "" || k < anchor {
			anchor = k
		}
	}
	key := svc.Namespace + "\x00" + anchor + "\x00" + svc.Spec.Selector[anchor]
	x[key] = append(x[key], svc)
}

func (x selectorIndex) candidates(pod *corev1.Pod) []*corev1.Service {
	var out []*corev1.Service
	for k, v := range pod.Labels {
		out = append(out, x[pod.Namespace+"\x00"+k+"\x00"+v]...)
	}
	return out
}

// Cache index names.
const (
	indexNode    = "node"    // pods by spec.nodeName
	indexService = "service" // EndpointSlices by "namespace/service" (see translate.SliceService)
	indexPod     = "pod"     // EndpointSlices by "namespace/name" of the pods their endpoints name
)

func podNode(obj any) ([]string, error) {
	if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
		return []string{p.Spec.NodeName}, nil
	}
	return nil, nil
}

func sliceService(obj any) ([]string, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	if svc, ok := translate.SliceService(es); ok {
		return []string{es.Namespace + "/" + svc}, nil
	}
	return nil, nil
}

func slicePods(obj any) ([]string, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	seen := map[string]struct{}{}
	var out []string
	for _, pod := range podBindings(es) {
		if _, dup := seen[pod]; !dup {
			seen[pod] = struct{}{}
			out = append(out, pod)
		}
	}
	return out, nil
}

// slimNode keeps a node's name, UID, resource version and labels: its locality is all the
// translation reads, and node objects (status, images, conditions) are large.
func slimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	slim := &corev1.Node{TypeMeta: n.TypeMeta}
	slim.Name = n.Name
	slim.UID = n.UID
	slim.ResourceVersion = n.ResourceVersion
	slim.Labels = n.Labels
	return slim, nil
}

// slimPod keeps what the translation reads of a pod (its metadata without managed fields,
// node, service account, host networking, container ports, phase, IPs and conditions), to
// bound the cache on large clusters. Anything else is dropped before it is stored.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	slim := &corev1.Pod{TypeMeta: p.TypeMeta, ObjectMeta: p.ObjectMeta}
	slim.ManagedFields = nil
	slim.Spec.HostNetwork = p.Spec.HostNetwork
	slim.Spec.NodeName = p.Spec.NodeName
	slim.Spec.ServiceAccountName = p.Spec.ServiceAccountName
	slim.Spec.Containers = slimContainers(p.Spec.Containers)
	slim.Spec.InitContainers = slimContainers(p.Spec.InitContainers)
	slim.Status.Phase = p.Status.Phase
	slim.Status.PodIP = p.Status.PodIP
	slim.Status.PodIPs = p.Status.PodIPs
	slim.Status.Conditions = p.Status.Conditions
	return slim, nil
}

func slimContainers(cs []corev1.Container) []corev1.Container {
	var out []corev1.Container
	for _, c := range cs {
		if len(c.Ports) == 0 && c.RestartPolicy == nil {
			continue
		}
		out = append(out, corev1.Container{Name: c.Name, Ports: c.Ports, RestartPolicy: c.RestartPolicy})
	}
	return out
}

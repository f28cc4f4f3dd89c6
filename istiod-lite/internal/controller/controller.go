// Package controller is istiod-lite's xDS glue: it watches Namespaces, Pods, Services,
// AuthorizationPolicies and PeerAuthentications through informers, rebuilds full snapshots
// of istio.workload.Address and istio.security.Authorization resources with the pure
// translate package whenever anything changes (debounced), and serves them to pkg/xds as
// Sources. It is not the xDS protocol (pkg/xds) nor the translation (translate); only
// istiod-lite's composition root imports it.
package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"sync/atomic"
	"time"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/translate"
	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	securitylisters "istio.io/client-go/pkg/listers/security/v1"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Type URLs of the resources the controller serves (Istio's).
const (
	AddressType       = "type.googleapis.com/istio.workload.Address"
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"
)

// DefaultDebounce is how long the controller waits for quiet before rebuilding.
const DefaultDebounce = 50 * time.Millisecond

// maxDebounceDelay bounds how long a stream of changes can hold a rebuild.
const maxDebounceDelay = time.Second

// Pusher is told which type URLs changed after a rebuild; *xds.Server implements it.
type Pusher interface {
	Push(typeURL string, names []string)
}

// Options configure a Controller.
type Options struct {
	// Kube provides the Namespace, Pod and Service informers. Required; the caller starts it
	// (after New) and shuts it down.
	Kube informers.SharedInformerFactory
	// Istio provides the AuthorizationPolicy and PeerAuthentication informers. Required; the
	// caller starts it (after New) and shuts it down.
	Istio istioinformers.SharedInformerFactory
	// Translate are the mesh settings of workloads and services. The zero value is Istio's
	// default single-cluster mesh.
	Translate translate.Options
	// Policy are the mesh settings of security policies. The zero value is Istio's default.
	Policy translate.PolicyOptions
	// Pusher is told, after each rebuild, the type URLs whose snapshot changed. If nil,
	// nothing is pushed (clients only see changes on their next request).
	Pusher Pusher
	// Debounce is how long to wait for quiet before rebuilding. Zero means DefaultDebounce.
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
	pods       corelisters.PodLister
	services   corelisters.ServiceLister
	authzs     securitylisters.AuthorizationPolicyLister
	peerAuths  securitylisters.PeerAuthenticationLister
	synced     []cache.InformerSynced

	kick  chan struct{}
	ready chan struct{}
	snap  atomic.Pointer[snapshot]

	// skipped is the last rebuild's skipped objects and their reasons, so that each
	// problem is logged once rather than on every rebuild. Only Run touches it.
	skipped map[string]string
}

// snapshot is one immutable build: resources by name, per type URL.
type snapshot struct {
	byType map[string]map[string]*xds.Resource
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
		kick:    make(chan struct{}, 1),
		ready:   make(chan struct{}),
		skipped: map[string]string{},
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.trigger() },
		UpdateFunc: func(any, any) { c.trigger() },
		DeleteFunc: func(any) { c.trigger() },
	}
	type informer interface {
		Informer() cache.SharedIndexInformer
	}
	core := opts.Kube.Core().V1()
	sec := opts.Istio.Security().V1()
	for _, inf := range []informer{core.Namespaces(), core.Pods(), core.Services(), sec.AuthorizationPolicies(), sec.PeerAuthentications()} {
		reg, err := inf.Informer().AddEventHandler(handler)
		if err != nil {
			return nil, fmt.Errorf("registering an event handler: %w", err)
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	c.namespaces = core.Namespaces().Lister()
	c.pods = core.Pods().Lister()
	c.services = core.Services().Lister()
	c.authzs = sec.AuthorizationPolicies().Lister()
	c.peerAuths = sec.PeerAuthentications().Lister()
	return c, nil
}

func (c *Controller) trigger() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Ready is closed once the informers have synced and the first snapshot is built.
func (c *Controller) Ready() <-chan struct{} { return c.ready }

// Run waits for the informers to sync, builds the first snapshot, then rebuilds after every
// quiet period following a change, until ctx ends. It returns ctx's error only if the
// informers never synced.
func (c *Controller) Run(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return fmt.Errorf("waiting for the controller's informers: %w", ctx.Err())
	}
	// Drain the kicks of the initial list: the first build sees all of it.
	select {
	case <-c.kick:
	default:
	}
	c.rebuild()
	close(c.ready)
	var (
		timer = time.NewTimer(time.Hour)
		fire  <-chan time.Time
		first time.Time
	)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.kick:
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			timer.Reset(min(c.opts.Debounce, first.Add(maxDebounceDelay).Sub(now)))
			fire = timer.C
		case <-fire:
			first, fire = time.Time{}, nil
			c.rebuild()
		}
	}
}

// rebuild builds a new snapshot, swaps it in and pushes the types that changed.
func (c *Controller) rebuild() {
	next, skipped := c.build()
	prev := c.snap.Swap(next)
	for key, reason := range skipped {
		if c.skipped[key] != reason {
			c.log.Warn("object skipped by translation", "object", key, "reason", reason)
		}
	}
	c.skipped = skipped
	if c.opts.Pusher == nil {
		return
	}
	for _, typeURL := range []string{AddressType, AuthorizationType} {
		if prev == nil || !sameVersions(prev.byType[typeURL], next.byType[typeURL]) {
			c.opts.Pusher.Push(typeURL, nil)
		}
	}
}

func sameVersions(a, b map[string]*xds.Resource) bool {
	return maps.EqualFunc(a, b, func(x, y *xds.Resource) bool { return x.Version == y.Version })
}

// build translates everything the listers hold. An object that does not translate is
// left out and reported in skipped ("Kind namespace/name" → reason); the rest are served.
func (c *Controller) build() (*snapshot, map[string]string) {
	skipped := map[string]string{}
	addresses := map[string]*xds.Resource{}
	authorizations := map[string]*xds.Resource{}
	add := func(into map[string]*xds.Resource, typeURL, name, object string, m proto.Message) {
		r, err := resource(typeURL, name, m)
		if err != nil {
			skipped[object] = err.Error()
			return
		}
		into[name] = r
	}

	aps, err := c.authzs.List(labels.Everything())
	if err != nil {
		skipped["AuthorizationPolicy lister"] = err.Error()
	}
	pas, err := c.peerAuths.List(labels.Everything())
	if err != nil {
		skipped["PeerAuthentication lister"] = err.Error()
	}
	sortObjects(aps)
	sortObjects(pas)
	policies, policySkips := translate.Policies(aps, pas, c.opts.Policy)
	for _, s := range policySkips {
		skipped[s.Policy] = s.Reason
	}
	for _, a := range policies {
		name := a.Namespace + "/" + a.Name
		add(authorizations, AuthorizationType, name, "Authorization "+name, a)
	}

	services, err := c.services.List(labels.Everything())
	if err != nil {
		skipped["Service lister"] = err.Error()
	}
	selecting := newSelectorIndex()
	for _, svc := range services {
		selecting.add(svc)
		s, ok := translate.Service(svc, c.opts.Translate)
		if !ok {
			if svc.Spec.Type != corev1.ServiceTypeExternalName {
				skipped["Service "+svc.Namespace+"/"+svc.Name] = "cluster IP does not parse"
			}
			continue
		}
		name := s.Namespace + "/" + s.Hostname
		add(addresses, AddressType, name, "Service "+svc.Namespace+"/"+svc.Name,
			&workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}})
	}

	pods, err := c.pods.List(labels.Everything())
	if err != nil {
		skipped["Pod lister"] = err.Error()
	}
	for _, pod := range pods {
		ns, _ := c.namespaces.Get(pod.Namespace)
		w, ok := translate.Workload(enrolled(pod, ns), ns, selecting.candidates(pod), c.opts.Translate)
		if !ok {
			continue // no IP yet, or finished: not a workload (not an error)
		}
		w.AuthorizationPolicies = translate.WorkloadPolicies(pod.Namespace, pod.Labels, aps, pas, c.opts.Policy)
		add(addresses, AddressType, w.Uid, "Pod "+pod.Namespace+"/"+pod.Name,
			&workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}})
	}
	return &snapshot{byType: map[string]map[string]*xds.Resource{
		AddressType:       addresses,
		AuthorizationType: authorizations,
	}}, skipped
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

// Sources returns the xds.Sources of both type URLs, answered from the current snapshot.
// A stream asking before the first snapshot waits for it (or for its own end), so a proxy
// reconnecting to a fresh istiod-lite is never told its resources are gone.
func (c *Controller) Sources() map[string]xds.Source {
	return map[string]xds.Source{
		AddressType:       source{c: c, typeURL: AddressType},
		AuthorizationType: source{c: c, typeURL: AuthorizationType},
	}
}

type source struct {
	c       *Controller
	typeURL string
}

var _ xds.Source = source{}

// Generate implements xds.Source.
func (s source) Generate(ctx context.Context, req *xds.Request) (*xds.Delta, error) {
	select {
	case <-s.c.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return xds.Diff(s.c.snap.Load().byType[s.typeURL], req), nil
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

// Package routestatus writes the status istiod writes on mesh HTTPRoutes: for each Service
// parentRef, the parent status l7.HTTPRouteStatus computes (Accepted, ResolvedRefs,
// ResolvedWaypoints) under istiod's controllerName, merged into the route's status with
// meta.SetStatusCondition (a condition's transition time changes only with its status),
// leaving the parents of other controllers alone, and written (status subresource) only when
// it changed.
//
// Deciding is pure (Merge); the Reconciler only watches HTTPRoutes, queues and updates. It
// does not translate routes for the waypoints (the controller does) and it knows the Services
// only through the snapshot it is given. Only istiod-lite's app imports it.
package routestatus

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/l7"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
	gatewaylisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"
)

// Merge returns the parent statuses of a route whose status has current, with computed (our
// controller's parents, as l7.HTTPRouteStatus returns them) merged in: a parent of ours keeps
// its place and has its conditions merged with meta.SetStatusCondition (transition time now
// when a status changes or a condition is new; conditions of ours no longer computed are
// removed); a parent of ours no longer computed is removed; a new one is appended; parents of
// other controllers are kept as they are. changed reports whether the result differs from
// current.
func Merge(current, computed []gatewayv1.RouteParentStatus, now metav1.Time) (next []gatewayv1.RouteParentStatus, changed bool) {
	used := make([]bool, len(computed))
	find := func(ref gatewayv1.ParentReference) int {
		for i, c := range computed {
			if !used[i] && equality.Semantic.DeepEqual(c.ParentRef, ref) {
				return i
			}
		}
		return -1
	}
	merge := func(existing []metav1.Condition, want []metav1.Condition) []metav1.Condition {
		conds := make([]metav1.Condition, 0, len(want))
		for _, c := range existing {
			if meta.FindStatusCondition(want, c.Type) != nil {
				conds = append(conds, *c.DeepCopy())
			}
		}
		for _, c := range want {
			c.LastTransitionTime = now
			meta.SetStatusCondition(&conds, c)
		}
		return conds
	}
	for _, p := range current {
		if p.ControllerName != l7.ControllerName {
			next = append(next, *p.DeepCopy())
			continue
		}
		i := find(p.ParentRef)
		if i < 0 {
			continue // no longer a parent of ours
		}
		used[i] = true
		q := *p.DeepCopy()
		q.Conditions = merge(p.Conditions, computed[i].Conditions)
		next = append(next, q)
	}
	for i, c := range computed {
		if !used[i] {
			q := *c.DeepCopy()
			q.Conditions = merge(nil, c.Conditions)
			next = append(next, q)
		}
	}
	return next, !equality.Semantic.DeepEqual(current, next) && !(len(current) == 0 && len(next) == 0)
}

// Options configure a Reconciler.
type Options struct {
	// Client writes HTTPRoute status. Required.
	Client gatewayclient.Interface
	// Informers provide the HTTPRoute informer. Required; the caller starts it (after New)
	// and shuts it down.
	Informers gatewayinformers.SharedInformerFactory
	// Services returns every Service as the L7 translation sees it (backends and waypoint
	// binding: the controller's L7Services). Required; called only after Ready is closed.
	Services func() map[types.NamespacedName]l7.Service
	// Ready is closed once Services answers from a complete view of the cluster. If nil,
	// Services is used as soon as the HTTPRoutes are listed.
	Ready <-chan struct{}
	// DomainSuffix is the cluster DNS suffix of backend hostnames. If empty, cluster.local.
	DomainSuffix string
	// Log receives write failures. If nil, slog.Default().
	Log *slog.Logger
	// Now is the clock of transition times. If nil, time.Now.
	Now func() time.Time
}

// Reconciler writes HTTPRoute status. Create it with New, start the informers, then Run it.
type Reconciler struct {
	opts   Options
	log    *slog.Logger
	routes gatewaylisters.HTTPRouteLister
	synced cache.InformerSynced
	queue  workqueue.TypedRateLimitingInterface[types.NamespacedName]
}

// New registers the HTTPRoute event handler.
func New(opts Options) (*Reconciler, error) {
	if opts.Client == nil || opts.Informers == nil || opts.Services == nil {
		return nil, fmt.Errorf("routestatus: Client, Informers and Services are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	r := &Reconciler{
		opts: opts, log: log,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[types.NamespacedName](),
			workqueue.TypedRateLimitingQueueConfig[types.NamespacedName]{Name: "httproute-status"}),
	}
	inf := opts.Informers.Gateway().V1().HTTPRoutes()
	reg, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    r.enqueue,
		UpdateFunc: func(_, obj any) { r.enqueue(obj) },
	})
	if err != nil {
		return nil, fmt.Errorf("registering the HTTPRoute event handler: %w", err)
	}
	r.routes = inf.Lister()
	r.synced = reg.HasSynced
	return r, nil
}

func (r *Reconciler) enqueue(obj any) {
	if route, ok := obj.(*gatewayv1.HTTPRoute); ok {
		r.queue.Add(types.NamespacedName{Namespace: route.Namespace, Name: route.Name})
	}
}

// ServicesChanged queues every HTTPRoute: a parent or backend may have appeared, gone, or
// changed its waypoint. Routes whose status does not change are not written. It never blocks.
func (r *Reconciler) ServicesChanged() {
	list, _ := r.routes.List(labels.Everything())
	for _, route := range list {
		r.enqueue(route)
	}
}

// Run reconciles queued routes until ctx ends.
func (r *Reconciler) Run(ctx context.Context) error {
	defer r.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), r.synced) {
		return nil // ctx ended first
	}
	if r.opts.Ready != nil {
		select {
		case <-r.opts.Ready:
		case <-ctx.Done():
			return nil
		}
	}
	go func() {
		<-ctx.Done()
		r.queue.ShutDown()
	}()
	r.ServicesChanged() // statuses computed before Ready were not written: do them all now
	for {
		k, quit := r.queue.Get()
		if quit {
			return nil
		}
		err := r.sync(ctx, k)
		switch {
		case err == nil:
			r.queue.Forget(k)
		case ctx.Err() != nil:
		default:
			r.log.Warn("writing HTTPRoute status", "namespace", k.Namespace, "name", k.Name, "err", err)
			r.queue.AddRateLimited(k)
		}
		r.queue.Done(k)
	}
}

// sync writes one route's status if it changed.
func (r *Reconciler) sync(ctx context.Context, k types.NamespacedName) error {
	route, err := r.routes.HTTPRoutes(k.Namespace).Get(k.Name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("getting HTTPRoute from the cache: %w", err)
	}
	computed := l7.HTTPRouteStatus(route, r.opts.Services(), r.opts.DomainSuffix)
	next, changed := Merge(route.Status.Parents, computed, metav1.NewTime(r.opts.Now()))
	if !changed {
		return nil
	}
	cp := route.DeepCopy()
	cp.Status.Parents = next
	if _, err := r.opts.Client.GatewayV1().HTTPRoutes(k.Namespace).UpdateStatus(ctx, cp, metav1.UpdateOptions{}); err != nil {
		// A conflict means the cache is behind: the update event requeues it anyway.
		return fmt.Errorf("updating status: %w", err)
	}
	r.log.Debug("HTTPRoute status written", "namespace", k.Namespace, "name", k.Name)
	return nil
}

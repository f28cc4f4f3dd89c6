package waypoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
	gatewaylisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"
)

// FieldManager is the server-side apply field manager of everything the deployer writes.
const FieldManager = "istiod-lite"

// DefaultClusterDomain is the DNS suffix of Services when Options.ClusterDomain is empty.
const DefaultClusterDomain = "cluster.local"

// Options configures a Deployer.
type Options struct {
	// Kube and Gateway are the clients the deployer writes with; required.
	Kube    kubernetes.Interface
	Gateway gatewayclient.Interface
	// KubeInformers provides the Services, EndpointSlices, Deployments and ServiceAccounts
	// informers and GatewayInformers the Gateways and GatewayClasses; required. The caller
	// starts both after New.
	KubeInformers    informers.SharedInformerFactory
	GatewayInformers gatewayinformers.SharedInformerFactory
	// Render is what every waypoint Deployment runs; Image, CAAddress and XDSAddress are required.
	Render RenderOptions
	// ClusterDomain is the Services' DNS suffix, for the address reported in Gateway status;
	// empty means DefaultClusterDomain.
	ClusterDomain string
	// Log receives reconcile failures; nil means slog.Default().
	Log *slog.Logger
	// Now stamps condition transitions; nil means time.Now.
	Now func() time.Time
}

// Deployer deploys waypoints for Gateways of its class and reports their status.
type Deployer struct {
	opts            Options
	log             *slog.Logger
	classes         gatewaylisters.GatewayClassLister
	gateways        gatewaylisters.GatewayLister
	services        corelisters.ServiceLister
	serviceAccounts corelisters.ServiceAccountLister
	deployments     appslisters.DeploymentLister
	slices          discoverylisters.EndpointSliceLister
	synced          []cache.InformerSynced
	queue           workqueue.TypedRateLimitingInterface[key]
}

// key is a queue item: a GatewayClass (namespace empty, class set) or a Gateway.
type key struct {
	class           bool
	namespace, name string
}

// New validates opts and registers the informers and their event handlers.
func New(opts Options) (*Deployer, error) {
	var errs []error
	if opts.Kube == nil || opts.Gateway == nil || opts.KubeInformers == nil || opts.GatewayInformers == nil {
		errs = append(errs, errors.New("the Kube and Gateway clients and informer factories are required"))
	}
	if opts.Render.Image == "" || opts.Render.CAAddress == "" || opts.Render.XDSAddress == "" {
		errs = append(errs, errors.New("the waypoint image, CA address and xDS address are required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("waypoint deployer: %w", err)
	}
	if opts.ClusterDomain == "" {
		opts.ClusterDomain = DefaultClusterDomain
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	d := &Deployer{
		opts: opts, log: opts.Log,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[key](),
			workqueue.TypedRateLimitingQueueConfig[key]{Name: "waypoint-deployer"}),
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	gw := opts.GatewayInformers.Gateway().V1()
	core := opts.KubeInformers.Core().V1()
	slices := opts.KubeInformers.Discovery().V1().EndpointSlices()
	deployments := opts.KubeInformers.Apps().V1().Deployments()
	d.classes, d.gateways = gw.GatewayClasses().Lister(), gw.Gateways().Lister()
	d.services, d.serviceAccounts = core.Services().Lister(), core.ServiceAccounts().Lister()
	d.deployments, d.slices = deployments.Lister(), slices.Lister()

	register := func(inf cache.SharedIndexInformer, enqueue func(obj any)) error {
		reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    enqueue,
			UpdateFunc: func(old, obj any) { enqueue(old); enqueue(obj) },
			DeleteFunc: func(obj any) {
				if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
					obj = t.Obj
				}
				enqueue(obj)
			},
		})
		if err != nil {
			return fmt.Errorf("waypoint deployer: registering an event handler: %w", err)
		}
		d.synced = append(d.synced, reg.HasSynced)
		return nil
	}
	for _, h := range []struct {
		inf     cache.SharedIndexInformer
		enqueue func(obj any)
	}{
		{gw.GatewayClasses().Informer(), d.enqueueClass},
		{gw.Gateways().Informer(), d.enqueueGateway},
		{core.ServiceAccounts().Informer(), d.enqueueOwner},
		{deployments.Informer(), d.enqueueOwner},
		{core.Services().Informer(), d.enqueueOwner},
		{slices.Informer(), d.enqueueSliceOwner},
	} {
		if err := register(h.inf, h.enqueue); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// Run ensures the GatewayClass and reconciles until ctx ends. Start the informer factories
// first. It returns nil when ctx ends.
func (d *Deployer) Run(ctx context.Context) error {
	defer d.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), d.synced...) {
		return nil // ctx ended first
	}
	go func() {
		<-ctx.Done()
		d.queue.ShutDown()
	}()
	d.queue.Add(key{class: true, name: ClassName})
	for {
		k, quit := d.queue.Get()
		if quit {
			return nil
		}
		var err error
		if k.class {
			err = d.syncClass(ctx, k.name)
		} else {
			err = d.syncGateway(ctx, k.namespace, k.name)
		}
		switch {
		case err == nil:
			d.queue.Forget(k)
		case ctx.Err() != nil:
		default:
			d.log.Warn("reconciling waypoint", "gatewayClass", k.class, "namespace", k.namespace, "name", k.name, "err", err)
			d.queue.AddRateLimited(k)
		}
		d.queue.Done(k)
	}
}

// syncClass creates the istio-waypoint GatewayClass if it is missing (and never changes a
// user's), and reports any class of this controller Accepted.
func (d *Deployer) syncClass(ctx context.Context, name string) error {
	gc, err := d.classes.Get(name)
	if apierrors.IsNotFound(err) {
		if name != ClassName {
			return nil
		}
		_, err = d.opts.Gateway.GatewayV1().GatewayClasses().Create(ctx, &gatewayv1.GatewayClass{
			ObjectMeta: metav1.ObjectMeta{Name: ClassName},
			Spec:       gatewayv1.GatewayClassSpec{ControllerName: ControllerName, Description: ptr.To(ClassDescription)},
		}, metav1.CreateOptions{FieldManager: FieldManager})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating GatewayClass %s: %w", ClassName, err)
		}
		return nil // its add event brings it back for status
	}
	if err != nil || gc.Spec.ControllerName != ControllerName {
		return err
	}
	want := ClassStatus(gc, d.opts.Now())
	if ClassStatusCurrent(gc.Status, want.Status) {
		return nil
	}
	if _, err := d.opts.Gateway.GatewayV1().GatewayClasses().ApplyStatus(ctx, want, applyOptions); err != nil {
		return fmt.Errorf("applying GatewayClass %s status: %w", name, err)
	}
	return nil
}

var applyOptions = metav1.ApplyOptions{FieldManager: FieldManager, Force: true}

// syncGateway applies a waypoint Gateway's objects and status. A Gateway that is gone or of
// another class is left alone: its objects go with it through their ownerReferences.
func (d *Deployer) syncGateway(ctx context.Context, namespace, name string) error {
	gw, err := d.gateways.Gateways(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !d.ours(gw) || gw.DeletionTimestamp != nil {
		return nil
	}
	objs := Render(gw, d.opts.Render)
	kube := d.opts.Kube
	if err := applyIfManaged(ctx, d, d.serviceAccounts.ServiceAccounts(namespace).Get, *objs.ServiceAccount.Name,
		objs.ServiceAccount, corev1ac.ExtractServiceAccount, kube.CoreV1().ServiceAccounts(namespace).Apply); err != nil {
		return err
	}
	if err := applyIfManaged(ctx, d, d.deployments.Deployments(namespace).Get, *objs.Deployment.Name,
		objs.Deployment, appsv1ac.ExtractDeployment, kube.AppsV1().Deployments(namespace).Apply); err != nil {
		return err
	}
	if err := applyIfManaged(ctx, d, d.services.Services(namespace).Get, *objs.Service.Name,
		objs.Service, corev1ac.ExtractService, kube.CoreV1().Services(namespace).Apply); err != nil {
		return err
	}

	obs, err := d.observe(gw)
	if err != nil {
		return err
	}
	want := GatewayStatus(gw, obs, d.opts.ClusterDomain, d.opts.Now())
	if StatusCurrent(gw.Status, want.Status) {
		return nil
	}
	if _, err := d.opts.Gateway.GatewayV1().Gateways(namespace).ApplyStatus(ctx, want, applyOptions); err != nil {
		return fmt.Errorf("applying Gateway %s/%s status: %w", namespace, name, err)
	}
	d.log.Debug("applied", "kind", "Gateway/status", "namespace", namespace, "name", name)
	return nil
}

// applyIfManaged applies want unless an object of that name exists without istiod's managed
// label (a user's own, which istiod does not take over) or already holds exactly want.
func applyIfManaged[T metav1.Object, A any](ctx context.Context, d *Deployer,
	get func(string) (T, error), name string, want A,
	extract func(T, string) (A, error),
	apply func(context.Context, A, metav1.ApplyOptions) (T, error),
) error {
	have, err := get(name)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return err
	case !isManaged(have.GetLabels()):
		d.log.Info("not taking over an object the waypoint deployer does not manage", "namespace", have.GetNamespace(), "name", name,
			"hint", "delete it or label it "+LabelManaged+"="+ControllerLabel)
		return nil
	default:
		if cur, err := extract(have, FieldManager); err == nil && equality.Semantic.DeepEqual(cur, want) {
			return nil
		}
	}
	obj, err := apply(ctx, want, applyOptions)
	if err != nil {
		return fmt.Errorf("applying %T %s: %w", want, name, err)
	}
	d.log.Debug("applied", "kind", fmt.Sprintf("%T", obj), "namespace", obj.GetNamespace(), "name", name)
	return nil
}

// observe reads the Service and EndpointSlices the Gateway's status depends on.
func (d *Deployer) observe(gw *gatewayv1.Gateway) (Observed, error) {
	var obs Observed
	svc, err := d.services.Services(gw.Namespace).Get(DeploymentName(gw))
	if apierrors.IsNotFound(err) {
		return obs, nil
	}
	if err != nil {
		return obs, err
	}
	obs.Service = svc
	obs.EndpointSlices, err = d.slices.EndpointSlices(gw.Namespace).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name}))
	return obs, err
}

// ours reports whether gw is a waypoint of this controller: its class names our controller,
// or, while that class does not exist, is istio-waypoint (as istiod's built-in classes).
func (d *Deployer) ours(gw *gatewayv1.Gateway) bool {
	gc, err := d.classes.Get(string(gw.Spec.GatewayClassName))
	if err != nil {
		return gw.Spec.GatewayClassName == ClassName
	}
	return gc.Spec.ControllerName == ControllerName
}

func (d *Deployer) enqueueClass(obj any) {
	gc, ok := obj.(*gatewayv1.GatewayClass)
	if !ok {
		return
	}
	d.queue.Add(key{class: true, name: gc.Name})
	gws, _ := d.gateways.List(labels.Everything())
	for _, gw := range gws {
		if string(gw.Spec.GatewayClassName) == gc.Name {
			d.queue.Add(key{namespace: gw.Namespace, name: gw.Name})
		}
	}
}

func (d *Deployer) enqueueGateway(obj any) {
	if gw, ok := obj.(*gatewayv1.Gateway); ok {
		d.queue.Add(key{namespace: gw.Namespace, name: gw.Name})
	}
}

// enqueueOwner queues the Gateway owning a ServiceAccount, Deployment or Service.
func (d *Deployer) enqueueOwner(obj any) {
	o, ok := obj.(metav1.Object)
	if !ok {
		return
	}
	for _, ref := range o.GetOwnerReferences() {
		if ref.Kind == "Gateway" && ref.APIVersion == gatewayv1.GroupVersion.String() {
			d.queue.Add(key{namespace: o.GetNamespace(), name: ref.Name})
		}
	}
}

// enqueueSliceOwner queues the Gateway owning an EndpointSlice's Service.
func (d *Deployer) enqueueSliceOwner(obj any) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok || s.Labels[discoveryv1.LabelServiceName] == "" {
		return
	}
	if svc, err := d.services.Services(s.Namespace).Get(s.Labels[discoveryv1.LabelServiceName]); err == nil {
		d.enqueueOwner(svc)
	}
}

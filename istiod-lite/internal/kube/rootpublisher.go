package kube

import (
	"context"
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Root ConfigMap published in every namespace (Istio's names).
const (
	RootConfigMap = "istio-ca-root-cert"
	RootCertKey   = "root-cert.pem"
)

// RootPublisher keeps the ConfigMap istio-ca-root-cert, key root-cert.pem, equal to the mesh
// root in every namespace: it creates it in new namespaces and restores it when edited or
// deleted.
type RootPublisher struct {
	client     kubernetes.Interface
	rootPEM    string
	log        *slog.Logger
	namespaces corelisters.NamespaceLister
	configMaps corelisters.ConfigMapLister
	synced     []cache.InformerSynced
	queue      workqueue.TypedRateLimitingInterface[string]
}

// NewRootPublisher registers its informers: namespaces on nsFactory, and the root
// ConfigMaps on cmFactory, which the caller restricts to metadata.name=istio-ca-root-cert.
func NewRootPublisher(client kubernetes.Interface, nsFactory, cmFactory informers.SharedInformerFactory, rootPEM []byte, log *slog.Logger) (*RootPublisher, error) {
	p := &RootPublisher{
		client:  client,
		rootPEM: string(rootPEM),
		log:     log,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "root-publisher"}),
	}
	nsInf := nsFactory.Core().V1().Namespaces()
	cmInf := cmFactory.Core().V1().ConfigMaps()
	p.namespaces, p.configMaps = nsInf.Lister(), cmInf.Lister()
	enqueueNS := func(obj any) {
		if ns, ok := obj.(*corev1.Namespace); ok {
			p.queue.Add(ns.Name)
		}
	}
	enqueueCM := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if cm, ok := obj.(*corev1.ConfigMap); ok && cm.Name == RootConfigMap {
			p.queue.Add(cm.Namespace)
		}
	}
	if _, err := nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueueNS, UpdateFunc: func(_, n any) { enqueueNS(n) },
	}); err != nil {
		return nil, err
	}
	if _, err := cmInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, n any) { enqueueCM(n) }, DeleteFunc: enqueueCM,
	}); err != nil {
		return nil, err
	}
	p.synced = []cache.InformerSynced{nsInf.Informer().HasSynced, cmInf.Informer().HasSynced}
	return p, nil
}

// Run reconciles until ctx ends. Start the informer factories first.
func (p *RootPublisher) Run(ctx context.Context) error {
	defer p.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), p.synced...) {
		return fmt.Errorf("root publisher: caches did not sync: %w", ctx.Err())
	}
	go func() {
		<-ctx.Done()
		p.queue.ShutDown()
	}()
	for {
		ns, quit := p.queue.Get()
		if quit {
			return nil
		}
		if err := p.reconcile(ctx, ns); err != nil {
			p.log.Warn("publishing root certificate", "namespace", ns, "err", err)
			p.queue.AddRateLimited(ns)
		} else {
			p.queue.Forget(ns)
		}
		p.queue.Done(ns)
	}
}

// reconcile makes the namespace's root ConfigMap current.
func (p *RootPublisher) reconcile(ctx context.Context, namespace string) error {
	ns, err := p.namespaces.Get(namespace)
	if apierrors.IsNotFound(err) || (err == nil && ns.Status.Phase == corev1.NamespaceTerminating) {
		return nil
	}
	if err != nil {
		return err
	}
	want := map[string]string{RootCertKey: p.rootPEM}
	cm, err := p.configMaps.ConfigMaps(namespace).Get(RootConfigMap)
	switch {
	case apierrors.IsNotFound(err):
		_, err = p.client.CoreV1().ConfigMaps(namespace).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: RootConfigMap, Namespace: namespace, Labels: map[string]string{"istio.io/config": "true"}},
			Data:       want,
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) || isTerminating(err) {
			return nil
		}
		return err
	case err != nil:
		return err
	case cm.Data[RootCertKey] == p.rootPEM:
		return nil
	}
	cm = cm.DeepCopy()
	cm.Data = want
	_, err = p.client.CoreV1().ConfigMaps(namespace).Update(ctx, cm, metav1.UpdateOptions{})
	return err
}

// isTerminating recognises the apiserver refusing creation in a namespace being deleted.
func isTerminating(err error) bool {
	return apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause)
}

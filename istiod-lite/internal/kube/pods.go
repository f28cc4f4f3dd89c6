package kube

import (
	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/caserver"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

const nodeAccountIndex = "node-serviceaccount"

// PodIndex answers caserver.Pods from a pod informer, indexed by node and ServiceAccount.
type PodIndex struct {
	informer cache.SharedIndexInformer
}

var _ caserver.Pods = (*PodIndex)(nil)

// NewPodIndex registers a pod informer on factory; start the factory and wait for HasSynced.
func NewPodIndex(factory informers.SharedInformerFactory) (*PodIndex, error) {
	inf := factory.Core().V1().Pods().Informer()
	// Only what the CA reads is kept, to bound memory on large clusters.
	if err := inf.SetTransform(func(obj any) (any, error) {
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return obj, nil
		}
		slim := &corev1.Pod{}
		slim.Name, slim.Namespace, slim.UID, slim.ResourceVersion = p.Name, p.Namespace, p.UID, p.ResourceVersion
		slim.Spec.NodeName, slim.Spec.ServiceAccountName = p.Spec.NodeName, p.Spec.ServiceAccountName
		slim.Status.Phase = p.Status.Phase
		return slim, nil
	}); err != nil {
		return nil, err
	}
	err := inf.AddIndexers(cache.Indexers{nodeAccountIndex: func(obj any) ([]string, error) {
		p, ok := obj.(*corev1.Pod)
		if !ok || p.Spec.NodeName == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			return nil, nil
		}
		return []string{nodeAccountKey(p.Spec.NodeName, p.Namespace, serviceAccountOf(p))}, nil
	}})
	if err != nil {
		return nil, err
	}
	return &PodIndex{informer: inf}, nil
}

// HasSynced reports whether the initial pod list has been indexed.
func (x *PodIndex) HasSynced() bool { return x.informer.HasSynced() }

// Pod implements caserver.Pods.
func (x *PodIndex) Pod(namespace, name string) (caserver.Pod, bool) {
	obj, ok, err := x.informer.GetIndexer().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return caserver.Pod{}, false
	}
	p := obj.(*corev1.Pod)
	return caserver.Pod{UID: string(p.UID), ServiceAccount: serviceAccountOf(p), NodeName: p.Spec.NodeName}, true
}

// HasServiceAccountOnNode implements caserver.Pods.
func (x *PodIndex) HasServiceAccountOnNode(node, namespace, serviceAccount string) bool {
	objs, err := x.informer.GetIndexer().ByIndex(nodeAccountIndex, nodeAccountKey(node, namespace, serviceAccount))
	return err == nil && len(objs) > 0
}

func nodeAccountKey(node, ns, sa string) string { return node + "/" + ns + "/" + sa }

func serviceAccountOf(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName == "" {
		return "default"
	}
	return p.Spec.ServiceAccountName
}

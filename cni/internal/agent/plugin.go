package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/ambient-lite/ambient-lite/cni/internal/pluginapi"
	"github.com/ambient-lite/ambient-lite/cni/internal/redirect"
	"github.com/ambient-lite/ambient-lite/pkg/ambient"
	"github.com/ambient-lite/ambient-lite/pkg/zds"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
)

// errStarting answers the plugin before the agent has reconciled and serves ZDS.
var errStarting = fmt.Errorf("%w: the node agent is starting (it has not reconciled its node yet)", pluginapi.ErrUnavailable)

// Enrollment implements pluginapi.Agent: whether the pod is in the mesh, from the caches
// (the pod read from the apiserver when the watch has not delivered it yet).
//
// While the agent uninstalls the mesh from the node, every pod is out of the mesh.
func (a *Agent) Enrollment(ctx context.Context, req pluginapi.EnrollmentRequest) (pluginapi.EnrollmentResponse, error) {
	if a.uninstalling.Load() {
		return pluginapi.EnrollmentResponse{Enrolled: false}, nil
	}
	p, err := a.getPod(ctx, req.PodNamespace, req.PodName)
	if err != nil {
		return pluginapi.EnrollmentResponse{}, err
	}
	if req.PodUID != "" && string(p.UID) != req.PodUID {
		// The cache may hold the pod this one replaced: ask the apiserver.
		if p, err = a.opts.Kube.CoreV1().Pods(req.PodNamespace).Get(ctx, req.PodName, metav1.GetOptions{}); err != nil {
			return pluginapi.EnrollmentResponse{}, fmt.Errorf("reading pod %s/%s: %w", req.PodNamespace, req.PodName, err)
		}
		if string(p.UID) != req.PodUID {
			return pluginapi.EnrollmentResponse{}, fmt.Errorf("pod %s/%s has uid %s, not %s: it was deleted and recreated",
				req.PodNamespace, req.PodName, p.UID, req.PodUID)
		}
	}
	return pluginapi.EnrollmentResponse{Enrolled: a.labelsEnroll(p)}, nil
}

// Add implements pluginapi.Agent: it enrolls a new pod from its CNI ADD and returns once
// redirection is in place, ztunnel acknowledged the pod and the pod is annotated.
func (a *Agent) Add(ctx context.Context, req pluginapi.AddRequest) (pluginapi.AddResponse, error) {
	if !a.Ready() {
		return pluginapi.AddResponse{}, errStarting
	}
	p, err := a.getPod(ctx, req.PodNamespace, req.PodName)
	if err != nil {
		return pluginapi.AddResponse{}, err
	}
	if req.PodUID != "" && string(p.UID) != req.PodUID {
		return pluginapi.AddResponse{}, fmt.Errorf("pod %s/%s has uid %s, not %s: it was deleted and recreated; the runtime will retry",
			req.PodNamespace, req.PodName, p.UID, req.PodUID)
	}
	if !a.labelsEnroll(p) {
		return pluginapi.AddResponse{}, fmt.Errorf("pod %s/%s is not enrolled in the ambient mesh as the node agent sees it (labels changed since the plugin looked?); the runtime will retry",
			req.PodNamespace, req.PodName)
	}
	// After the agent restarted, ztunnel takes a moment to reconnect: the pod waits for it
	// (the plugin's deadline bounds the wait) rather than fail.
	if err := a.zds.WaitConnected(ctx); err != nil {
		return pluginapi.AddResponse{}, fmt.Errorf("%w: no ztunnel is connected to the node agent (is ztunnel running on this node?): %v", pluginapi.ErrUnavailable, err)
	}
	var ips []netip.Addr
	for _, s := range req.PodIPs {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return pluginapi.AddResponse{}, fmt.Errorf("pod IP %q: %w", s, err)
		}
		ips = append(ips, ip)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.uninstalling.Load() {
		return pluginapi.AddResponse{}, errUninstalling
	}
	if old := a.byKey(p.Namespace + "/" + p.Name); old != nil && old.uid != string(p.UID) {
		a.unenroll(ctx, old)
	}
	enr := &pod{uid: string(p.UID), namespace: p.Namespace, name: p.Name, serviceAccount: serviceAccount(p), netns: req.Netns, ips: ips}
	if err := a.enroll(ctx, enr); err != nil {
		return pluginapi.AddResponse{}, err
	}
	if err := a.annotate(ctx, p, true); err != nil {
		a.unenroll(context.Background(), enr)
		return pluginapi.AddResponse{}, err
	}
	return pluginapi.AddResponse{Redirected: true}, nil
}

// Del implements pluginapi.Agent: the pod's sandbox is going away.
func (a *Agent) Del(ctx context.Context, req pluginapi.DelRequest) error {
	if !a.Ready() {
		return nil // recover() finds what is left once the agent runs
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.enrolled[req.PodUID]
	if p == nil {
		p = a.byKey(req.PodNamespace + "/" + req.PodName)
	}
	if p != nil {
		a.unenroll(ctx, p)
	}
	return nil
}

// Check implements pluginapi.Agent (CNI CHECK).
func (a *Agent) Check(_ context.Context, req pluginapi.CheckRequest) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.enrolled[req.PodUID]
	if p == nil {
		p = a.byKey(req.PodNamespace + "/" + req.PodName)
	}
	if p == nil {
		return fmt.Errorf("pod %s/%s is not redirected by this node agent", req.PodNamespace, req.PodName)
	}
	return redirect.Check(req.Netns, a.pinDir(p.uid))
}

// labelsEnroll reports whether p's labels (and its namespace's) put it in the mesh and it
// has not finished.
func (a *Agent) labelsEnroll(p *corev1.Pod) bool {
	if p == nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return false
	}
	var nsLabels map[string]string
	if ns, err := a.namespaces.Get(p.Namespace); err == nil {
		nsLabels = ns.Labels
	} else if ns, err := a.opts.Kube.CoreV1().Namespaces().Get(context.Background(), p.Namespace, metav1.GetOptions{}); err == nil {
		nsLabels = ns.Labels
	}
	return ambient.Enrolled(p.Labels, p.Annotations, nsLabels, p.Spec.HostNetwork)
}

// getPod reads a pod from the cache, or from the apiserver when the cache has not seen it
// yet (a pod's first CNI ADD may beat the watch).
func (a *Agent) getPod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	if p, err := a.pods.Pods(ns).Get(name); err == nil {
		return p, nil
	}
	p, err := a.opts.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading pod %s/%s: %w", ns, name, err)
	}
	return p, nil
}

// annotate sets or clears ambient.istio.io/redirection on p.
func (a *Agent) annotate(ctx context.Context, p *corev1.Pod, on bool) error {
	have := p.Annotations[ambient.AnnotationRedirection]
	if on && have == ambient.RedirectionEnabled || !on && have == "" {
		return nil
	}
	value := `null`
	if on {
		value = `"` + ambient.RedirectionEnabled + `"`
	}
	patch := []byte(`{"metadata":{"annotations":{"` + ambient.AnnotationRedirection + `":` + value + `}}}`)
	_, err := a.opts.Kube.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) && !on {
		return nil
	}
	if err != nil {
		return fmt.Errorf("annotating pod %s/%s %s: %w", p.Namespace, p.Name, ambient.AnnotationRedirection, err)
	}
	return nil
}

// recover runs once before the agent serves: it keeps the redirection of pods still
// enrolled (reinstalling only what is missing or broken), removes what it pinned for pods
// that are gone or left the mesh, and returns the enrolled pods for ZDS to replay. Pods
// are then queued so their annotations are brought in line.
func (a *Agent) recover() ([]zds.Workload, error) {
	pinned, err := redirect.List(a.opts.PinRoot)
	if err != nil {
		return nil, fmt.Errorf("node agent: listing what it pinned: %w", err)
	}
	pods, err := a.pods.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.uninstalling.Load() {
		return nil, nil
	}
	var restore []zds.Workload
	byUID := map[string]*corev1.Pod{}
	for _, p := range pods {
		byUID[string(p.UID)] = p
		if !a.labelsEnroll(p) || p.Status.PodIP == "" {
			continue
		}
		ips := podIPs(p)
		// The netns its pinned redirection is attached to, if any: exact where a lookup by
		// IP could find none (yet) or two (a stale namespace holding a reused IP).
		netns, err := pinnedNetns(a.opts.NetnsDir, a.pinDir(string(p.UID)), ips)
		if err != nil || netns == "" {
			a.log.Warn("enrolled pod without a network namespace (yet)", "pod", p.Namespace+"/"+p.Name, "err", err)
			continue
		}
		enr := &pod{uid: string(p.UID), namespace: p.Namespace, name: p.Name, serviceAccount: serviceAccount(p), netns: netns, ips: ips}
		if !slices.Contains(pinned, enr.uid) || redirect.Check(netns, a.pinDir(enr.uid)) != nil {
			sources, err := probeSources(netns, a.opts.ProbeSources)
			if err == nil {
				err = redirect.Install(netns, a.pinDir(enr.uid), redirect.Config{PodIPs: ips, ProbeSources: sources})
			}
			if err != nil {
				a.log.Error("reinstalling a pod's redirection", "pod", enr.key(), "err", err)
				continue
			}
			a.log.Info("redirection reinstalled", "pod", enr.key())
		}
		f, err := openNetns(netns)
		if err != nil {
			a.log.Error("opening a pod's network namespace", "pod", enr.key(), "err", err)
			continue
		}
		a.enrolled[enr.uid] = enr
		restore = append(restore, zds.Workload{UID: enr.uid, Info: enr.info(), Netns: f})
	}
	for _, uid := range pinned {
		if _, ok := a.enrolled[uid]; ok {
			continue
		}
		var ips []netip.Addr
		if p := byUID[uid]; p != nil {
			ips = podIPs(p)
		}
		netns, _ := pinnedNetns(a.opts.NetnsDir, a.pinDir(uid), ips)
		if err := redirect.Remove(netns, a.pinDir(uid)); err != nil {
			a.log.Error("removing an orphaned redirection", "uid", uid, "err", err)
			continue
		}
		a.log.Info("orphaned redirection removed", "uid", uid)
	}
	for _, p := range pods {
		a.queue.Add(p.Namespace + "/" + p.Name)
	}
	return restore, nil
}

// Package agent is the CNI node agent's core: it keeps the eBPF redirection of every enrolled
// pod on its node in place and tells ztunnel about those pods over ZDS.
//
// Pods arrive two ways. The CNI plugin's ADD (pluginapi.Agent.Add) enrolls a new pod before
// its containers start and returns only once redirection is installed and ztunnel has
// acknowledged the pod. Informers on the node's pods and on namespaces enroll and unenroll
// running pods when their labels change, and forget deleted pods. Each enrolled pod carries
// the annotation ambient.istio.io/redirection=enabled, which tells istiod-lite to advertise
// it with HBONE.
//
// After its own restart the agent finds what it pinned (redirect.List), keeps the
// redirection of pods still enrolled (no duplicate programs), removes the orphans, and
// replays the enrolled pods to ztunnel. When it stops, DecideShutdown (from its own
// DaemonSet, read through Owner) tells a restart, which leaves everything in place, from an
// uninstall, for which Uninstall unenrolls every pod of the node.
//
// It is not the plugin (cni/internal/plugin), the redirection mechanism
// (cni/internal/redirect), the ZDS protocol (pkg/zds) or the installer of the plugin
// (cni/internal/install); it composes them. Only the node agent binary imports it.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambient-lite/ambient-lite/cni/internal/pluginapi"
	"github.com/ambient-lite/ambient-lite/cni/internal/redirect"
	"github.com/ambient-lite/ambient-lite/pkg/ambient"
	"github.com/ambient-lite/ambient-lite/pkg/zds"
	"istio.io/istio/pkg/zdsapi"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Defaults for Options.
const (
	DefaultPinRoot  = "/sys/fs/bpf/ambient-lite"
	DefaultNetnsDir = "/var/run/netns"
)

// Options configure an Agent.
type Options struct {
	// NodeName is the node whose pods the agent serves. Required.
	NodeName string
	// Kube is the agent's client. Required.
	Kube kubernetes.Interface
	// ZDSPath is ztunnel's socket (the agent serves it). If empty, zds.DefaultPath.
	ZDSPath string
	// PinRoot is the bpffs directory holding one pin directory per enrolled pod, named by
	// its uid. If empty, DefaultPinRoot.
	PinRoot string
	// NetnsDir is where the container runtime keeps pod network namespaces; the agent
	// looks there for the netns of pods enrolled after they started. If empty,
	// DefaultNetnsDir.
	NetnsDir string
	// ProbeSources are addresses whose TCP to pods is not captured (kubelet probes), in
	// addition to each pod's default gateways, which are always exempt.
	ProbeSources []netip.Addr
	// AckTimeout bounds each ZDS exchange with ztunnel. If zero, zds.DefaultAckTimeout.
	AckTimeout time.Duration
	// Log receives what the agent does. If nil, slog.Default().
	Log *slog.Logger
}

// Agent keeps enrolled pods redirected and known to ztunnel. Create it with New, Run it,
// and serve it to the plugin with pluginapi.Handler.
type Agent struct {
	opts Options
	log  *slog.Logger

	factory    informers.SharedInformerFactory
	nsFactory  informers.SharedInformerFactory
	pods       corelisters.PodLister
	namespaces corelisters.NamespaceLister
	synced     []cache.InformerSynced
	queue      workqueue.TypedRateLimitingInterface[string]

	zds          *zds.Server
	ready        atomic.Bool
	uninstalling atomic.Bool // set by Uninstall: enroll nothing more

	mu       sync.Mutex // serialises enrollment changes and guards enrolled
	enrolled map[string]*pod
}

// pod is an enrolled pod.
type pod struct {
	uid, namespace, name, serviceAccount string
	netns                                string
	ips                                  []netip.Addr
}

func (p *pod) key() string { return p.namespace + "/" + p.name }

var _ pluginapi.Agent = (*Agent)(nil)

// New checks opts and registers the informers; nothing runs before Run.
func New(opts Options) (*Agent, error) {
	if opts.NodeName == "" || opts.Kube == nil {
		return nil, errors.New("node agent: NodeName and Kube are required")
	}
	if opts.PinRoot == "" {
		opts.PinRoot = DefaultPinRoot
	}
	if opts.NetnsDir == "" {
		opts.NetnsDir = DefaultNetnsDir
	}
	if opts.ZDSPath == "" {
		opts.ZDSPath = zds.DefaultPath
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	a := &Agent{
		opts: opts, log: log, enrolled: map[string]*pod{},
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
	}
	a.factory = informers.NewSharedInformerFactoryWithOptions(opts.Kube, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", opts.NodeName).String()
	}))
	a.nsFactory = informers.NewSharedInformerFactory(opts.Kube, 0)
	podInf := a.factory.Core().V1().Pods()
	nsInf := a.nsFactory.Core().V1().Namespaces()
	reg, err := podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    a.enqueuePod,
		UpdateFunc: func(_, obj any) { a.enqueuePod(obj) },
		DeleteFunc: a.enqueuePod,
	})
	if err != nil {
		return nil, fmt.Errorf("watching pods: %w", err)
	}
	a.synced = append(a.synced, reg.HasSynced)
	reg, err = nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    a.enqueueNamespace,
		UpdateFunc: func(_, obj any) { a.enqueueNamespace(obj) },
	})
	if err != nil {
		return nil, fmt.Errorf("watching namespaces: %w", err)
	}
	a.synced = append(a.synced, reg.HasSynced)
	a.pods = podInf.Lister()
	a.namespaces = nsInf.Lister()
	return a, nil
}

func (a *Agent) enqueuePod(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	if p, ok := obj.(*corev1.Pod); ok {
		a.queue.Add(p.Namespace + "/" + p.Name)
	}
}

func (a *Agent) enqueueNamespace(obj any) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return
	}
	pods, _ := a.pods.Pods(ns.Name).List(labels.Everything())
	for _, p := range pods {
		a.queue.Add(p.Namespace + "/" + p.Name)
	}
}

// Ready reports whether the agent has reconciled its node once and serves ztunnel.
func (a *Agent) Ready() bool { return a.ready.Load() }

// Enrolled returns the uids of the enrolled pods, sorted.
func (a *Agent) Enrolled() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]string, 0, len(a.enrolled))
	for uid := range a.enrolled {
		out = append(out, uid)
	}
	slices.Sort(out)
	return out
}

// Run syncs the informers, reconciles what it finds pinned with the node's pods, serves
// ztunnel over ZDS and follows pod and namespace changes until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	defer a.queue.ShutDown()
	a.factory.Start(ctx.Done())
	a.nsFactory.Start(ctx.Done())
	defer a.factory.Shutdown()
	defer a.nsFactory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), a.synced...) {
		return fmt.Errorf("node agent: waiting for the pod and namespace informers: %w", ctx.Err())
	}
	restore, err := a.recover()
	if err != nil {
		return err
	}
	srv, err := zds.NewServer(zds.ServerOptions{
		Path: a.opts.ZDSPath, Restore: restore, AckTimeout: a.opts.AckTimeout, Log: a.log, // pkg/zds names itself "zds-server"
	})
	for _, w := range restore {
		_ = w.Netns.Close() // the server keeps its own duplicates
	}
	if err != nil {
		return fmt.Errorf("node agent: serving ztunnel: %w", err)
	}
	a.mu.Lock()
	a.zds = srv
	a.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	zctx, stopZDS := context.WithCancel(ctx)
	defer stopZDS()
	zdsErr := make(chan error, 1)
	wg.Go(func() { zdsErr <- srv.Run(zctx) })
	defer srv.Close()
	wg.Go(func() {
		for a.processNext(ctx) {
		}
	})
	a.ready.Store(true)
	a.log.Info("node agent ready", "node", a.opts.NodeName, "enrolled", len(restore), "zds", a.opts.ZDSPath)
	select {
	case <-ctx.Done():
	case err := <-zdsErr:
		if ctx.Err() == nil {
			a.ready.Store(false)
			a.queue.ShutDown()
			return fmt.Errorf("node agent: ZDS server stopped: %w", err)
		}
	}
	a.ready.Store(false)
	a.queue.ShutDown()
	return nil
}

func (a *Agent) processNext(ctx context.Context) bool {
	key, quit := a.queue.Get()
	if quit {
		return false
	}
	defer a.queue.Done(key)
	if err := a.reconcile(ctx, key); err != nil {
		a.log.Warn("reconciling pod (will retry)", "pod", key, "err", err)
		a.queue.AddRateLimited(key)
		return true
	}
	a.queue.Forget(key)
	return true
}

// reconcile brings one pod (namespace/name) to what its labels say.
func (a *Agent) reconcile(ctx context.Context, key string) error {
	ns, name := splitKey(key)
	p, err := a.pods.Pods(ns).Get(name)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if apierrors.IsNotFound(err) {
		p = nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.uninstalling.Load() {
		return nil
	}
	cur := a.byKey(key)
	if cur != nil && p != nil && cur.uid != string(p.UID) {
		// Either the cache is behind a pod the plugin just enrolled, or the enrolled
		// pod was replaced: ask the apiserver which.
		live, err := a.opts.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil && string(live.UID) == cur.uid {
			return nil // the cache will catch up and requeue the pod
		}
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		a.unenroll(ctx, cur)
		cur = nil
	}
	switch want := a.labelsEnroll(p); {
	case want && cur != nil:
		return a.annotate(ctx, p, true)
	case want:
		if p.Status.PodIP == "" {
			return nil // no sandbox network yet: the CNI ADD enrolls it
		}
		ips := podIPs(p)
		netns, err := findNetns(a.opts.NetnsDir, ips)
		if err != nil {
			return fmt.Errorf("pod %s is enrolled but its network namespace was not found: %w", key, err)
		}
		if netns == "" {
			return fmt.Errorf("pod %s is enrolled but no network namespace in %s holds %v", key, a.opts.NetnsDir, ips)
		}
		enr := &pod{uid: string(p.UID), namespace: p.Namespace, name: p.Name, serviceAccount: serviceAccount(p), netns: netns, ips: ips}
		if err := a.enroll(ctx, enr); err != nil {
			return err
		}
		return a.annotate(ctx, p, true)
	case cur != nil:
		a.unenroll(ctx, cur)
		if p != nil {
			return a.annotate(ctx, p, false)
		}
	case p != nil && p.Annotations[ambient.AnnotationRedirection] != "":
		return a.annotate(ctx, p, false)
	}
	return nil
}

func (a *Agent) byKey(key string) *pod {
	for _, p := range a.enrolled {
		if p.key() == key {
			return p
		}
	}
	return nil
}

func (a *Agent) pinDir(uid string) string { return filepath.Join(a.opts.PinRoot, uid) }

// enroll installs p's redirection and tells ztunnel; on failure nothing stays installed.
// The caller holds a.mu.
func (a *Agent) enroll(ctx context.Context, p *pod) error {
	sources, err := probeSources(p.netns, a.opts.ProbeSources)
	if err != nil {
		return fmt.Errorf("pod %s: %w", p.key(), err)
	}
	if len(sources) == 0 {
		a.log.Warn("no default gateway in the pod's netns and no PROBE_SOURCES: kubelet probes will be captured like any other traffic (and refused under STRICT mTLS)", "pod", p.key())
	}
	if err := redirect.Install(p.netns, a.pinDir(p.uid), redirect.Config{PodIPs: p.ips, ProbeSources: sources}); err != nil {
		return fmt.Errorf("pod %s: installing redirection: %w", p.key(), err)
	}
	f, err := openNetns(p.netns)
	if err == nil {
		err = a.zds.Add(ctx, zds.Workload{UID: p.uid, Info: p.info(), Netns: f})
		_ = f.Close()
	}
	if err != nil {
		_ = a.zds.Del(context.Background(), p.uid)
		if rerr := redirect.Remove(p.netns, a.pinDir(p.uid)); rerr != nil {
			a.log.Error("removing the redirection of a pod ztunnel did not take", "pod", p.key(), "err", rerr)
		}
		return fmt.Errorf("pod %s: handing it to ztunnel: %w", p.key(), err)
	}
	a.enrolled[p.uid] = p
	a.log.Info("pod enrolled", "pod", p.key(), "uid", p.uid, "netns", p.netns)
	return nil
}

// unenroll removes p's redirection first (its traffic goes direct again), then tells
// ztunnel. The caller holds a.mu. A netns that is gone is only unpinned.
func (a *Agent) unenroll(ctx context.Context, p *pod) {
	netns := p.netns
	if _, err := os.Stat(netns); err != nil {
		netns = ""
	}
	if err := redirect.Remove(netns, a.pinDir(p.uid)); err != nil {
		a.log.Error("removing a pod's redirection", "pod", p.key(), "err", err)
	}
	if a.zds != nil {
		if err := a.zds.Del(ctx, p.uid); err != nil {
			a.log.Warn("telling ztunnel a pod left", "pod", p.key(), "err", err)
		}
	}
	delete(a.enrolled, p.uid)
	a.log.Info("pod unenrolled", "pod", p.key(), "uid", p.uid)
}

func (p *pod) info() *zdsapi.WorkloadInfo {
	return &zdsapi.WorkloadInfo{Name: p.name, Namespace: p.namespace, ServiceAccount: p.serviceAccount}
}

func serviceAccount(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName == "" {
		return "default"
	}
	return p.Spec.ServiceAccountName
}

func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			out = append(out, a)
		}
	}
	return out
}

func splitKey(key string) (namespace, name string) {
	namespace, name, _ = cache.SplitMetaNamespaceKey(key)
	return namespace, name
}

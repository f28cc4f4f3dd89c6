package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"slices"

	"github.com/ambient-lite/ambient-lite/cni/internal/redirect"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// errUninstalling answers the plugin's ADD while the agent takes the mesh off the node.
var errUninstalling = errors.New("the node agent is removing the ambient mesh from this node; the runtime will retry, and the pod starts outside the mesh")

// Uninstall takes the mesh off the node, for when the agent's DaemonSet is removed (see
// DecideShutdown); call it while Run still runs, so that ztunnel can be told. From its
// start the agent stops following pod changes, and answers the plugin that no pod is in
// the mesh (a pod created meanwhile starts outside the mesh rather than being enrolled
// with nobody left to unenroll it). Every enrolled pod is then unenrolled as when it
// leaves the mesh: its redirection and pins removed first (its traffic goes direct
// again), ztunnel told over ZDS if one is connected, and its
// ambient.istio.io/redirection annotation cleared when the apiserver still lets the
// agent. Redirections pinned for pods the agent does not hold are removed too, and so is
// the pin root. Errors are joined; it goes on after each.
//
// Uninstall does not touch the plugin's installation (cni/internal/install) or the
// plugin's socket: the caller removes them, the chain entry first.
func (a *Agent) Uninstall(ctx context.Context) error {
	a.uninstalling.Store(true)
	a.queue.ShutDown()
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	uids := make([]string, 0, len(a.enrolled))
	for uid := range a.enrolled {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	// The data path first, for every pod: the apiserver may be slow or refuse the agent.
	unenrolled := make([]*pod, 0, len(uids))
	for _, uid := range uids {
		p := a.enrolled[uid]
		a.unenroll(ctx, p)
		unenrolled = append(unenrolled, p)
	}
	// Redirections the agent does not hold: pods whose netns it never found again
	// after a restart, or that it failed to remove before.
	pinned, err := redirect.List(a.opts.PinRoot)
	if err != nil {
		errs = append(errs, err)
	}
	var pods []*corev1.Pod
	if len(pinned) > 0 {
		pods, _ = a.pods.List(labels.Everything())
	}
	for _, uid := range pinned {
		var ips []netip.Addr
		if i := slices.IndexFunc(pods, func(p *corev1.Pod) bool { return string(p.UID) == uid }); i >= 0 {
			ips = podIPs(pods[i])
		}
		netns, _ := pinnedNetns(a.opts.NetnsDir, a.pinDir(uid), ips)
		if err := redirect.Remove(netns, a.pinDir(uid)); err != nil {
			errs = append(errs, fmt.Errorf("removing the redirection pinned for uid %s: %w", uid, err))
			continue
		}
		a.log.Info("orphaned redirection removed", "uid", uid, "netns", netns)
	}
	if left, err := redirect.List(a.opts.PinRoot); err == nil && len(left) > 0 {
		errs = append(errs, fmt.Errorf("redirections still pinned for %v", left))
	}
	for _, p := range unenrolled {
		obj, err := a.pods.Pods(p.namespace).Get(p.name)
		if err != nil || string(obj.UID) != p.uid {
			continue
		}
		if err := a.annotate(ctx, obj, false); err != nil {
			// Expected when the chart's ServiceAccount is deleted already: istiod-lite
			// then advertises the pod with HBONE until the pod is recreated.
			a.log.Warn("clearing a pod's redirection annotation", "pod", p.key(), "err", err)
		}
	}
	if err := os.Remove(a.opts.PinRoot); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("removing the pin root: %w", err))
	}
	a.log.Info("mesh removed from the node's pods", "pods", len(uids), "orphans", len(pinned))
	return errors.Join(errs...)
}

// Uninstalling reports whether Uninstall was called.
func (a *Agent) Uninstalling() bool { return a.uninstalling.Load() }

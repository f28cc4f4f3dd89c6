package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ShutdownMode is what a stopping node agent does to its node.
type ShutdownMode int

const (
	// Keep leaves everything in place (the plugin chained in, every pod's redirection, the
	// pins): the agent is restarting or being upgraded, and its successor takes over. Pods
	// created in between are held by the plugin (it fails their ADD, and the runtime
	// retries) rather than started outside the mesh.
	Keep ShutdownMode = iota
	// Uninstall takes the mesh off the node: every pod is unenrolled and the plugin,
	// its kubeconfig and token are removed. Pods keep running, and their traffic goes
	// direct.
	Uninstall
)

func (m ShutdownMode) String() string {
	if m == Uninstall {
		return "uninstall"
	}
	return "keep"
}

// DecideShutdown decides, when the agent is told to stop, whether the mesh is being removed
// from the node (its DaemonSet is gone or being deleted) or the agent is restarting (its
// DaemonSet is still there), as Istio's CNI agent does (cni/pkg/nodeagent
// Server.ShouldStopForUpgrade). ds and err are the answer to a GET of the agent's own
// DaemonSet; confirmed says whether an earlier GET, at start, found it, which proves the
// DaemonSet's name and the agent's permission to read it.
//
// Unlike Istio, which uninstalls on any error, an answer that does not say the DaemonSet
// is gone keeps everything: unenrolling every pod during a mere restart would let their
// traffic bypass the mesh (no mTLS, no policy) until the next agent enrolls them again.
//
//   - not confirmed at start: Keep (a wrong name or missing permission must not turn
//     every restart into an uninstall);
//   - found, not being deleted: Keep (restart, upgrade);
//   - found with a deletion timestamp, or not found: Uninstall;
//   - 401 Unauthorized: Uninstall. The agent's ServiceAccount is gone (helm uninstall
//     deletes it right after the DaemonSet, usually before the agent gets SIGTERM): its
//     token is refused while its pod still exists;
//   - 403 Forbidden: Uninstall. The permission that worked at start was taken away, which
//     helm uninstall does when it deletes the chart's RBAC;
//   - anything else (timeout, apiserver down, 5xx): Keep.
func DecideShutdown(confirmed bool, ds *appsv1.DaemonSet, err error) (ShutdownMode, string) {
	switch {
	case !confirmed:
		return Keep, "the agent's DaemonSet was never found since start, so a restart cannot be told from an uninstall; leaving the node as it is"
	case err == nil && ds != nil && ds.DeletionTimestamp == nil:
		return Keep, "the agent's DaemonSet is still there: restart or upgrade"
	case err == nil && ds != nil:
		return Uninstall, "the agent's DaemonSet is being deleted"
	case apierrors.IsNotFound(err):
		return Uninstall, "the agent's DaemonSet is gone"
	case apierrors.IsUnauthorized(err):
		return Uninstall, "the apiserver no longer accepts the agent's token: its ServiceAccount was deleted"
	case apierrors.IsForbidden(err):
		return Uninstall, "the agent may no longer read its DaemonSet: its RBAC was deleted"
	case err == nil:
		return Keep, "no answer about the agent's DaemonSet; leaving the node as it is"
	}
	return Keep, fmt.Sprintf("cannot read the agent's DaemonSet (%v); leaving the node as it is", err)
}

// Owner finds out whether the agent's own DaemonSet still exists.
type Owner struct {
	// Kube is the agent's client. Required.
	Kube kubernetes.Interface
	// Namespace and Name are the DaemonSet's. If either is empty, the DaemonSet is never
	// confirmed and Decide always keeps.
	Namespace, Name string
	// Log receives what Confirm and Decide find. If nil, slog.Default().
	Log *slog.Logger

	confirmed atomic.Bool
}

func (o *Owner) log() *slog.Logger {
	if o.Log == nil {
		return slog.Default()
	}
	return o.Log
}

// Confirm reads the DaemonSet until the apiserver gives a definite answer or ctx ends, and
// remembers whether it was found. It logs an error, with the fix, when the DaemonSet is
// not found or may not be read: then Decide will always keep.
func (o *Owner) Confirm(ctx context.Context) {
	if o.Namespace == "" || o.Name == "" {
		o.log().Warn("the agent's DaemonSet is not configured (DAEMONSET_NAME, POD_NAMESPACE): when it stops, the agent will leave the node as it is, also when the mesh is uninstalled")
		return
	}
	wait := 500 * time.Millisecond
	for {
		ds, err := o.Kube.AppsV1().DaemonSets(o.Namespace).Get(ctx, o.Name, metav1.GetOptions{})
		switch {
		case err == nil && ds.DeletionTimestamp == nil:
			o.confirmed.Store(true)
			o.log().Info("found the agent's DaemonSet: when the agent stops, it uninstalls the mesh from the node only if the DaemonSet is gone",
				"daemonset", o.Namespace+"/"+o.Name)
			return
		case err == nil:
			o.log().Warn("the agent's DaemonSet is being deleted", "daemonset", o.Namespace+"/"+o.Name)
			o.confirmed.Store(true)
			return
		case apierrors.IsNotFound(err):
			o.log().Error("the agent's DaemonSet does not exist: when the agent stops, it will leave the node as it is, also when the mesh is uninstalled",
				"daemonset", o.Namespace+"/"+o.Name, "hint", "set DAEMONSET_NAME and POD_NAMESPACE to the DaemonSet running the agent")
			return
		case apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
			o.log().Error("the agent may not read its DaemonSet: when it stops, it will leave the node as it is, also when the mesh is uninstalled",
				"daemonset", o.Namespace+"/"+o.Name, "err", err,
				"hint", "grant the agent's ServiceAccount get on daemonsets (apps) in its namespace")
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// Confirmed reports whether Confirm found the DaemonSet.
func (o *Owner) Confirmed() bool { return o.confirmed.Load() }

// Decide reads the DaemonSet (retrying answers that say nothing until ctx ends) and
// returns DecideShutdown's verdict.
func (o *Owner) Decide(ctx context.Context) (ShutdownMode, string) {
	if !o.Confirmed() {
		return DecideShutdown(false, nil, nil)
	}
	var (
		ds  *appsv1.DaemonSet
		err error
	)
	for {
		ds, err = o.Kube.AppsV1().DaemonSets(o.Namespace).Get(ctx, o.Name, metav1.GetOptions{})
		if err == nil || definite(err) || ctx.Err() != nil {
			break
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	return DecideShutdown(true, ds, err)
}

// definite reports whether err answers the question (the DaemonSet is gone, or the agent
// lost its identity or permission) rather than failing to.
func definite(err error) bool {
	return apierrors.IsNotFound(err) || apierrors.IsUnauthorized(err) || apierrors.IsForbidden(err) || errors.Is(err, context.Canceled)
}

// Package plugin is the ambient-lite CNI plugin: a chained plugin, run by the container
// runtime after the primary CNI plugin, that gets an enrolled pod's traffic redirected to
// ztunnel before the pod's containers start.
//
// ADD reads the pod and its namespace from the apiserver (a bare GET; see kube.go), decides
// enrollment with [ambient.Enrolled], and for an enrolled pod asks the node agent over its unix
// socket (package pluginapi) to redirect the pod, returning only when the agent says redirection
// is in place and ztunnel acknowledged the pod. Pods outside the mesh return at once. Whatever
// happens, the primary plugin's result (prevResult) is passed through unchanged: this plugin adds
// no interface, address or route.
//
// The package does not redirect anything itself, never enters the pod's network namespace and
// keeps no state: that is the node agent's job. It must not depend on client-go.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	corev1 "k8s.io/api/core/v1"
	"log/slog"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ambient-lite/ambient-lite/cni/internal/pluginapi"
	"github.com/ambient-lite/ambient-lite/pkg/ambient"
)

// SupportedVersions are the CNI spec versions the plugin speaks: every version with chaining
// (prevResult), 0.3.0 and later.
var SupportedVersions = version.VersionsStartingFrom("0.3.0")

// K8sArgs are the Kubernetes values container runtimes pass in CNI_ARGS.
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_UID                types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive // CNI_ARGS key
}

// Plugin runs the CNI commands. The zero value logs to os.Stderr.
type Plugin struct {
	// Stderr receives the plugin's logs. If nil, os.Stderr.
	Stderr io.Writer
}

// Funcs returns the commands for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC}
}

func (p *Plugin) logger(conf *Config, args *skel.CmdArgs) *slog.Logger {
	w := p.Stderr
	if w == nil {
		w = os.Stderr
	}
	level := slog.LevelInfo
	if conf != nil {
		level = conf.level
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})).With("component", "cni-plugin")
	if args != nil && args.ContainerID != "" {
		log = log.With("containerID", args.ContainerID)
	}
	return log
}

// pod identifies the pod a command is about.
type pod struct {
	namespace, name, uid string
}

func (p pod) String() string { return p.namespace + "/" + p.name }

// podFromArgs parses CNI_ARGS; ok is false when the runtime passed no Kubernetes pod.
func podFromArgs(args string) (p pod, ok bool, err error) {
	var ka K8sArgs
	ka.IgnoreUnknown = true // runtimes pass more than the keys we read
	if err := types.LoadArgs(args, &ka); err != nil {
		return pod{}, false, fmt.Errorf("parsing CNI_ARGS: %w", err)
	}
	p = pod{namespace: string(ka.K8S_POD_NAMESPACE), name: string(ka.K8S_POD_NAME), uid: string(ka.K8S_POD_UID)}
	return p, p.namespace != "" && p.name != "", nil
}

// Add is CNI ADD.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	log := p.logger(conf, args)
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig,
			"no prevResult: the ambient-lite plugin must be chained after a primary CNI plugin in a conflist (it creates no interface or address itself)", "")
	}
	target, isPod, err := podFromArgs(args.Args)
	if err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(), "")
	}
	if !isPod {
		log.Debug("not a Kubernetes pod (no K8S_POD_NAME/K8S_POD_NAMESPACE in CNI_ARGS); passing through")
		return types.PrintResult(conf.PrevResult, conf.CNIVersion)
	}
	log = log.With("pod", target.String())

	ctx, cancel := context.WithTimeout(context.Background(), conf.TimeoutDuration)
	defer cancel()
	enrolled, err := isEnrolled(ctx, conf, target)
	if err != nil {
		return err
	}
	if !enrolled {
		log.Debug("pod not enrolled in the ambient mesh; passing through")
		return types.PrintResult(conf.PrevResult, conf.CNIVersion)
	}

	ips, err := podIPs(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("pod %s is enrolled in the ambient mesh but %v", target, err), "")
	}
	client := pluginapi.NewClient(conf.AgentSocket, 0)
	resp, err := client.Add(ctx, pluginapi.AddRequest{
		PodName:      target.name,
		PodNamespace: target.namespace,
		PodUID:       target.uid,
		ContainerID:  args.ContainerID,
		Netns:        args.Netns,
		IfName:       args.IfName,
		PodIPs:       ips,
	})
	if err != nil {
		return agentError("redirect", target, conf, err)
	}
	if !resp.Redirected {
		return types.NewError(types.ErrInternal, fmt.Sprintf(
			"pod %s is enrolled in the ambient mesh but the node agent did not confirm its traffic is redirected; see the node agent's logs", target), "")
	}
	log.Info("pod redirected to ztunnel", "ips", ips)
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

// Del is CNI DEL. It tells the node agent the pod's sandbox is going away and always
// succeeds: an unreachable agent, a bad config or missing CNI_ARGS are logged, never returned,
// so a broken mesh cannot stop pods from being torn down. The agent also forgets pods when
// their Pod object goes away, and DEL may be repeated; both ends are idempotent.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		p.logger(nil, args).Warn("DEL: ignoring invalid config", "err", err)
		return nil
	}
	log := p.logger(conf, args)
	target, isPod, err := podFromArgs(args.Args)
	if err != nil || !isPod {
		log.Debug("DEL: not a Kubernetes pod; nothing to do", "err", err)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.TimeoutDuration)
	defer cancel()
	client := pluginapi.NewClient(conf.AgentSocket, 0)
	err = client.Del(ctx, pluginapi.DelRequest{
		PodName:      target.name,
		PodNamespace: target.namespace,
		PodUID:       target.uid,
		ContainerID:  args.ContainerID,
		Netns:        args.Netns,
	})
	if err != nil {
		log.Warn("DEL: node agent not told; it reconciles from the Pod objects", "pod", target.String(), "err", err)
	}
	return nil
}

// Check is CNI CHECK: for an enrolled pod, the node agent must confirm redirection is present.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig,
			"no prevResult: the ambient-lite plugin must be chained after a primary CNI plugin in a conflist", "")
	}
	target, isPod, err := podFromArgs(args.Args)
	if err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(), "")
	}
	if !isPod {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.TimeoutDuration)
	defer cancel()
	enrolled, err := isEnrolled(ctx, conf, target)
	if err != nil || !enrolled {
		return err
	}
	client := pluginapi.NewClient(conf.AgentSocket, 0)
	err = client.Check(ctx, pluginapi.CheckRequest{
		PodName:      target.name,
		PodNamespace: target.namespace,
		PodUID:       target.uid,
		ContainerID:  args.ContainerID,
		Netns:        args.Netns,
	})
	if err != nil {
		return agentError("check redirection of", target, conf, err)
	}
	return nil
}

// Status is CNI STATUS: ready whenever the config is valid. It deliberately does not ask the
// node agent: an agent outage affects only enrolled pods (their ADD fails with a message),
// while reporting not-ready would stop the runtime from starting any pod on the node, in the
// mesh or not.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	if _, err := ParseConfig(args.StdinData); err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	return nil
}

// GC is CNI GC: nothing to do. The plugin keeps no state, and the node agent reconciles its
// pods from the apiserver on its own, so stale attachments are cleaned up without the plugin.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	if _, err := ParseConfig(args.StdinData); err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	return nil
}

// isEnrolled reads the pod and its namespace and applies the ambient enablement rule. Without
// the apiserver the plugin cannot know, so errors fail the command (as Istio's plugin does).
func isEnrolled(ctx context.Context, conf *Config, target pod) (bool, error) {
	// The node agent answers from its caches over the unix socket in about a millisecond;
	// reading the apiserver here costs a TLS handshake (~10 ms) on every pod's ADD. The
	// apiserver stays the authority: whenever the agent gives no answer (down, starting,
	// older, or failing), the plugin reads it itself.
	actx, cancel := context.WithTimeout(ctx, agentEnrollmentTimeout)
	resp, err := pluginapi.NewClient(conf.AgentSocket, 0).Enrollment(actx, pluginapi.EnrollmentRequest{
		PodName: target.name, PodNamespace: target.namespace, PodUID: target.uid,
	})
	cancel()
	if err == nil {
		return resp.Enrolled, nil
	}
	return isEnrolledPerAPIServer(ctx, conf, target)
}

// agentEnrollmentTimeout bounds the fast path; the apiserver is asked after it.
const agentEnrollmentTimeout = 2 * time.Second

// isEnrolledPerAPIServer reads the pod and its namespace from the apiserver.
func isEnrolledPerAPIServer(ctx context.Context, conf *Config, target pod) (bool, error) {
	kube, err := loadKubeconfig(conf.Kubeconfig)
	if err != nil {
		return false, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(
			"kubeconfig %s: %v (the node agent writes this file; check that the ambient-lite node agent runs on this node and that \"kubeconfig\" in the CNI config names its file)",
			conf.Kubeconfig, err), "")
	}
	// Both lookups at once: the ADD of every pod on the node waits for them.
	type nsResult struct {
		ns  *corev1.Namespace
		err error
	}
	nsc := make(chan nsResult, 1)
	go func() {
		ns, err := kube.getNamespace(ctx, target.namespace)
		nsc <- nsResult{ns, err}
	}()
	p, err := kube.getPod(ctx, target.namespace, target.name)
	nsr := <-nsc
	if err != nil {
		return false, types.NewError(types.ErrTryAgainLater, fmt.Sprintf(
			"cannot tell whether pod %s is in the ambient mesh: %v (check that the apiserver %s is reachable from the node and that the plugin's credentials may get pods and namespaces)",
			target, err, kube.server.Host), "")
	}
	if target.uid != "" && string(p.UID) != target.uid {
		return false, types.NewError(types.ErrTryAgainLater, fmt.Sprintf(
			"pod %s has uid %s in the apiserver but the runtime asked for uid %s: the pod was deleted and recreated", target, p.UID, target.uid), "")
	}
	ns, err := nsr.ns, nsr.err
	if err != nil {
		return false, types.NewError(types.ErrTryAgainLater, fmt.Sprintf(
			"cannot tell whether pod %s is in the ambient mesh: %v (check that the apiserver %s is reachable from the node and that the plugin's credentials may get pods and namespaces)",
			target, err, kube.server.Host), "")
	}
	return ambient.Enrolled(p.Labels, p.Annotations, ns.Labels, p.Spec.HostNetwork), nil
}

// agentError turns a node agent failure into a message that says what to fix.
func agentError(what string, target pod, conf *Config, err error) error {
	var (
		unreachable *pluginapi.UnreachableError
		refused     *pluginapi.StatusError
	)
	switch {
	case errors.As(err, &unreachable):
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf(
			"pod %s is enrolled in the ambient mesh but the node agent is unreachable on unix socket %s: %v; check the node agent: it must be running on this node and listening on the \"agentSocket\" of the CNI config",
			target, unreachable.Socket, unreachable.Err), "")
	case errors.As(err, &refused):
		return types.NewError(types.ErrInternal, fmt.Sprintf(
			"node agent could not %s pod %s: %s", what, target, refused.Message), "")
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("node agent on %s: %v", conf.AgentSocket, err), "")
}

// podIPs returns the addresses prevResult gives the pod's own interfaces (those in the pod's
// sandbox, or not tied to an interface); host-side interfaces (bridge, host veth) are skipped.
func podIPs(prev types.Result) ([]string, error) {
	res, err := types100.GetResult(prev)
	if err != nil {
		return nil, fmt.Errorf("its prevResult cannot be read: %w", err)
	}
	var ips []string
	for _, ip := range res.IPs {
		if ip == nil || ip.Address.IP == nil {
			continue
		}
		if ip.Interface != nil {
			i := *ip.Interface
			if i >= 0 && i < len(res.Interfaces) && res.Interfaces[i].Sandbox == "" {
				continue
			}
		}
		ips = append(ips, ip.Address.IP.String())
	}
	if len(ips) == 0 {
		return nil, errors.New("the primary plugin's result (prevResult) has no IP address for the pod")
	}
	return ips, nil
}

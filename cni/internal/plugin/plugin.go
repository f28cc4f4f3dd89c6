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
// When the node agent does not answer, an enrolled pod's ADD waits for it while it restarts
// (its socket file stays in place across a restart) and fails with a message naming the agent
// after the timeout; the runtime retries. When neither the agent nor the apiserver answers,
// the plugin cannot tell whether the pod is in the mesh and fails the ADD, unless the agent is
// gone for good (its socket removed, and the plugin's kubeconfig removed or its token refused:
// an uninstall that left the chain entry behind): then every pod passes through.
//
// The package does not redirect anything itself, never enters the pod's network namespace and
// keeps no state: that is the node agent's job. It must not depend on client-go.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"

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
	enrolled, err := isEnrolled(ctx, conf, target, log)
	if err != nil {
		return asCNI(err)
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
	req := pluginapi.AddRequest{
		PodName:      target.name,
		PodNamespace: target.namespace,
		PodUID:       target.uid,
		ContainerID:  args.ContainerID,
		Netns:        args.Netns,
		IfName:       args.IfName,
		PodIPs:       ips,
	}
	resp, err := client.Add(ctx, req)
	// A restarting agent (its socket file is there, nobody answers yet) or a starting one:
	// the pod waits for it rather than start outside the mesh, up to the timeout.
	for err != nil && agentComing(conf.AgentSocket, err) && sleep(ctx, agentRetry) {
		log.Debug("node agent not serving yet; waiting for it", "err", err)
		resp, err = client.Add(ctx, req)
	}
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
	enrolled, err := isEnrolled(ctx, conf, target, p.logger(conf, args))
	if err != nil || !enrolled {
		return asCNI(err)
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

// isEnrolled tells whether the pod is in the ambient mesh: the node agent's answer, else
// the apiserver's. When neither answers, the plugin cannot know, so it fails the command (as
// Istio's plugin does) — a pod that should be in the mesh must not start outside it — with
// two exceptions decided by agentAbsence: a restarting agent is waited for, up to the
// timeout; and when the agent is gone for good (the chain entry outlived its uninstall), the
// pod passes through, since there is no mesh on the node left to put it in.
func isEnrolled(ctx context.Context, conf *Config, target pod, log *slog.Logger) (bool, error) {
	// The node agent answers from its caches over the unix socket in about a millisecond;
	// reading the apiserver here costs a TLS handshake (~10 ms) on every pod's ADD. The
	// apiserver stays the authority: whenever the agent gives no answer (down, starting,
	// older, or failing), the plugin reads it itself.
	client := pluginapi.NewClient(conf.AgentSocket, 0)
	ask := func() (bool, error) {
		actx, cancel := context.WithTimeout(ctx, agentEnrollmentTimeout)
		defer cancel()
		resp, err := client.Enrollment(actx, pluginapi.EnrollmentRequest{
			PodName: target.name, PodNamespace: target.namespace, PodUID: target.uid,
		})
		if err != nil {
			return false, err
		}
		return resp.Enrolled, nil
	}
	enrolled, agentErr := ask()
	if agentErr == nil {
		return enrolled, nil
	}
	enrolled, apiErr := isEnrolledPerAPIServer(ctx, conf, target)
	if apiErr == nil {
		return enrolled, nil
	}
	switch agentAbsence(conf, agentErr, apiErr) {
	case agentGone:
		log.Warn("the node agent is gone and the apiserver refuses the plugin's credentials: the plugin's entry in the CNI config outlived an uninstall of the ambient mesh; passing the pod through outside the mesh",
			"pod", target.String(), "agentSocket", conf.AgentSocket, "kubeconfig", conf.Kubeconfig, "err", apiErr,
			"hint", "remove the ambient-lite-cni entry from the node's CNI config list")
		return false, nil
	case agentRestarting:
		for sleep(ctx, agentRetry) {
			if enrolled, err := ask(); err == nil {
				return enrolled, nil
			}
		}
	}
	return false, apiErr
}

// agentEnrollmentTimeout bounds the fast path; the apiserver is asked after it.
const agentEnrollmentTimeout = 2 * time.Second

// agentRetry is the pause between attempts to reach a node agent that is coming back.
const agentRetry = 250 * time.Millisecond

// absence is what the plugin makes of a node agent that does not answer.
type absence int

const (
	// agentDown: the agent does not answer; the command fails (the runtime retries).
	agentDown absence = iota
	// agentRestarting: the agent's socket file is there but nobody answers: the agent is
	// restarting (it leaves its socket file when it stops for a restart), or crashed and
	// will be restarted. The plugin waits for it.
	agentRestarting
	// agentGone: the agent's socket file is gone, which the agent does only when it
	// uninstalls the mesh from the node, and so is the plugin's kubeconfig, or the
	// apiserver refuses the plugin's credentials (the agent's ServiceAccount was
	// deleted): this chain entry is a leftover.
	agentGone
)

// agentAbsence classifies a node agent that did not answer (agentErr) when the apiserver
// did not either (apiErr). It looks at the agent's socket file and the plugin's kubeconfig;
// it decides agentGone only when both say the agent removed itself, so that a node that
// rebooted (its /var/run emptied, socket and token gone, but the kubeconfig in the CNI
// config directory kept) still holds its pods until the agent is back.
func agentAbsence(conf *Config, agentErr, apiErr error) absence {
	var unreachable *pluginapi.UnreachableError
	if !errors.As(agentErr, &unreachable) {
		return agentDown // the agent answered, with an error
	}
	_, err := os.Stat(conf.AgentSocket)
	switch {
	case err == nil:
		return agentRestarting
	case !errors.Is(err, fs.ErrNotExist):
		return agentDown
	}
	if _, err := os.Stat(conf.Kubeconfig); errors.Is(err, fs.ErrNotExist) {
		return agentGone
	}
	var ae *apiError
	if errors.As(apiErr, &ae) && (ae.status == http.StatusUnauthorized || ae.status == http.StatusForbidden) {
		return agentGone
	}
	return agentDown
}

// agentComing reports whether err from the agent means it will answer shortly: it is
// starting (503), or restarting (its socket file is there, nobody listens yet).
func agentComing(socket string, err error) bool {
	var (
		unreachable *pluginapi.UnreachableError
		status      *pluginapi.StatusError
	)
	switch {
	case errors.As(err, &status):
		return status.StatusCode == http.StatusServiceUnavailable
	case errors.As(err, &unreachable):
		_, serr := os.Stat(socket)
		return serr == nil
	}
	return false
}

// sleep waits d, or less when ctx ends first; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// isEnrolledPerAPIServer reads the pod and its namespace from the apiserver. Its errors
// are CNI errors that say what to check, wrapping the cause.
func isEnrolledPerAPIServer(ctx context.Context, conf *Config, target pod) (bool, error) {
	kube, err := loadKubeconfig(conf.Kubeconfig)
	if err != nil {
		return false, &cniError{code: types.ErrInvalidNetworkConfig, cause: err, msg: fmt.Sprintf(
			"kubeconfig %s: %v (the node agent writes this file; check that the ambient-lite node agent runs on this node and that \"kubeconfig\" in the CNI config names its file)",
			conf.Kubeconfig, err)}
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
	if err == nil {
		err = nsr.err
	}
	if err != nil {
		return false, &cniError{code: types.ErrTryAgainLater, cause: err, msg: fmt.Sprintf(
			"cannot tell whether pod %s is in the ambient mesh: %v (check that the apiserver %s is reachable from the node and that the plugin's credentials may get pods and namespaces)",
			target, err, kube.server.Host)}
	}
	if target.uid != "" && string(p.UID) != target.uid {
		return false, types.NewError(types.ErrTryAgainLater, fmt.Sprintf(
			"pod %s has uid %s in the apiserver but the runtime asked for uid %s: the pod was deleted and recreated", target, p.UID, target.uid), "")
	}
	return ambient.Enrolled(p.Labels, p.Annotations, nsr.ns.Labels, p.Spec.HostNetwork), nil
}

// cniError is a CNI error (what the runtime reports) that keeps its cause for the plugin.
type cniError struct {
	code  uint
	msg   string
	cause error
}

func (e *cniError) Error() string { return e.msg }
func (e *cniError) Unwrap() error { return e.cause }

// asCNI returns err as the *types.Error skel prints, keeping its code when it has one.
func asCNI(err error) error {
	var ce *cniError
	if errors.As(err, &ce) {
		return types.NewError(ce.code, ce.msg, "")
	}
	return err
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

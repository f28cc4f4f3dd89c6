// Package mesh drives Ambient Lite on a running cluster the way a user does, through kubectl
// and helm: it installs and removes the four Helm charts, applies manifests, reads pods and
// their enrollment, runs commands in pods and scrapes ztunnel's metrics. `make demo`
// (tests/cmd/demo) and the e2e suite (tests/e2e) share it.
//
// It does not start clusters (tests/cluster does) or build images (tests/images), and it
// asserts nothing: callers decide what the output proves.
package mesh

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// SystemNamespace is where the charts are installed (Istio's).
const SystemNamespace = "istio-system"

// Enrollment labels and annotations (Istio's).
const (
	LabelDataplaneMode     = "istio.io/dataplane-mode"
	LabelUseWaypoint       = "istio.io/use-waypoint"
	AnnotationRedirection  = "ambient.istio.io/redirection"
	RedirectionEnabled     = "enabled"
	DataplaneModeAmbient   = "ambient"
	ztunnelMetricsPort     = 15020
	defaultCommandTimeout  = 3 * time.Minute
	helmWaitTimeout        = "3m"
	outputTailInErrorBytes = 4000
)

// DemoApp is the demo's application (namespace-less): Istio's echo as Deployments echo-v1
// and echo-v2 on node2 behind Service echo (and echo-v1, echo-v2), and a client Deployment
// on node1, each with its own ServiceAccount. It knows nothing of the mesh.
//
//go:embed testdata/demo-app.yaml
var DemoApp string

// Kube runs kubectl and helm against one cluster.
type Kube struct {
	// Kubeconfig is the cluster's admin kubeconfig. Required.
	Kubeconfig string
	// BinDir holds kubectl and helm. Required.
	BinDir string
	// HelmHome keeps helm's cache, config and data (HELM_*_HOME) out of $HOME. If empty,
	// helm's defaults.
	HelmHome string
	// Echo, if set, receives every command line before it runs ("$ kubectl ...").
	Echo func(cmdline string)
}

// Error is a command that failed: its command line, exit error and output.
type Error struct {
	Cmdline string
	Err     error
	Output  string
}

func (e *Error) Error() string {
	out := strings.TrimSpace(e.Output)
	if len(out) > outputTailInErrorBytes {
		out = "..." + out[len(out)-outputTailInErrorBytes:]
	}
	return fmt.Sprintf("%s: %v\n%s", e.Cmdline, e.Err, out)
}

func (e *Error) Unwrap() error { return e.Err }

// Run runs BinDir/name with args (stdin if non-nil) and returns its combined output; a
// non-zero exit is an *Error carrying the output.
func (k *Kube) Run(ctx context.Context, stdin io.Reader, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, defaultCommandTimeout)
	defer cancel()
	cmdline := name + " " + strings.Join(quoteArgs(args), " ")
	if k.Echo != nil {
		k.Echo(cmdline)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(k.BinDir, name), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+k.Kubeconfig)
	if k.HelmHome != "" {
		cmd.Env = append(cmd.Env,
			"HELM_CACHE_HOME="+filepath.Join(k.HelmHome, "cache"),
			"HELM_CONFIG_HOME="+filepath.Join(k.HelmHome, "config"),
			"HELM_DATA_HOME="+filepath.Join(k.HelmHome, "data"))
	}
	cmd.Stdin = stdin
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	s := dropHelmSymlinkNotes(out.String())
	if err != nil {
		return s, &Error{Cmdline: cmdline, Err: err, Output: s}
	}
	return s, nil
}

// dropHelmSymlinkNotes removes helm's note about charts/base/files/gateway-api being a
// link (see charts/README.md), which is expected and says nothing.
func dropHelmSymlinkNotes(s string) string {
	if !strings.Contains(s, "found symbolic link") {
		return s
	}
	var keep []string
	for _, l := range strings.SplitAfter(s, "\n") {
		if !strings.Contains(l, "found symbolic link in path") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "")
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"$|;&<>(){}*?\\") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return out
}

// Kubectl runs kubectl.
func (k *Kube) Kubectl(ctx context.Context, args ...string) (string, error) {
	return k.Run(ctx, nil, "kubectl", args...)
}

// Helm runs helm.
func (k *Kube) Helm(ctx context.Context, args ...string) (string, error) {
	return k.Run(ctx, nil, "helm", args...)
}

// Apply applies manifest (YAML, possibly several documents) in namespace ns.
func (k *Kube) Apply(ctx context.Context, ns, manifest string) (string, error) {
	return k.Run(ctx, strings.NewReader(manifest), "kubectl", "-n", ns, "apply", "-f", "-")
}

// Release is one of the four charts as installed.
type Release struct {
	Name  string // Istio's release name
	Chart string // directory under charts/
}

// Releases are the charts in install order (uninstall in the reverse).
var Releases = []Release{
	{"istio-base", "base"},
	{"istiod", "istiod-lite"},
	{"istio-cni", "cni"},
	{"ztunnel", "ztunnel"},
}

// InstallOptions says how to install the charts.
type InstallOptions struct {
	// RepoRoot is the repository holding charts/. Required.
	RepoRoot string
	// Set maps a release name to extra `--set` (or `--set-string` when prefixed with
	// "string:") arguments.
	Set map[string][]string
	// OnRelease, if set, is called after each release is installed and Ready.
	OnRelease func(r Release, took time.Duration, out string)
}

// Install installs (or upgrades) the four releases in order into SystemNamespace, waiting
// for each to be Ready (helm --wait).
func (k *Kube) Install(ctx context.Context, opts InstallOptions) error {
	for _, r := range Releases {
		start := time.Now()
		out, err := k.Helm(ctx, k.installArgs(r, opts)...)
		if err != nil {
			return fmt.Errorf("installing chart %s as %s: %w", r.Chart, r.Name, err)
		}
		if opts.OnRelease != nil {
			opts.OnRelease(r, time.Since(start), out)
		}
	}
	return nil
}

// Upgrade upgrades one release, keeping its values and adding set (as in InstallOptions).
func (k *Kube) Upgrade(ctx context.Context, repoRoot, release string, set ...string) (string, error) {
	for _, r := range Releases {
		if r.Name == release {
			args := []string{"upgrade", r.Name, filepath.Join(repoRoot, "charts", r.Chart), "-n", SystemNamespace,
				"--reuse-values", "--wait", "--timeout", helmWaitTimeout}
			return k.Helm(ctx, append(args, setArgs(set)...)...)
		}
	}
	return "", fmt.Errorf("no release %q", release)
}

func (k *Kube) installArgs(r Release, opts InstallOptions) []string {
	args := []string{"upgrade", "--install", r.Name, filepath.Join(opts.RepoRoot, "charts", r.Chart), "-n", SystemNamespace}
	if r.Chart == "base" {
		args = append(args, "--create-namespace")
	} else {
		args = append(args, "--wait", "--timeout", helmWaitTimeout)
	}
	return append(args, setArgs(opts.Set[r.Name])...)
}

func setArgs(set []string) []string {
	var args []string
	for _, s := range set {
		if v, ok := strings.CutPrefix(s, "string:"); ok {
			args = append(args, "--set-string", v)
		} else {
			args = append(args, "--set", s)
		}
	}
	return args
}

// Uninstall removes the four releases in the reverse order; a missing one is not an error.
func (k *Kube) Uninstall(ctx context.Context) error {
	var errs []error
	for i := len(Releases) - 1; i >= 0; i-- {
		if _, err := k.Helm(ctx, "uninstall", Releases[i].Name, "-n", SystemNamespace, "--ignore-not-found", "--wait", "--timeout", helmWaitTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Pod is what the tests and the demo read of a pod.
type Pod struct {
	Name, UID, Node, IP string
	Ready               bool
	Restarts            int
	Phase               string
	Labels, Annotations map[string]string
	StartedAt           string // the first container's running start time
}

// Enrolled reports whether the CNI agent has the pod's traffic redirected to ztunnel.
func (p Pod) Enrolled() bool { return p.Annotations[AnnotationRedirection] == RedirectionEnabled }

// Pods lists the pods of ns matching selector ("" for all), by name.
func (k *Kube) Pods(ctx context.Context, ns, selector string) ([]Pod, error) {
	args := []string{"-n", ns, "get", "pods", "-o", "json"}
	if selector != "" {
		args = append(args, "-l", selector)
	}
	out, err := k.Kubectl(ctx, args...)
	if err != nil {
		return nil, err
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name, UID           string
				Labels, Annotations map[string]string
				DeletionTimestamp   *string
			}
			Spec   struct{ NodeName string }
			Status struct {
				Phase      string
				PodIP      string
				Conditions []struct{ Type, Status string }
				Containers []struct {
					RestartCount int
					State        struct {
						Running *struct{ StartedAt string }
					}
				} `json:"containerStatuses"`
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("decoding pods of %s: %w", ns, err)
	}
	var pods []Pod
	for _, it := range list.Items {
		if it.Metadata.DeletionTimestamp != nil {
			continue
		}
		p := Pod{Name: it.Metadata.Name, UID: it.Metadata.UID, Node: it.Spec.NodeName, IP: it.Status.PodIP,
			Phase: it.Status.Phase, Labels: it.Metadata.Labels, Annotations: it.Metadata.Annotations}
		for _, c := range it.Status.Conditions {
			if c.Type == "Ready" {
				p.Ready = c.Status == "True"
			}
		}
		for i, c := range it.Status.Containers {
			p.Restarts += c.RestartCount
			if i == 0 && c.State.Running != nil {
				p.StartedAt = c.State.Running.StartedAt
			}
		}
		pods = append(pods, p)
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
	return pods, nil
}

// WaitPods polls the pods of ns matching selector until cond holds for the list (at least one
// pod) or timeout passes; it returns the last list and, on timeout, an error saying what
// was last seen.
func (k *Kube) WaitPods(ctx context.Context, ns, selector string, timeout time.Duration, what string, cond func([]Pod) bool) ([]Pod, error) {
	deadline := time.Now().Add(timeout)
	for {
		pods, err := k.Pods(ctx, ns, selector)
		if err == nil && len(pods) > 0 && cond(pods) {
			return pods, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if err == nil {
				err = fmt.Errorf("timed out after %s waiting for %s; pods of %s: %s", timeout, what, ns, Describe(pods))
			}
			return pods, err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Describe is a one-line summary of pods: name, node, IP, ready, restarts, enrollment.
func Describe(pods []Pod) string {
	var parts []string
	for _, p := range pods {
		parts = append(parts, fmt.Sprintf("%s(node=%s ip=%s ready=%v restarts=%d redirection=%q)",
			p.Name, p.Node, p.IP, p.Ready, p.Restarts, p.Annotations[AnnotationRedirection]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

// AllEnrolled and NoneEnrolled are WaitPods conditions (every pod Ready as well).
func AllEnrolled(pods []Pod) bool {
	for _, p := range pods {
		if !p.Enrolled() || !p.Ready {
			return false
		}
	}
	return true
}

// NoneEnrolled holds when every pod is Ready and none is enrolled.
func NoneEnrolled(pods []Pod) bool {
	for _, p := range pods {
		if p.Enrolled() || !p.Ready {
			return false
		}
	}
	return true
}

// AllReady holds when every pod is Ready.
func AllReady(pods []Pod) bool {
	for _, p := range pods {
		if !p.Ready {
			return false
		}
	}
	return true
}

// Exec runs argv in the first container of pod (a name, or deploy/NAME) in ns.
func (k *Kube) Exec(ctx context.Context, ns, pod string, argv ...string) (string, error) {
	return k.Kubectl(ctx, append([]string{"-n", ns, "exec", pod, "--"}, argv...)...)
}

// Echo is what Istio's echo client printed of its requests.
type EchoResult struct {
	Codes     map[string]int // StatusCode -> requests
	Versions  map[string]int // ServiceVersion -> requests
	Hostnames map[string]int // Hostname -> requests
}

// ParseEcho reads the echo client's output ("[i] StatusCode=200", "[i body] ServiceVersion=v1",
// "[i body] Hostname=...").
func ParseEcho(out string) EchoResult {
	r := EchoResult{Codes: map[string]int{}, Versions: map[string]int{}, Hostnames: map[string]int{}}
	for _, line := range strings.Split(out, "\n") {
		_, kv, ok := strings.Cut(line, "] ")
		if !ok {
			continue
		}
		key, val, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			continue
		}
		switch key {
		case "StatusCode":
			r.Codes[val]++
		case "ServiceVersion":
			r.Versions[val]++
		case "Hostname":
			r.Hostnames[val]++
		}
	}
	return r
}

// Sample is one Prometheus text-format sample.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// ParseMetrics reads the samples named name from a Prometheus text exposition.
func ParseMetrics(text, name string) ([]Sample, error) {
	var out []Sample
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name) || (len(line) > len(name) && line[len(name)] != '{' && line[len(name)] != ' ') {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("metric line %q: %w", line, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func parseSample(line string) (Sample, error) {
	s := Sample{Labels: map[string]string{}}
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return s, errors.New("no value")
	}
	s.Name = line[:i]
	rest := line[i:]
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			rest = strings.TrimLeft(rest, ", ")
			if strings.HasPrefix(rest, "}") {
				rest = rest[1:]
				break
			}
			eq := strings.Index(rest, `="`)
			if eq < 0 {
				return s, errors.New("malformed labels")
			}
			key := rest[:eq]
			rest = rest[eq+2:]
			var val strings.Builder
			j := 0
			for ; j < len(rest) && rest[j] != '"'; j++ {
				if rest[j] == '\\' && j+1 < len(rest) {
					j++
					switch rest[j] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(rest[j])
					}
					continue
				}
				val.WriteByte(rest[j])
			}
			if j == len(rest) {
				return s, errors.New("unterminated label value")
			}
			s.Labels[key] = val.String()
			rest = rest[j+1:]
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return s, errors.New("no value")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, err
	}
	s.Value = v
	return s, nil
}

// ZtunnelMetrics scrapes /metrics (:15020) of every ztunnel pod through the apiserver's pod
// proxy and returns the text by node.
func (k *Kube) ZtunnelMetrics(ctx context.Context) (map[string]string, error) {
	pods, err := k.Pods(ctx, SystemNamespace, "app=ztunnel")
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, p := range pods {
		if !p.Ready {
			continue
		}
		text, err := k.Kubectl(ctx, "get", "--raw",
			fmt.Sprintf("/api/v1/namespaces/%s/pods/%s:%d/proxy/metrics", SystemNamespace, p.Name, ztunnelMetricsPort))
		if err != nil {
			return nil, fmt.Errorf("scraping ztunnel %s on %s: %w", p.Name, p.Node, err)
		}
		out[p.Node] = text
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no Ready ztunnel pod in %s", SystemNamespace)
	}
	return out, nil
}

// TCPConnections returns ztunnel's istio_tcp_connections_opened_total samples, from every
// node, whose labels include match.
func (k *Kube) TCPConnections(ctx context.Context, match map[string]string) ([]Sample, error) {
	byNode, err := k.ZtunnelMetrics(ctx)
	if err != nil {
		return nil, err
	}
	var out []Sample
	for node, text := range byNode {
		samples, err := ParseMetrics(text, "istio_tcp_connections_opened_total")
		if err != nil {
			return nil, fmt.Errorf("ztunnel on %s: %w", node, err)
		}
		for _, s := range samples {
			if matches(s.Labels, match) {
				s.Labels["node"] = node
				out = append(out, s)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Labels["node"]+out[i].Labels["reporter"] < out[j].Labels["node"]+out[j].Labels["reporter"]
	})
	return out, nil
}

func matches(labels, match map[string]string) bool {
	for k, v := range match {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// Sum adds the samples' values.
func Sum(samples []Sample) float64 {
	var n float64
	for _, s := range samples {
		n += s.Value
	}
	return n
}

// CollectLogs writes `kubectl logs` of every pod in namespaces (and `kubectl get events`)
// into dir and returns the files written.
func (k *Kube) CollectLogs(ctx context.Context, dir string, namespaces ...string) []string {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil
	}
	var files []string
	for _, ns := range namespaces {
		if out, err := k.Kubectl(ctx, "-n", ns, "get", "pods,events", "-o", "wide"); err == nil || out != "" {
			f := filepath.Join(dir, ns+".get.txt")
			if os.WriteFile(f, []byte(out), 0o644) == nil {
				files = append(files, f)
			}
		}
		pods, err := k.Pods(ctx, ns, "")
		if err != nil {
			continue
		}
		for _, p := range pods {
			out, _ := k.Kubectl(ctx, "-n", ns, "logs", p.Name, "--all-containers", "--tail=2000")
			f := filepath.Join(dir, ns+"."+p.Name+".log")
			if os.WriteFile(f, []byte(out), 0o644) == nil {
				files = append(files, f)
			}
		}
	}
	return files
}

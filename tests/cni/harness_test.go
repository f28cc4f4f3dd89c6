package cni

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/istiodtest"
	"github.com/ambient-lite/ambient-lite/tests/netns"
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
)

func TestMain(m *testing.M) {
	code := cluster.Main(m)
	istiodtest.Cleanup()
	os.Exit(code)
}

// process is a component running as a real process.
type process struct {
	t    testing.TB
	name string
	bin  string
	args []string
	env  []string
	cmd  *exec.Cmd
	log  *testenv.Buffer
	done chan struct{}
}

func (p *process) start() {
	p.t.Helper()
	p.log = &testenv.Buffer{}
	p.cmd = exec.Command(p.bin, p.args...)
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, p.env...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := cluster.StartChild(p.cmd); err != nil {
		p.t.Fatal(err)
	}
	p.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(p.cmd, p.done)
}

// stop sends sig and waits; SIGKILL after 10 s.
func (p *process) stop(sig syscall.Signal) {
	if p.cmd == nil {
		return
	}
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(sig)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	p.cmd = nil
}

// waitLog waits until the process logs a JSON line whose msg is msg, and returns it.
func (p *process) waitLog(msg string, timeout time.Duration) map[string]any {
	p.t.Helper()
	var found map[string]any
	err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		select {
		case <-p.done:
			return false, fmt.Errorf("%s exited", p.name)
		default:
		}
		for _, line := range strings.Split(p.log.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
				found = rec
			}
		}
		return found != nil, nil
	})
	if err != nil {
		p.t.Fatalf("%s never logged %q: %v\nlog:\n%s", p.name, msg, err, p.log.String())
	}
	return found
}

// cniEnv is one node: a netns holding the bridge, a CNI configuration chaining our plugin
// after bridge + host-local, and the node agent and ztunnel serving it.
type cniEnv struct {
	t       testing.TB
	c       *cluster.Cluster
	mesh    istiodtest.Mesh
	tp      *netns.Topology
	node    string // netns
	nodeObj string // Node name
	dir     string
	subnet  string // e.g. 10.88.7.0/24

	binDir, confDir, agentSock, zdsPath, pinRoot string
	apiServer                                    string // as seen from the node netns
	list                                         *libcni.NetworkConfigList
	cni                                          *libcni.CNIConfig

	agent, ztunnel *process
	ztunnelAdmin   string
	ztunnelStats   string
}

// subnets counts the pod subnets this test binary handed out.
var subnets atomic.Uint32

// nextSubnet returns a pod subnet no other env of this test binary had: the Pod objects of
// an earlier test outlive it in the shared apiserver (until the pod GC removes them), so a
// reused IP would make two workloads claim it. The second octet varies by process.
func nextSubnet() string {
	return fmt.Sprintf("10.%d.%d.0/24", 100+os.Getpid()%100, subnets.Add(1)%250+1)
}

func newEnv(t testing.TB) *cniEnv {
	t.Helper()
	testenv.RequirePrivileged(t, testenv.CapNetAdmin, testenv.CapSysAdmin)
	c := cluster.Shared(t)
	e := &cniEnv{t: t, c: c, tp: netns.New(t), dir: t.TempDir()}
	e.mesh = istiodtest.StartMesh(t, c)
	e.node = e.tp.Namespace("node")
	e.tp.Forwarding(e.node)
	e.nodeObj = "node-" + e.mesh.NS
	e.subnet = nextSubnet()
	ctx := context.Background()
	if _, err := c.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: e.nodeObj}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Client.CoreV1().Nodes().Delete(context.Background(), e.nodeObj, metav1.DeleteOptions{}) })

	// CNI binaries: the reference plugins from the tool cache, ours freshly built.
	e.binDir = filepath.Join(e.dir, "bin")
	if err := os.MkdirAll(e.binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	tools, err := cluster.ResolveBinDir("")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"bridge", "host-local"} {
		src, err := filepath.EvalSymlinks(filepath.Join(tools, name))
		if err != nil {
			testenv.SkipOrFail(t, fmt.Sprintf("CNI plugin %s not built: run make tools (%v)", name, err))
		}
		if err := os.Symlink(src, filepath.Join(e.binDir, name)); err != nil {
			t.Fatal(err)
		}
	}

	// A private bpffs for the agent's pins.
	e.pinRoot = filepath.Join(e.dir, "bpffs")
	if err := os.MkdirAll(e.pinRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("bpf", e.pinRoot, "bpf", 0, ""); err != nil {
		t.Fatalf("mounting a bpffs: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(e.pinRoot, syscall.MNT_DETACH) })
	e.agentSock = filepath.Join(e.dir, "cni", "plugin.sock")
	e.zdsPath = filepath.Join(e.dir, "ztunnel", "ztunnel.sock")

	e.confDir = filepath.Join(e.dir, "net.d")
	e.apiServer = e.forwardAPIServer()
	e.writePrimary()
	e.startAgent()
	e.loadChain()
	e.startZtunnel()
	return e
}

// token creates ServiceAccount ns/name bound to a ClusterRole with rules, and returns a
// token of it.
func (e *cniEnv) token(ns, name string, rules []rbacv1.PolicyRule) string {
	t, c := e.t, e.c
	t.Helper()
	ctx := context.Background()
	role := name + "-" + ns
	if _, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: role}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Client.RbacV1().ClusterRoleBindings().Delete(context.Background(), role, metav1.DeleteOptions{})
		_ = c.Client.RbacV1().ClusterRoles().Delete(context.Background(), role, metav1.DeleteOptions{})
	})
	tr, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// kubeconfig writes a token kubeconfig for server.
func (e *cniEnv) kubeconfig(name, server, token string) string {
	e.t.Helper()
	cfg := map[string]any{
		"apiVersion": "v1", "kind": "Config", "current-context": "c",
		"clusters": []any{map[string]any{"name": "k", "cluster": map[string]any{"server": server, "certificate-authority-data": e.c.Config.CAData}}},
		"users":    []any{map[string]any{"name": "u", "user": map[string]any{"token": token}}},
		"contexts": []any{map[string]any{"name": "c", "context": map[string]any{"cluster": "k", "user": "u"}}},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	path := filepath.Join(e.dir, name+".kubeconfig")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// primaryConfig is the primary CNI's config list: bridge with host-local IPAM.
func (e *cniEnv) primaryConfig() []byte {
	b, err := json.MarshalIndent(map[string]any{
		"cniVersion": "1.0.0", "name": "ambient-test",
		"plugins": []any{
			map[string]any{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
				"ipam": map[string]any{"type": "host-local", "ranges": [][]map[string]string{{{"subnet": e.subnet}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}}, "dataDir": filepath.Join(e.dir, "ipam")}},
		},
	}, "", "  ")
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// writePrimary writes the primary CNI's config, as its own DaemonSet would (atomically).
func (e *cniEnv) writePrimary() {
	e.t.Helper()
	if err := os.MkdirAll(e.confDir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	tmp := filepath.Join(e.dir, "10-bridge.conflist.tmp")
	if err := os.WriteFile(tmp, e.primaryConfig(), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(e.confDir, "10-bridge.conflist")); err != nil {
		e.t.Fatal(err)
	}
}

// chained reads the primary config list and reports whether our plugin is its last link.
func (e *cniEnv) chained() (*libcni.NetworkConfigList, bool) {
	b, err := os.ReadFile(filepath.Join(e.confDir, "10-bridge.conflist"))
	if err != nil {
		return nil, false
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil || len(list.Plugins) != 2 || list.Plugins[1].Network.Type != "ambient-lite-cni" {
		return nil, false
	}
	return list, true
}

// loadChain waits for the node agent to chain our plugin into the primary config, as the
// runtime would then use it.
func (e *cniEnv) loadChain() {
	e.t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		list, ok := e.chained()
		e.list = list
		return ok, nil
	})
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(e.confDir, "10-bridge.conflist"))
		e.t.Fatalf("the node agent never chained its plugin into the primary config:\n%s", b)
	}
	e.cni = libcni.NewCNIConfigWithCacheDir([]string{e.binDir}, filepath.Join(e.dir, "cni-cache"), nil)
}

// forwardAPIServer listens on the node netns's loopback and relays to the apiserver.
func (e *cniEnv) forwardAPIServer() string {
	t := e.t
	t.Helper()
	var l net.Listener
	if err := e.tp.Do(e.node, func() (err error) {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	target := strings.TrimPrefix(e.c.Config.Host, "https://")
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				out, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer out.Close()
				go func() { _, _ = io.Copy(out, in) }()
				_, _ = io.Copy(in, out)
			}()
		}
	}()
	return "https://" + l.Addr().String()
}

func (e *cniEnv) startAgent() {
	t := e.t
	t.Helper()
	if e.agent == nil {
		token := e.token(e.mesh.NS, "cni-agent", []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch", "patch"}},
			{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get", "list", "watch"}},
		})
		tokenFile := filepath.Join(e.dir, "agent-token")
		if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		// The agent runs on the node like a hostNetwork DaemonSet: inside the node netns.
		nsenter, err := exec.LookPath("nsenter")
		if err != nil {
			testenv.SkipOrFail(t, "nsenter (util-linux) is not installed")
		}
		e.agent = &process{t: t, name: "node agent", bin: nsenter, args: []string{
			"--net=/var/run/netns/" + e.node, istiodtest.Binary(t, "cni/cmd/node-agent"),
		}, env: []string{
			"NODE_NAME=" + e.nodeObj, "KUBECONFIG=" + e.kubeconfig("cni-agent", e.apiServer, token),
			"ZDS_PATH=" + e.zdsPath, "PLUGIN_SOCKET=" + e.agentSock, "BPF_PIN_ROOT=" + filepath.Join(e.pinRoot, "ambient-lite"),
			"NETNS_DIR=/var/run/netns", "READY_ADDR=127.0.0.1:0", "LOG_LEVEL=debug",
			"CNI_CONF_DIR=" + e.confDir, "CNI_BIN_DIR=" + e.binDir, "PLUGIN_BINARY=" + istiodtest.Binary(t, "cni/cmd/cni-plugin"),
			"PLUGIN_TOKEN_FILE=" + filepath.Join(e.dir, "plugin-token"), "SOURCE_TOKEN_FILE=" + tokenFile,
		}}
		t.Cleanup(func() {
			e.agent.stop(syscall.SIGTERM)
			if t.Failed() {
				t.Logf("node agent log:\n%s", e.agent.log.String())
			}
		})
	}
	e.agent.start()
	e.agent.waitLog("node agent ready", 30*time.Second)
}

func (e *cniEnv) startZtunnel() {
	t := e.t
	t.Helper()
	if e.ztunnel == nil {
		istiodtest.CreateSA(t, e.c, e.mesh.NS, "ztunnel")
		rootPath := filepath.Join(e.dir, "root-cert.pem")
		tokenPath := filepath.Join(e.dir, "istio-token")
		if err := os.WriteFile(rootPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.mesh.Root.Raw}), 0o600); err != nil {
			t.Fatal(err)
		}
		// The CA lets ztunnel impersonate its node's workloads only with a token bound to a
		// ztunnel pod on that node.
		zpod, err := e.c.Client.CoreV1().Pods(e.mesh.NS).Create(context.Background(), &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "ztunnel"},
			Spec: corev1.PodSpec{NodeName: e.nodeObj, ServiceAccountName: "ztunnel", AutomountServiceAccountToken: ptr.To(false),
				Containers: []corev1.Container{{Name: "ztunnel", Image: "ztunnel:test"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(tokenPath, []byte(istiodtest.SAToken(t, e.c, e.mesh.NS, "ztunnel", "istio-ca", zpod)), 0o600); err != nil {
			t.Fatal(err)
		}
		env := []string{
			"XDS_ADDRESS=" + e.mesh.GRPCAddr, "CA_ADDRESS=" + e.mesh.GRPCAddr, "CA_SERVER_NAME=istiod." + e.mesh.NS + ".svc",
			"ROOT_CERT_PATH=" + rootPath, "TOKEN_PATH=" + tokenPath, "NODE_NAME=" + e.nodeObj, "LOG_LEVEL=debug",
			"POD_NAMESPACE=" + e.mesh.NS, "DRAIN_DURATION=0s", "INPOD_ENABLED=true", "ZDS_PATH=" + e.zdsPath,
		}
		for _, v := range []string{"OUTBOUND_ADDR", "INBOUND_ADDR", "INBOUND_PLAINTEXT_ADDR", "READINESS_ADDR", "STATS_ADDR", "ADMIN_ADDR"} {
			env = append(env, v+"=127.0.0.1:0")
		}
		e.ztunnel = &process{t: t, name: "ztunnel", bin: istiodtest.Binary(t, "ztunnel/cmd/ztunnel"), env: env}
		t.Cleanup(func() {
			e.ztunnel.stop(syscall.SIGTERM)
			if t.Failed() {
				t.Logf("ztunnel log:\n%.20000s", e.ztunnel.log.String())
			}
		})
	}
	e.ztunnel.start()
	rec := e.ztunnel.waitLog("ztunnel ready", 30*time.Second)
	e.ztunnelAdmin, _ = rec["admin"].(string)
	e.ztunnelStats, _ = rec["stats"].(string)
}

// pod is one pod: its Pod object, netns and CNI attachment.
type pod struct {
	ns, name, netns string
	uid             string
	ip              string
	rt              *libcni.RuntimeConf
}

// addPod creates the Pod object (on the node, not yet running), its netns, and runs the
// CNI ADD of the whole chain inside the node netns as a runtime does; then it reports the
// pod running with its IP, as kubelet does.
func (e *cniEnv) addPod(ns, name string, lbls map[string]string) (*pod, error) {
	t := e.t
	t.Helper()
	ctx := context.Background()
	obj, err := e.c.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls},
		Spec: corev1.PodSpec{NodeName: e.nodeObj, AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{Name: "app", Image: "app:test", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := &pod{ns: ns, name: name, uid: string(obj.UID), netns: e.tp.Namespace(name)}
	p.rt = &libcni.RuntimeConf{
		ContainerID: "c-" + p.uid, NetNS: "/var/run/netns/" + p.netns, IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", name}, {"K8S_POD_UID", p.uid}},
	}
	var res *types100.Result
	err = e.tp.Do(e.node, func() error {
		r, err := e.cni.AddNetworkList(ctx, e.list, p.rt)
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return p, err
	}
	if len(res.IPs) == 0 {
		t.Fatalf("CNI ADD of %s/%s returned no IP: %v", ns, name, res)
	}
	p.ip = res.IPs[0].Address.IP.String()
	// The node agent annotated the pod meanwhile: report the status on the latest version.
	if obj, err = e.c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	obj.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.ip, PodIPs: []corev1.PodIP{{IP: p.ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if _, err := e.c.Client.CoreV1().Pods(ns).UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return p, nil
}

// delPod runs the CNI DEL of the chain and deletes the Pod object.
func (e *cniEnv) delPod(p *pod) {
	e.t.Helper()
	if err := e.tp.Do(e.node, func() error { return e.cni.DelNetworkList(context.Background(), e.list, p.rt) }); err != nil {
		e.t.Errorf("CNI DEL of %s/%s: %v", p.ns, p.name, err)
	}
	_ = e.c.Client.CoreV1().Pods(p.ns).Delete(context.Background(), p.name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
}

// programs counts the sk_lookup programs attached to the pod's netns.
func (e *cniEnv) programs(p *pod) int {
	e.t.Helper()
	f, err := os.Open("/var/run/netns/" + p.netns)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachSkLookup})
	if err != nil {
		e.t.Fatalf("querying the sk_lookup programs of %s: %v", p.netns, err)
	}
	return len(res.Programs)
}

// pins lists the agent's pin directories (pod uids).
func (e *cniEnv) pins() []string {
	entries, _ := os.ReadDir(filepath.Join(e.pinRoot, "ambient-lite"))
	var out []string
	for _, d := range entries {
		out = append(out, d.Name())
	}
	return out
}

// serve runs an echo server inside the pod's netns on port: it answers each connection
// with "<pod name> saw <remote address>" and then echoes.
func (e *cniEnv) serve(p *pod, port int) {
	e.t.Helper()
	var l net.Listener
	if err := e.tp.Do(p.netns, func() (err error) {
		l, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s saw %s\n", p.name, c.RemoteAddr())
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// talk dials addr from inside the pod's netns and returns the server's greeting.
func (e *cniEnv) talk(from *pod, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := e.tp.DialContext(from.netns)(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		return "", fmt.Errorf("reading the greeting from %s: %w", addr, err)
	}
	return strings.TrimSpace(string(buf[:n])), nil
}

// metric sums ztunnel's counter name over the series whose labels contain every want pair.
func (e *cniEnv) metric(name string, want map[string]string) float64 {
	resp, err := http.Get("http://" + e.ztunnelStats + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for k, v := range want {
			ok = ok && strings.Contains(line, k+`="`+v+`"`)
		}
		if !ok {
			continue
		}
		var v float64
		fmt.Sscanf(line[strings.LastIndex(line, " ")+1:], "%g", &v)
		sum += v
	}
	return sum
}

// Package cluster runs a real local Kubernetes cluster for tests and the demo: etcd,
// kube-apiserver, kube-controller-manager and kube-scheduler, with PKI generated in Go, RBAC
// on, ServiceAccount tokens and TokenReview working, and the CRDs the mesh needs installed.
//
// Without nodes (the default) the control plane runs on loopback, on free ports, and pods are
// scheduled but never started: [Shared] gives tests one such control plane per test binary
// (with [Main] in TestMain). With Options.Nodes it is a whole cluster, as kind builds one but
// without Docker: a cluster network of network namespaces (network.go), the control plane in
// one of them, and kubelet nodes (node.go) running containerd, the kubelet and kube-proxy, pod
// networking by the reference bridge plugin with routes between nodes, CoreDNS, and images
// loaded from archives (tests/images). The host's network namespace is never changed; the
// host reaches the apiserver through a loopback forwarder. The shell uses the localcluster
// command (`make cluster-up` / `make cluster-down`). Only tests/ may import it.
package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/netnsdial"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Options configures a control plane. The zero value is usable.
type Options struct {
	// BinDir holds etcd, kube-apiserver, kube-controller-manager and kube-scheduler. If empty,
	// $AMBIENT_LITE_BIN_DIR, else the repository's .bin (filled by `make tools`).
	BinDir string
	// Dir receives the PKI, etcd data, logs and kubeconfig. If empty, a new temporary
	// directory is created and removed by Stop. If set, it must not exist yet or be empty.
	Dir string
	// Detached starts the processes in their own sessions, so they outlive this process
	// (`make cluster-up`). Otherwise they are killed when this process dies.
	Detached bool
	// SkipCRDs leaves out the Istio security and Gateway API CRDs.
	SkipCRDs bool
	// ServiceCIDR is the Service IP range. If empty, 10.96.0.0/16.
	ServiceCIDR string
	// Nodes is how many kubelet nodes to run, 0 to MaxNodes. With nodes, every component runs
	// in network namespaces of the cluster's own network.
	Nodes int
	// ImageDir holds the image archives the nodes load (tests/images). If empty, the
	// repository's out/images.
	ImageDir string
	// ID names the cluster's network namespaces (al-<ID>-...) and cgroups
	// (/ambient-lite/<ID>), 1 to 8 lowercase letters and digits; random if empty.
	ID string
	// KubeletArgs are extra kubelet flags (feature gates, verbosity).
	KubeletArgs []string
	// ForwardCommand is, for a Detached cluster with nodes, the command that relays the host's
	// loopback port to the apiserver after this process exits (`localcluster forward`): it
	// inherits the listening socket as fd 3 and gets --netns PATH --to ADDR.
	ForwardCommand []string
	// Log receives progress messages. If nil, slog.Default().
	Log *slog.Logger
}

// Cluster is a running control plane.
type Cluster struct {
	// Dir holds everything the cluster wrote; Stop removes it when Start created it.
	Dir string
	// Kubeconfig is the path of an admin (system:masters) kubeconfig.
	Kubeconfig string
	// Config is the admin client configuration.
	Config *rest.Config
	// Client is an admin clientset.
	Client kubernetes.Interface
	// Ready is how long Start took until every component was ready.
	Ready time.Duration
	// EtcdReady and APIServerReady are when, after Start began, etcd answered /health and
	// the apiserver /readyz (of the last attempt, if ports had to be picked again).
	EtcdReady, APIServerReady time.Duration
	// NodesReady and DNSReady are when, after Start began, every node was Ready and CoreDNS
	// was available (clusters with nodes only).
	NodesReady, DNSReady time.Duration
	// ID names the cluster's network namespaces and cgroups (clusters with nodes only).
	ID string
	// Nodes are the cluster's node names.
	Nodes []string

	procs      []*process
	res        resources
	nodes      []*node
	cp         machine      // the control plane's netns (clusters with nodes)
	fwd        net.Listener // the in-process apiserver forwarder
	fwdDone    chan error
	forwardCmd []string // the detached apiserver forwarder
	binDir     string
	imageDir   string
	ownsDir    bool
	started    time.Time
	log        *slog.Logger
}

// MaxNodes bounds Options.Nodes: the cluster network has room for more, the machine has not.
const MaxNodes = 8

var validID = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

const (
	readyTimeout = 90 * time.Second
	stopGrace    = 10 * time.Second
)

// component names, in start order; used for log files and the detached state file.
const (
	etcdName       = "etcd"
	apiserverName  = "kube-apiserver"
	controllerName = "kube-controller-manager"
	schedulerName  = "kube-scheduler"
)

type ports struct{ etcdClient, etcdPeer, apiserver, controller, scheduler int }

// Start brings up the cluster and returns once the apiserver serves, the controller
// manager and scheduler are healthy and the CRDs are established, and, with nodes, once every
// node is Ready and CoreDNS is available.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	start := time.Now()
	c := &Cluster{log: opts.Log, started: start}
	if c.log == nil {
		c.log = slog.Default()
	}
	if opts.Nodes < 0 || opts.Nodes > MaxNodes {
		return nil, fmt.Errorf("%d nodes: want 0 to %d", opts.Nodes, MaxNodes)
	}
	if opts.ID != "" && !validID.MatchString(opts.ID) {
		return nil, fmt.Errorf("cluster ID %q: want 1 to 8 lowercase letters and digits", opts.ID)
	}
	binDir, err := ResolveBinDir(opts.BinDir)
	if err != nil {
		return nil, err
	}
	if opts.Nodes > 0 {
		if err := checkNodeBinaries(binDir); err != nil {
			return nil, err
		}
	}
	if err := c.makeDir(opts.Dir); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = c.Stop()
		}
	}()

	cidr := opts.ServiceCIDR
	if cidr == "" {
		cidr = "10.96.0.0/16"
	}
	serviceIP, err := firstIP(cidr)
	if err != nil {
		return nil, err
	}
	if opts.Nodes == 0 {
		if err := c.startLoopback(ctx, binDir, serviceIP, cidr, opts); err != nil {
			return nil, err
		}
	} else if err := c.startWithNodes(ctx, binDir, serviceIP, cidr, opts); err != nil {
		return nil, err
	}
	ok = true
	c.Ready = time.Since(start)
	c.log.Info("cluster ready", "dir", c.Dir, "kubeconfig", c.Kubeconfig, "nodes", len(c.nodes), "took", c.Ready.Round(time.Millisecond))
	return c, nil
}

// startLoopback starts a control plane without nodes on loopback.
func (c *Cluster) startLoopback(ctx context.Context, binDir string, serviceIP net.IP, cidr string, opts Options) error {
	p, err := newPKI(filepath.Join(c.Dir, "pki"), serviceIP, nil, nil)
	if err != nil {
		return err
	}
	// Free ports are picked by binding :0; another process may grab one before our child binds
	// it, so a start whose component dies at once is retried with new ports.
	for attempt := 1; ; attempt++ {
		pt, err := freePorts()
		if err != nil {
			return err
		}
		pl := placement{ports: pt}
		err = c.startCore(ctx, binDir, p, pl, cidr, opts.Detached)
		if err == nil {
			err = c.startControllers(ctx, binDir, p, pl, cidr, opts.Detached, opts.SkipCRDs)
		}
		if err == nil {
			return nil
		}
		if attempt == 3 || !errors.Is(err, errExitedEarly) || ctx.Err() != nil {
			return err
		}
		c.log.Warn("control plane component exited during start, retrying with new ports", "err", err)
		c.stopProcs()
	}
}

var errExitedEarly = errors.New("exited during start-up")

// serviceAccountIssuer is the iss claim of the cluster's ServiceAccount tokens.
const serviceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

// placement says where the control plane runs: on the host's loopback (netns empty), or in
// the control plane's network namespace of a cluster with nodes.
type placement struct {
	ports     ports
	netns     string     // path of the network namespace; "" is the host's
	advertise netip.Addr // the apiserver's address on the cluster network (with netns)
}

// wrap makes argv run inside the placement's network namespace.
func (pl placement) wrap(argv []string) []string {
	if pl.netns == "" {
		return argv
	}
	return append([]string{"nsenter", "--net=" + pl.netns, "--"}, argv...)
}

// dial connects from inside the placement's network namespace.
func (pl placement) dial() func(ctx context.Context, network, addr string) (net.Conn, error) {
	if pl.netns == "" {
		return (&net.Dialer{}).DialContext
	}
	return netnsdial.Dialer(pl.netns)
}

// startCore starts etcd and the apiserver and waits for the apiserver's /readyz.
func (c *Cluster) startCore(ctx context.Context, binDir string, p *pki, pl placement, cidr string, detached bool) error {
	pt := pl.ports
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(pt.etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(pt.etcdPeer)
	dataDir := filepath.Join(c.Dir, "etcd")
	_ = os.RemoveAll(dataDir) // a retried start begins from empty data
	etcd, err := c.start(binDir, etcdName, pl, detached,
		"--name=local", "--data-dir="+dataDir,
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=local="+peerURL,
		// A throwaway cluster: durability buys nothing and fsync costs start-up time.
		"--unsafe-no-fsync", "--log-level=warn",
	)
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, etcd, etcdURL+"/health", nil, pl.dial()); err != nil {
		return err
	}
	c.EtcdReady = time.Since(c.started)

	args := []string{
		"--secure-port=" + strconv.Itoa(pt.apiserver),
		"--etcd-servers=" + etcdURL,
		"--cert-dir=" + filepath.Join(c.Dir, "apiserver"),
		"--tls-cert-file=" + p.ServingCert, "--tls-private-key-file=" + p.ServingKey,
		"--client-ca-file=" + p.CACert,
		"--kubelet-client-certificate=" + p.KubeletClientCert, "--kubelet-client-key=" + p.KubeletClientKey,
		"--service-account-issuer=" + serviceAccountIssuer,
		"--service-account-key-file=" + p.SAPublic,
		"--service-account-signing-key-file=" + p.SAPrivate,
		"--service-cluster-ip-range=" + cidr,
		"--authorization-mode=Node,RBAC",
		"--allow-privileged=true",
	}
	if pl.netns == "" {
		args = append(args, "--advertise-address=127.0.0.1", "--bind-address=127.0.0.1",
			// The loopback advertise address cannot be an Endpoints address; nothing in-cluster
			// reaches the apiserver through the kubernetes Service on this control plane.
			"--endpoint-reconciler-type=none")
	} else {
		args = append(args, "--advertise-address="+pl.advertise.String(), "--bind-address=0.0.0.0",
			"--enable-admission-plugins=NodeRestriction",
			// exec, logs and port-forward go to the kubelet at its node IP, whose serving
			// certificate the cluster CA signed.
			"--kubelet-preferred-address-types=InternalIP",
			"--kubelet-certificate-authority="+p.CACert)
	}
	api, err := c.start(binDir, apiserverName, pl, detached, args...)
	if err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	apiURL := "https://127.0.0.1:" + strconv.Itoa(pt.apiserver) // as the control plane sees it
	hostURL := apiURL
	if pl.netns != "" {
		if hostURL, err = c.startForward(pl, detached); err != nil {
			return err
		}
	}
	if err := writeKubeconfig(c.Kubeconfig, hostURL, p, p.AdminCert, p.AdminKey, "ambient-lite-admin"); err != nil {
		return err
	}
	if c.Config, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
		return fmt.Errorf("loading admin kubeconfig: %w", err)
	}
	c.Config.QPS, c.Config.Burst = 100, 200
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return fmt.Errorf("creating admin client: %w", err)
	}
	tlsCfg, err := rest.TLSConfigFor(c.Config)
	if err != nil {
		return fmt.Errorf("admin TLS config: %w", err)
	}
	if err := waitHTTP(ctx, api, apiURL+"/readyz", tlsCfg, pl.dial()); err != nil {
		return err
	}
	c.APIServerReady = time.Since(c.started)
	return nil
}

// startControllers starts the controller manager and scheduler, installs the CRDs
// meanwhile, and waits for all of it.
func (c *Cluster) startControllers(ctx context.Context, binDir string, p *pki, pl placement, cidr string, detached, skipCRDs bool) error {
	pt := pl.ports
	apiURL := "https://127.0.0.1:" + strconv.Itoa(pt.apiserver)
	kcmArgs, err := c.componentArgs(controllerName, p, p.ControllerCert, p.ControllerKey, apiURL, pt.controller)
	if err != nil {
		return err
	}
	kcmArgs = append(kcmArgs,
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+p.SAPrivate,
		"--root-ca-file="+p.CACert,
		"--cluster-signing-cert-file="+p.CACert, "--cluster-signing-key-file="+p.CAKey,
		"--service-cluster-ip-range="+cidr,
	)
	if pl.netns != "" {
		// Node IPAM: every node gets a /24 of the pod CIDR as its podCIDR.
		kcmArgs = append(kcmArgs, "--allocate-node-cidrs=true", "--cluster-cidr="+podCIDR.String(), "--node-cidr-mask-size=24")
	}
	kcm, err := c.start(binDir, controllerName, pl, detached, kcmArgs...)
	if err != nil {
		return err
	}
	schedArgs, err := c.componentArgs(schedulerName, p, p.SchedulerCert, p.SchedulerKey, apiURL, pt.scheduler)
	if err != nil {
		return err
	}
	sched, err := c.start(binDir, schedulerName, pl, detached, schedArgs...)
	if err != nil {
		return err
	}
	crdErr := make(chan error, 1)
	go func() {
		if skipCRDs {
			crdErr <- nil
			return
		}
		crdErr <- InstallCRDs(ctx, c.Config)
	}()
	// The components serve /healthz with self-signed certificates on loopback.
	insecure := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // health probe of a local child process
	err = errors.Join(
		waitHTTP(ctx, kcm, "https://127.0.0.1:"+strconv.Itoa(pt.controller)+"/healthz", insecure, pl.dial()),
		waitHTTP(ctx, sched, "https://127.0.0.1:"+strconv.Itoa(pt.scheduler)+"/healthz", insecure, pl.dial()),
	)
	if cerr := <-crdErr; cerr != nil {
		err = errors.Join(err, fmt.Errorf("installing CRDs: %w", cerr))
	}
	return err
}

// componentArgs writes a kubeconfig for a controller component with its own client
// certificate (whose CN is the RBAC user Kubernetes binds its default roles to) and returns
// the flags kube-controller-manager and kube-scheduler share: that identity for API access
// and for delegated authentication and authorization of their /healthz port.
func (c *Cluster) componentArgs(name string, p *pki, cert, key, apiURL string, port int) ([]string, error) {
	kubeconfig := filepath.Join(c.Dir, name+".kubeconfig")
	if err := writeKubeconfig(kubeconfig, apiURL, p, cert, key, "system:"+name); err != nil {
		return nil, err
	}
	return []string{
		"--kubeconfig=" + kubeconfig, "--authentication-kubeconfig=" + kubeconfig, "--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + filepath.Join(c.Dir, name),
		"--leader-elect=false",
	}, nil
}

func (c *Cluster) start(binDir, name string, pl placement, detached bool, args ...string) (*process, error) {
	argv := pl.wrap(append([]string{filepath.Join(binDir, name)}, args...))
	p, err := startProcess(name, argv, nil, filepath.Join(c.Dir, name+".log"), detached)
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	return p, nil
}

// Stop terminates every component (newest first), removes the cluster network, node
// namespaces and cgroups, and removes Dir if Start created it. It is idempotent.
func (c *Cluster) Stop() error {
	c.stopProcs()
	if c.fwd != nil {
		_ = c.fwd.Close()
		<-c.fwdDone
		c.fwd = nil
	}
	if err := c.res.release(); err != nil {
		return fmt.Errorf("releasing cluster resources: %w", err)
	}
	c.res = resources{}
	if c.ownsDir && c.Dir != "" {
		if err := os.RemoveAll(c.Dir); err != nil {
			return fmt.Errorf("removing cluster dir: %w", err)
		}
		c.Dir = ""
	}
	return nil
}

func (c *Cluster) stopProcs() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop(stopGrace)
	}
	c.procs = nil
}

func (c *Cluster) makeDir(dir string) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "ambient-lite-cluster-")
		if err != nil {
			return fmt.Errorf("creating cluster dir: %w", err)
		}
		c.Dir, c.ownsDir = d, true
		return nil
	}
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return fmt.Errorf("cluster dir %s is not empty (is a cluster running there? stop it first)", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating cluster dir: %w", err)
	}
	c.Dir = dir
	return nil
}

// waitHTTP polls url (connecting with dial) until it answers 200, the process exits, or ctx
// ends.
func waitHTTP(ctx context.Context, p *process, url string, tlsCfg *tls.Config, dial func(ctx context.Context, network, addr string) (net.Conn, error)) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg, DialContext: dial}}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var last error
	for {
		if done, err := p.exited(); done {
			return fmt.Errorf("%s %w (%v); last log lines:\n%s", p.name, errExitedEarly, err, logTail(p.logPath, 15))
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s at %s: %w (last: %v); last lines of %s:\n%s", p.name, url, ctx.Err(), last, p.logPath, logTail(p.logPath, 15))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func writeKubeconfig(path, server string, p *pki, cert, key, user string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: p.caPEM}
	certPEM, err := os.ReadFile(cert)
	if err != nil {
		return fmt.Errorf("reading %s: %w", cert, err)
	}
	keyPEM, err := os.ReadFile(key)
	if err != nil {
		return fmt.Errorf("reading %s: %w", key, err)
	}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts["ambient-lite"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: user}
	cfg.CurrentContext = "ambient-lite"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return nil
}

// freePorts reserves distinct free loopback ports by binding them all at once.
func freePorts() (ports, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	var got [5]int
	for i := range got {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return ports{}, fmt.Errorf("reserving a loopback port: %w", err)
		}
		ls = append(ls, l)
		got[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports{got[0], got[1], got[2], got[3], got[4]}, nil
}

func firstIP(cidr string) (net.IP, error) {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("parsing service CIDR %q: %w", cidr, err)
	}
	ip := append(net.IP(nil), n.IP...)
	ip[len(ip)-1]++
	return ip, nil
}

// Package cluster runs a real local Kubernetes control plane for tests and the demo:
// etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback, on free
// ports, with PKI generated in Go, RBAC on, ServiceAccount tokens and TokenReview working,
// and the CRDs the mesh needs installed.
//
// It is not a node: no kubelet runs, so pods are scheduled (or found unschedulable) but never
// started. Tests use [Shared] (one control plane per test binary, with [Main] in TestMain);
// the shell uses the localcluster command (`make cluster-up` / `make cluster-down`).
// Only tests/ may import it.
package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

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

	procs   []*process
	ownsDir bool
	started time.Time
	log     *slog.Logger
}

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

// Start brings up the control plane and returns once the apiserver serves, the
// controller manager and scheduler are healthy and the CRDs are established.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	start := time.Now()
	c := &Cluster{log: opts.Log, started: start}
	if c.log == nil {
		c.log = slog.Default()
	}
	binDir, err := ResolveBinDir(opts.BinDir)
	if err != nil {
		return nil, err
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
	p, err := newPKI(filepath.Join(c.Dir, "pki"), serviceIP)
	if err != nil {
		return nil, err
	}
	// Free ports are picked by binding :0; another process may grab one before our child binds
	// it, so a start whose component dies at once is retried with new ports.
	for attempt := 1; ; attempt++ {
		pt, err := freePorts()
		if err != nil {
			return nil, err
		}
		err = c.startCore(ctx, binDir, p, pt, cidr, opts.Detached)
		if err == nil {
			err = c.startControllers(ctx, binDir, p, pt, cidr, opts.Detached, opts.SkipCRDs)
		}
		if err == nil {
			break
		}
		if attempt == 3 || !errors.Is(err, errExitedEarly) || ctx.Err() != nil {
			return nil, err
		}
		c.log.Warn("control plane component exited during start, retrying with new ports", "err", err)
		c.stopProcs()
	}
	ok = true
	c.Ready = time.Since(start)
	c.log.Info("control plane ready", "dir", c.Dir, "kubeconfig", c.Kubeconfig, "took", c.Ready.Round(time.Millisecond))
	return c, nil
}

var errExitedEarly = errors.New("exited during start-up")

// serviceAccountIssuer is the iss claim of the cluster's ServiceAccount tokens.
const serviceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

// startCore starts etcd and the apiserver and waits for the apiserver's /readyz.
func (c *Cluster) startCore(ctx context.Context, binDir string, p *pki, pt ports, cidr string, detached bool) error {
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(pt.etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(pt.etcdPeer)
	dataDir := filepath.Join(c.Dir, "etcd")
	_ = os.RemoveAll(dataDir) // a retried start begins from empty data
	etcd, err := c.start(binDir, etcdName, detached,
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
	if err := waitHTTP(ctx, etcd, etcdURL+"/health", nil); err != nil {
		return err
	}
	c.EtcdReady = time.Since(c.started)

	apiURL := "https://127.0.0.1:" + strconv.Itoa(pt.apiserver)
	api, err := c.start(binDir, apiserverName, detached,
		"--advertise-address=127.0.0.1", "--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(pt.apiserver),
		"--etcd-servers="+etcdURL,
		"--cert-dir="+filepath.Join(c.Dir, "apiserver"),
		"--tls-cert-file="+p.ServingCert, "--tls-private-key-file="+p.ServingKey,
		"--client-ca-file="+p.CACert,
		"--kubelet-client-certificate="+p.KubeletClientCert, "--kubelet-client-key="+p.KubeletClientKey,
		"--service-account-issuer="+serviceAccountIssuer,
		"--service-account-key-file="+p.SAPublic,
		"--service-account-signing-key-file="+p.SAPrivate,
		"--service-cluster-ip-range="+cidr,
		"--authorization-mode=Node,RBAC",
		"--allow-privileged=true",
		// The loopback advertise address cannot be an Endpoints address; nothing in-cluster
		// reaches the apiserver through the kubernetes Service on this control plane.
		"--endpoint-reconciler-type=none",
	)
	if err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := writeKubeconfig(c.Kubeconfig, apiURL, p, p.AdminCert, p.AdminKey, "ambient-lite-admin"); err != nil {
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
	if err := waitHTTP(ctx, api, apiURL+"/readyz", tlsCfg); err != nil {
		return err
	}
	c.APIServerReady = time.Since(c.started)
	return nil
}

// startControllers starts the controller manager and scheduler, installs the CRDs
// meanwhile, and waits for all of it.
func (c *Cluster) startControllers(ctx context.Context, binDir string, p *pki, pt ports, cidr string, detached, skipCRDs bool) error {
	kcmArgs, err := c.componentArgs(controllerName, p, p.ControllerCert, p.ControllerKey, pt.controller)
	if err != nil {
		return err
	}
	kcm, err := c.start(binDir, controllerName, detached, append(kcmArgs,
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+p.SAPrivate,
		"--root-ca-file="+p.CACert,
		"--cluster-signing-cert-file="+p.CACert, "--cluster-signing-key-file="+p.CAKey,
		"--service-cluster-ip-range="+cidr,
	)...)
	if err != nil {
		return err
	}
	schedArgs, err := c.componentArgs(schedulerName, p, p.SchedulerCert, p.SchedulerKey, pt.scheduler)
	if err != nil {
		return err
	}
	sched, err := c.start(binDir, schedulerName, detached, schedArgs...)
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
		waitHTTP(ctx, kcm, "https://127.0.0.1:"+strconv.Itoa(pt.controller)+"/healthz", insecure),
		waitHTTP(ctx, sched, "https://127.0.0.1:"+strconv.Itoa(pt.scheduler)+"/healthz", insecure),
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
func (c *Cluster) componentArgs(name string, p *pki, cert, key string, port int) ([]string, error) {
	kubeconfig := filepath.Join(c.Dir, name+".kubeconfig")
	if err := writeKubeconfig(kubeconfig, c.Config.Host, p, cert, key, "system:"+name); err != nil {
		return nil, err
	}
	return []string{
		"--kubeconfig=" + kubeconfig, "--authentication-kubeconfig=" + kubeconfig, "--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + filepath.Join(c.Dir, name),
		"--leader-elect=false",
	}, nil
}

func (c *Cluster) start(binDir, name string, detached bool, args ...string) (*process, error) {
	p, err := startProcess(name, filepath.Join(binDir, name), args, filepath.Join(c.Dir, name+".log"), detached)
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	return p, nil
}

// Stop terminates every component (newest first) and removes Dir if Start created it.
// It is idempotent.
func (c *Cluster) Stop() error {
	c.stopProcs()
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

// waitHTTP polls url until it answers 200, the process exits, or ctx ends.
func waitHTTP(ctx context.Context, p *process, url string, tlsCfg *tls.Config) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
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
			return fmt.Errorf("waiting for %s at %s: %w (last: %v); log %s", p.name, url, ctx.Err(), last, p.logPath)
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

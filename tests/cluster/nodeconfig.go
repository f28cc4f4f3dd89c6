package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"text/template"
)

// nodeConfig is what one node's configuration files are rendered from. Paths are as the
// node sees them (inside its mount namespace), except ConfigDir, which is the same path on the
// host and in the node.
type nodeConfig struct {
	Name        string
	IP          netip.Addr
	APIServer   string // https URL of the apiserver on the cluster network
	ConfigDir   string // kubeconfigs, certificates and these files
	CgroupRoot  string // the kubelet's --cgroup-root (pods go under <CgroupRoot>/kubepods)
	ClusterDNS  netip.Addr
	ClusterCIDR netip.Prefix
	PauseImage  string
}

// Paths inside every node (its mount namespace gives it its own copy of each).
const (
	nodeContainerdSocket = "/run/containerd/containerd.sock"
	nodeCNIConfDir       = "/etc/cni/net.d"
	nodeCNIBinDir        = "/opt/cni/bin"
	nodeCNIConfFile      = nodeCNIConfDir + "/10-ambient-lite-bridge.conflist"
)

var containerdTemplate = template.Must(template.New("containerd").Parse(`# containerd of node {{.Name}}, written by the local cluster (tests/cluster).
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
# Plugins a node never uses: skipping them makes start-up faster and its log quieter.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "` + nodeContainerdSocket + `"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{{.PauseImage}}"
  # This machine lacks CAP_SYS_RESOURCE: lowering a process's oom_score_adj below the
  # runtime's own fails, so clamp it instead of failing every sandbox.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    # Images are loaded from archives, not pulled: keep every layer so re-imports are cheap.
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "` + nodeCNIBinDir + `"
    conf_dir = "` + nodeCNIConfDir + `"
`))

var kubeletTemplate = template.Must(template.New("kubelet").Parse(`# kubelet of node {{.Name}}, written by the local cluster (tests/cluster).
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {{.IP}}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: {{.ConfigDir}}/kubelet-serving.crt
tlsPrivateKeyFile: {{.ConfigDir}}/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {{.ConfigDir}}/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://` + nodeContainerdSocket + `
# No systemd here (PID 1 is not systemd): the cgroupfs driver, under this node's own root.
cgroupDriver: cgroupfs
cgroupRoot: {{.CgroupRoot}}
cgroupsPerQOS: true
# This machine runs cgroup v1, which kubelet >= 1.35 refuses unless told otherwise.
failCgroupV1: false
failSwapOn: false
clusterDNS:
- {{.ClusterDNS}}
clusterDomain: cluster.local
# Pods get only the cluster DNS: the host's resolver is not reachable from the cluster network.
resolvConf: ""
# Images are loaded from archives and cannot be pulled again: never garbage-collect them, and
# evict on a nearly full disk only.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
serializeImagePulls: false
# The sysctls a kubelet sets (vm.overcommit_memory, kernel.panic, ...) are global to the
# machine; the node sees them already set (files bound over /proc/sys in its mount namespace).
protectKernelDefaults: false
staticPodPath: ""
podLogsDir: /var/log/pods
maxPods: 110
nodeStatusUpdateFrequency: 4s
`))

var kubeProxyTemplate = template.Must(template.New("kube-proxy").Parse(`# kube-proxy of node {{.Name}}, written by the local cluster (tests/cluster).
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {{.ConfigDir}}/kube-proxy.kubeconfig
hostnameOverride: {{.Name}}
bindAddress: 0.0.0.0
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
mode: iptables
clusterCIDR: {{.ClusterCIDR}}
# Zero leaves the machine-wide conntrack table size and timeouts as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`))

func render(t *template.Template, cfg nodeConfig) ([]byte, error) {
	var b bytes.Buffer
	if err := t.Execute(&b, cfg); err != nil {
		return nil, fmt.Errorf("rendering %s config of node %s: %w", t.Name(), cfg.Name, err)
	}
	return b.Bytes(), nil
}

// cniConfig is the node's pod network: the reference bridge plugin with host-local IPAM
// on the node's podCIDR, no masquerading (pod addresses stay visible across nodes, routed by
// the cluster network), hairpin on so a pod reaches itself through a Service, and portmap
// for hostPorts. It is what kindnet writes on a kind node.
func cniConfig(podCIDR netip.Prefix) ([]byte, error) {
	gw := podCIDR.Addr().Next()
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "ambient-lite-bridge",
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      "cni0",
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": podCIDR.String(), "gateway": gw.String()}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

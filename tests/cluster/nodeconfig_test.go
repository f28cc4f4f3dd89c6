package cluster

import (
	"flag"
	"net/netip"
	"path/filepath"
	"testing"
	"text/template"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// TestNodeConfigGoldens pins the node configuration the local cluster writes: containerd's,
// the kubelet's, kube-proxy's and the CNI conflist.
func TestNodeConfigGoldens(t *testing.T) {
	cfg := nodeConfig{
		Name: "node1", IP: nodeIP(1), APIServer: "https://172.30.0.2:6443", ConfigDir: "/tmp/c/nodes/node1/config",
		CgroupRoot: "/ambient-lite/abc123/node1", ClusterDNS: clusterDNSIP, ClusterCIDR: podCIDR,
		PauseImage: "ambient-lite.local/pause:dev",
	}
	for _, tc := range []struct {
		file string
		tmpl *template.Template
	}{{"containerd.toml", containerdTemplate}, {"kubelet.yaml", kubeletTemplate}, {"kube-proxy.yaml", kubeProxyTemplate}} {
		t.Run(tc.file, func(t *testing.T) {
			got, err := render(tc.tmpl, cfg)
			if err != nil {
				t.Fatal(err)
			}
			testenv.Golden(t, filepath.Join("testdata", "node", tc.file), got, *update)
		})
	}
	conf, err := cniConfig(netip.MustParsePrefix("10.244.1.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Golden(t, filepath.Join("testdata", "node", "cni.conflist"), conf, *update)
}

func TestNodeAddresses(t *testing.T) {
	for i, want := range map[int]string{1: "172.30.0.11", 2: "172.30.0.12", MaxNodes: "172.30.0.18"} {
		if got := nodeIP(i).String(); got != want {
			t.Errorf("nodeIP(%d) = %s, want %s", i, got, want)
		}
		if !clusterSubnet.Contains(nodeIP(i)) || nodeIP(i) == controlPlaneIP || nodeIP(i) == clusterGateway {
			t.Errorf("nodeIP(%d) = %s collides or is outside %s", i, nodeIP(i), clusterSubnet)
		}
	}
	if got := netnsName("abc123", "node1"); got != "al-abc123-node1" {
		t.Errorf("netnsName = %s", got)
	}
}

func TestCheckClusterDir(t *testing.T) {
	for dir, ok := range map[string]bool{
		"/tmp/ambient-lite-cluster": true, "/work/main/.cluster": true, "/etc/cluster": false,
		"/var/lib/x": false, "/run/cluster": false, "/var/libx": true, "/opt": false,
	} {
		if err := checkClusterDir(dir); (err == nil) != ok {
			t.Errorf("checkClusterDir(%s) = %v, want ok=%v", dir, err, ok)
		}
	}
}

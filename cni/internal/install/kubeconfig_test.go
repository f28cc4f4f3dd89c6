package install

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/ambient-lite/ambient-lite/cni/internal/plugin"
	"github.com/ambient-lite/ambient-lite/pkg/testenv"
)

func TestKubeconfigGolden(t *testing.T) {
	got := renderKubeconfig(KubeconfigSource{
		Server:    "https://10.96.0.1:443",
		CAData:    []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
		TokenFile: "/var/run/ambient-lite/cni/token",
	})
	testenv.Golden(t, filepath.Join("testdata", "kubeconfig.golden"), got, *update)
}

// TestPluginUsesInstall runs the plugin's ADD with the entry and kubeconfig Install wrote, as
// the runtime would after loading the chained list: the plugin must accept its entry, reach
// the apiserver named in the kubeconfig, trust it through the CA written there and send the
// token from the token file.
func TestPluginUsesInstall(t *testing.T) {
	var (
		mu    sync.Mutex
		auths []string
	)
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auths = append(auths, r.Header.Get("Authorization"))
		mu.Unlock()
		switch r.URL.Path {
		case "/api/v1/namespaces/default/pods/web":
			_, _ = w.Write([]byte(`{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","namespace":"default","uid":"uid-1"}}`))
		case "/api/v1/namespaces/default":
			_, _ = w.Write([]byte(`{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"default"}}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer api.Close()

	n := newNode(t)
	token := filepath.Join(n.dir, "token")
	if err := os.WriteFile(token, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n.opts.Kubeconfig = KubeconfigSource{
		Server:    api.URL,
		CAData:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw}),
		TokenFile: token,
	}
	n.copyTestdata(t, "bridge-in.conflist", "10-bridge.conflist")
	if err := n.installer(t).Install(context.Background()); err != nil {
		t.Fatal(err)
	}

	list, err := libcni.ConfListFromFile(n.conf("10-bridge.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	// What libcni passes the last plugin: its entry with the list's name and version, and the
	// previous plugin's result.
	var stdin map[string]any
	if err := json.Unmarshal(list.Plugins[len(list.Plugins)-1].Bytes, &stdin); err != nil {
		t.Fatal(err)
	}
	stdin["name"], stdin["cniVersion"] = list.Name, list.CNIVersion
	stdin["prevResult"] = map[string]any{
		"cniVersion": list.CNIVersion,
		"ips":        []any{map[string]any{"address": "10.244.1.5/24", "gateway": "10.244.1.1"}},
	}
	data, _ := json.Marshal(stdin)
	args := &skel.CmdArgs{
		ContainerID: "c1",
		Netns:       "/var/run/netns/cni-1",
		IfName:      "eth0",
		Args:        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=uid-1",
		StdinData:   data,
	}
	p := &plugin.Plugin{Stderr: t.Output()}
	if _, _, err := testutils.CmdAddWithArgs(args, func() error { return p.Add(args) }); err != nil {
		t.Fatalf("plugin ADD with the installed config: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(auths) < 2 || slices.ContainsFunc(auths, func(a string) bool { return a != "Bearer s3cret" }) {
		t.Errorf("apiserver saw Authorization %q, want the pod and namespace GETs with the token file's token", auths)
	}
}

package integration

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/istiodtest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
)

// startZtunnel runs ztunnel (host network namespace, every listener on a free loopback port)
// against istiod-lite's xDS and CA, and returns its admin base URL.
func startZtunnel(t testing.TB, c *cluster.Cluster, m istiodtest.Mesh, node string) string {
	t.Helper()
	istiodtest.CreateSA(t, c, m.NS, "ztunnel")
	dir := t.TempDir()
	rootPath := filepath.Join(dir, "root-cert.pem")
	tokenPath := filepath.Join(dir, "istio-token")
	if err := os.WriteFile(rootPath, pemCert(m.Root), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenPath, []byte(istiodtest.SAToken(t, c, m.NS, "ztunnel", "istio-ca", nil)), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{
		"XDS_ADDRESS=" + m.GRPCAddr, "CA_ADDRESS=" + m.GRPCAddr, "CA_SERVER_NAME=istiod." + m.NS + ".svc",
		"ROOT_CERT_PATH=" + rootPath, "TOKEN_PATH=" + tokenPath, "NODE_NAME=" + node, "LOG_LEVEL=debug",
		"POD_NAMESPACE=" + m.NS, "DRAIN_DURATION=0s",
	}
	for _, v := range []string{"OUTBOUND_ADDR", "INBOUND_ADDR", "INBOUND_PLAINTEXT_ADDR", "READINESS_ADDR", "STATS_ADDR", "ADMIN_ADDR"} {
		env = append(env, v+"=127.0.0.1:0")
	}
	log := &testenv.Buffer{}
	cmd := newCommand(binary(t, "ztunnel/cmd/ztunnel"), env, log)
	if err := cluster.StartChild(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("ztunnel log:\n%s", log.String())
		}
	})
	var admin string
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		for _, line := range strings.Split(log.String(), "\n") {
			var rec struct {
				Msg   string `json:"msg"`
				Admin string `json:"admin"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "ztunnel ready" {
				admin = "http://" + rec.Admin
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("ztunnel not ready: %v\n%s", err, log.String())
	}
	return admin
}

// TestZtunnelFollowsIstiod: a ztunnel subscribed to istiod-lite sees pods, services and
// policies created with client-go, and their deletion.
func TestZtunnelFollowsIstiod(t *testing.T) {
	c := cluster.Shared(t)
	m := istiodtest.StartMesh(t, c)
	node := "node-" + m.NS
	if _, err := c.Client.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Client.CoreV1().Nodes().Delete(context.Background(), node, metav1.DeleteOptions{}) })
	admin := startZtunnel(t, c, m, node)
	app := c.Namespace(t, map[string]string{"istio.io/dataplane-mode": "ambient"})
	istiodtest.CreateSA(t, c, app, "web")

	dump, waitDump := configDump(t, admin)

	pod, err := c.Client.CoreV1().Pods(app).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{"app": "web"},
			Annotations: map[string]string{"ambient.istio.io/redirection": "enabled"}},
		Spec: corev1.PodSpec{ServiceAccountName: "web", NodeName: node, AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{Name: "web", Image: "web:test", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status.PodIP, pod.Status.PodIPs = "10.244.7.9", []corev1.PodIP{{IP: "10.244.7.9"}}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if _, err := c.Client.CoreV1().Pods(app).UpdateStatus(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDump("the pod", func(d string) bool {
		return strings.Contains(d, "/Pod/"+app+"/web-1") && strings.Contains(d, `"HBONE"`)
	})

	if _, err := c.Client.CoreV1().Services(app).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstrFromString("http")}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDump("the service", func(d string) bool { return strings.Contains(d, "web."+app+".svc.cluster.local") })

	// Restarting istiod-lite: ztunnel reconnects and converges, and its state is never empty
	// in between (it keeps what it has; the new server answers only from a full snapshot).
	stopWatch := make(chan struct{})
	emptied := make(chan string, 1)
	go func() {
		for {
			select {
			case <-stopWatch:
				return
			default:
			}
			if d := dump(); d != "" && !strings.Contains(d, "/Pod/"+app+"/web-1") {
				emptied <- d
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	m.Stop()
	m.Start()
	waitDump("the state after istiod-lite restarted", func(d string) bool { return strings.Contains(d, "web."+app+".svc.cluster.local") })
	time.Sleep(300 * time.Millisecond) // past the reconnect and the first responses
	close(stopWatch)
	select {
	case d := <-emptied:
		t.Fatalf("ztunnel lost the pod while istiod-lite restarted; config_dump:\n%.2000s", d)
	default:
	}

	if err := c.Client.CoreV1().Pods(app).Delete(context.Background(), "web-1", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	waitDump("the pod's deletion", func(d string) bool { return d != "" && !strings.Contains(d, "/Pod/"+app+"/web-1") })
}

// configDump returns a reader of ztunnel's /config_dump (empty when it does not answer)
// and a wait for a condition on it, which logs how long it took.
func configDump(t testing.TB, admin string) (dump func() string, waitDump func(what string, cond func(string) bool)) {
	dump = func() string {
		resp, err := http.Get(admin + "/config_dump")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	waitDump = func(what string, cond func(string) bool) {
		t.Helper()
		start := time.Now()
		err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
			return cond(dump()), nil
		})
		if err != nil {
			t.Fatalf("ztunnel never saw %s; config_dump:\n%.3000s", what, dump())
		}
		t.Logf("%s reached ztunnel in %s", what, time.Since(start).Round(time.Millisecond))
	}
	return dump, waitDump
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// newCommand returns bin with env as its whole environment (plus PATH), output to out.
func newCommand(bin string, env []string, out io.Writer) *exec.Cmd {
	cmd := exec.Command(bin)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	cmd.Stdout, cmd.Stderr = out, out
	return cmd
}

func intstrFromString(s string) intstr.IntOrString { return intstr.FromString(s) }

package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/istiodtest"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

const (
	benchPods, benchServices, benchStreams, benchChanges = 10000, 1000, 100, 20
	addressTypeURL                                       = "type.googleapis.com/istio.workload.Address"
)

// BenchmarkXDSPush loads 10,000 pods and 1,000 services into the local control plane,
// subscribes 100 delta xDS streams to istiod-lite, then changes one pod at a time and
// measures how long the change takes to reach each stream. It prints p50/p99 over all
// (change, stream) pairs and istiod-lite's RSS; it asserts nothing about speed.
// One iteration is the whole run: use -benchtime 1x (make bench-xds).
func BenchmarkXDSPush(b *testing.B) {
	var t testing.TB = b
	c := cluster.Shared(t)
	m := istiodtest.StartMesh(t, c)
	ns := c.Namespace(t, map[string]string{"istio.io/dataplane-mode": "ambient"})
	node := "node-" + ns
	if _, err := c.Client.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Client.CoreV1().Nodes().Delete(context.Background(), node, metav1.DeleteOptions{}) })

	fast := *c.Config
	fast.QPS, fast.Burst = 5000, 5000
	client := kubernetes.NewForConfigOrDie(&fast)
	start := time.Now()
	load(t, client, ns, node)
	loaded := time.Since(start)

	istiodtest.CreateSA(t, c, ns, "bench")
	token := istiodtest.SAToken(t, c, ns, "bench", "istio-ca", nil)
	target := "Kubernetes//Pod/" + ns + "/pod-0"
	var mu sync.Mutex
	seen := make([]map[string]time.Time, benchStreams) // stream → version of target → arrival
	ctx, cancel := context.WithCancel(context.Background())
	var g errgroup.Group
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i := range benchStreams {
		seen[i] = map[string]time.Time{}
		cl, err := xds.NewClient(xds.ClientOptions{
			Conn: istiodtest.XDSConn(t, m.Istiod, m.Root, token), Logger: quiet,
			Handler: func(_ string, upserts []*xds.Resource, _ []string) error {
				now := time.Now()
				for _, r := range upserts {
					if r.Name == target {
						mu.Lock()
						seen[i][r.Version] = now
						mu.Unlock()
					}
				}
				return nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		cl.Watch(addressTypeURL)
		g.Go(func() error { return cl.Run(ctx) })
	}
	defer func() { cancel(); _ = g.Wait() }()
	synced := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, s := range seen {
			if len(s) > 0 {
				n++
			}
		}
		return n
	}
	syncStart := time.Now()
	for synced() < benchStreams {
		if time.Since(syncStart) > 2*time.Minute {
			t.Fatalf("only %d of %d streams received the initial snapshot", synced(), benchStreams)
		}
		time.Sleep(10 * time.Millisecond)
	}
	initial := time.Since(syncStart)

	var latencies []time.Duration
	for i := range benchChanges {
		before := versionsOf(&mu, seen)
		// The canonical revision is part of the workload resource, so each change is a new version.
		patch := fmt.Sprintf(`{"metadata":{"labels":{"service.istio.io/canonical-revision":"v%d"}}}`, i)
		changed := time.Now()
		if _, err := client.CoreV1().Pods(ns).Patch(context.Background(), "pod-0", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			arrivals := newArrivals(&mu, seen, before)
			if len(arrivals) == benchStreams {
				for _, at := range arrivals {
					latencies = append(latencies, at.Sub(changed))
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("change %d reached %d of %d streams", i, len(arrivals), benchStreams)
			}
			time.Sleep(2 * time.Millisecond)
		}
		time.Sleep(150 * time.Millisecond) // let the debounce settle between changes
	}
	slices.Sort(latencies)
	pct := func(p float64) time.Duration { return latencies[int(p*float64(len(latencies)-1))] }
	rss := vmRSS(t, m.PID())
	fmt.Printf("\nxDS push benchmark: %d pods, %d services, %d streams, %d one-pod changes (loaded in %s; initial snapshot to all streams in %s)\n",
		benchPods, benchServices, benchStreams, benchChanges, loaded.Round(time.Second), initial.Round(time.Millisecond))
	fmt.Printf("change → stream latency: p50 %s  p99 %s  max %s (the controller flushes at most every 20 ms, at once after quiet; target p99 ≤ 50 ms)\n",
		pct(0.5).Round(time.Microsecond), pct(0.99).Round(time.Microsecond), latencies[len(latencies)-1].Round(time.Microsecond))
	fmt.Printf("istiod-lite RSS: %.1f MiB\n\n", rss)
	b.ReportMetric(float64(pct(0.5).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(rss, "istiod-RSS-MiB")
}

// load creates the pods (with status: IP, Ready) and services, 16 writers at a time.
func load(t testing.TB, client kubernetes.Interface, ns, node string) {
	t.Helper()
	ctx := context.Background()
	var g errgroup.Group
	g.SetLimit(16)
	for i := range benchServices {
		g.Go(func() error {
			_, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: "svc-" + strconv.Itoa(i)},
				Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "app-" + strconv.Itoa(i)},
					Ports: []corev1.ServicePort{{Port: 80}}},
			}, metav1.CreateOptions{})
			return err
		})
	}
	for i := range benchPods {
		g.Go(func() error {
			pod, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "pod-" + strconv.Itoa(i), Labels: map[string]string{"app": "app-" + strconv.Itoa(i%benchServices)},
					Annotations: map[string]string{"ambient.istio.io/redirection": "enabled"}},
				Spec: corev1.PodSpec{NodeName: node, AutomountServiceAccountToken: ptr.To(false),
					Containers: []corev1.Container{{Name: "app", Image: "app:bench"}}},
			}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			ip := fmt.Sprintf("10.%d.%d.%d", 100+i/65536, i/256%256, i%256)
			pod.Status.PodIP, pod.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
			pod.Status.Phase = corev1.PodRunning
			pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
			_, err = client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("loading objects: %v", err)
	}
}

func versionsOf(mu *sync.Mutex, seen []map[string]time.Time) []map[string]bool {
	mu.Lock()
	defer mu.Unlock()
	out := make([]map[string]bool, len(seen))
	for i, s := range seen {
		out[i] = map[string]bool{}
		for v := range s {
			out[i][v] = true
		}
	}
	return out
}

// newArrivals returns, per stream that has one, when a version not in before arrived.
func newArrivals(mu *sync.Mutex, seen []map[string]time.Time, before []map[string]bool) []time.Time {
	mu.Lock()
	defer mu.Unlock()
	var out []time.Time
	for i, s := range seen {
		for v, at := range s {
			if !before[i][v] {
				out = append(out, at)
				break
			}
		}
	}
	return out
}

func vmRSS(t testing.TB, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

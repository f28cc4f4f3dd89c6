package cni

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// BenchmarkCNIAdd measures, in one run on this machine, the CNI ADD of the primary chain
// alone (bridge + host-local: the baseline), of the full chain for a pod outside the mesh
// (our plugin's enrollment check), and of the full chain for an enrolled pod (redirection
// installed and acknowledged by ztunnel), and reports what redirection adds to a pod's ADD
// and the kernel memory (BPF memlock) of one pod's redirection.
func BenchmarkCNIAdd(b *testing.B) {
	e := newEnv(b)
	mesh := e.c.Namespace(b, map[string]string{"istio.io/dataplane-mode": "ambient"})
	plain := e.c.Namespace(b, nil)
	primary, err := libcni.ConfListFromBytes(e.primaryConfig())
	if err != nil {
		b.Fatal(err)
	}
	const pods = 20
	var baseline, outside, enrolled []time.Duration
	var memlock []int
	add := func(ns, name string, list *libcni.NetworkConfigList) time.Duration {
		obj, err := e.c.Client.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{NodeName: e.nodeObj, AutomountServiceAccountToken: ptr.To(false),
				Containers: []corev1.Container{{Name: "app", Image: "app:test"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		p := &pod{ns: ns, name: name, uid: string(obj.UID), netns: e.tp.Namespace(name)}
		p.rt = &libcni.RuntimeConf{ContainerID: "c-" + p.uid, NetNS: "/var/run/netns/" + p.netns, IfName: "eth0",
			Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", name}, {"K8S_POD_UID", p.uid}}}
		var took time.Duration
		if err := e.tp.Do(e.node, func() error {
			start := time.Now()
			_, err := e.cni.AddNetworkList(context.Background(), list, p.rt)
			took = time.Since(start)
			return err
		}); err != nil {
			b.Fatalf("CNI ADD of %s/%s: %v", ns, name, err)
		}
		if list == e.list && ns == mesh {
			memlock = append(memlock, podMemlock(b, p))
		}
		b.Cleanup(func() {
			_ = e.tp.Do(e.node, func() error { return e.cni.DelNetworkList(context.Background(), list, p.rt) })
		})
		return took
	}
	b.ResetTimer()
	for i := range pods {
		baseline = append(baseline, add(plain, fmt.Sprintf("base-%d", i), primary))
		outside = append(outside, add(plain, fmt.Sprintf("out-%d", i), e.list))
		enrolled = append(enrolled, add(mesh, fmt.Sprintf("mesh-%d", i), e.list))
	}
	b.StopTimer()
	p50 := func(d []time.Duration) time.Duration { s := slices.Clone(d); slices.Sort(s); return s[len(s)/2] }
	p90 := func(d []time.Duration) time.Duration { s := slices.Clone(d); slices.Sort(s); return s[len(s)*9/10] }
	slices.Sort(memlock)
	added := p50(enrolled) - p50(baseline)
	fmt.Printf("\nCNI ADD, %d pods each (this machine, one run):\n", pods)
	fmt.Printf("  bridge + host-local alone:           p50 %6.1f ms  p90 %6.1f ms\n", ms(p50(baseline)), ms(p90(baseline)))
	fmt.Printf("  full chain, pod outside the mesh:    p50 %6.1f ms  p90 %6.1f ms  (+%.1f ms: the plugin's enrollment check)\n",
		ms(p50(outside)), ms(p90(outside)), ms(p50(outside)-p50(baseline)))
	fmt.Printf("  full chain, enrolled pod:            p50 %6.1f ms  p90 %6.1f ms  (+%.1f ms: redirection installed and acknowledged by ztunnel; target ≤ 20 ms)\n",
		ms(p50(enrolled)), ms(p90(enrolled)), ms(added))
	fmt.Printf("  kernel memory of one pod's redirection (BPF memlock of its program and maps): %d bytes\n\n", memlock[len(memlock)/2])
	b.ReportMetric(ms(added), "added-ms")
	b.ReportMetric(float64(memlock[len(memlock)/2]), "memlock-B/pod")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// podMemlock sums the memlock the kernel charges for the pod's sk_lookup program and maps.
func podMemlock(tb testing.TB, p *pod) int {
	tb.Helper()
	id, maps := attached(tb, p)
	total := 0
	prog, err := ebpf.NewProgramFromID(id)
	if err != nil {
		tb.Fatal(err)
	}
	total += fdMemlock(tb, prog.FD())
	prog.Close()
	for _, mid := range maps {
		m, err := ebpf.NewMapFromID(mid)
		if err != nil {
			tb.Fatal(err)
		}
		total += fdMemlock(tb, m.FD())
		m.Close()
	}
	return total
}

func fdMemlock(tb testing.TB, fd int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "memlock:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

package proxy

import (
	"strings"

	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
)

// baggage is the W3C baggage ztunnel sends with each HBONE stream, describing the source
// workload as Rust ztunnel does: cluster, namespace, workload kind and name, canonical
// service and revision. Empty fields are left out.
func baggage(w *meshstate.Workload) string {
	if w == nil {
		return ""
	}
	kind := strings.ToLower(w.GetWorkloadType().String()) // deployment, cronjob, pod, job
	var parts []string
	for _, kv := range [][2]string{
		{"k8s.cluster.name", w.GetClusterId()},
		{"k8s.namespace.name", w.GetNamespace()},
		{"k8s." + kind + ".name", w.GetWorkloadName()},
		{"service.name", w.GetCanonicalName()},
		{"service.version", w.GetCanonicalRevision()},
	} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+"="+kv[1])
		}
	}
	return strings.Join(parts, ",")
}

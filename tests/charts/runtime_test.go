package charts

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambient-lite/ambient-lite/pkg/envconfig"
)

// TestZtunnelRuntimeSetting: the ztunnel DaemonSet runs with the data plane's GODEBUG, the
// one the netns tests and benchmarks measure (the chart spells it out; this keeps the two equal).
func TestZtunnelRuntimeSetting(t *testing.T) {
	h := tools(t)
	for _, v := range variants {
		var found bool
		for _, doc := range documents(t, h.template(t, chart{"ztunnel", "ztunnel"}, v.values, renderNamespace)) {
			var ds appsv1.DaemonSet
			if err := yaml.Unmarshal(doc, &ds); err != nil || ds.Kind != "DaemonSet" {
				continue
			}
			found = true
			for _, c := range ds.Spec.Template.Spec.Containers {
				var got string
				for _, e := range c.Env {
					if e.Name == "GODEBUG" {
						got = e.Value
					}
				}
				if got != envconfig.DataPlaneGODEBUG {
					t.Errorf("values %q: container %s has GODEBUG %q, want %q", v.values, c.Name, got, envconfig.DataPlaneGODEBUG)
				}
			}
		}
		if !found {
			t.Errorf("values %q: no DaemonSet rendered", v.values)
		}
	}
}

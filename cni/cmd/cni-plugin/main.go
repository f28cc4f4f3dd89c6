// Command cni-plugin is ambient-lite's chained CNI plugin, installed by the node agent on each
// node and run by the container runtime for every pod sandbox, after the primary CNI plugin. For
// a pod enrolled in the ambient mesh it asks the node agent to redirect the pod's traffic to
// ztunnel and returns only once that is done; every other pod passes straight through. See
// cni/internal/plugin. It does not link client-go.
package main

import (
	"runtime/debug"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/ambient-lite/ambient-lite/cni/internal/plugin"
)

func main() {
	var p plugin.Plugin
	skel.PluginMainFuncs(p.Funcs(), plugin.SupportedVersions, "ambient-lite CNI plugin "+buildVersion())
}

// buildVersion is the module version the binary was built from ("(devel)" from a checkout).
func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

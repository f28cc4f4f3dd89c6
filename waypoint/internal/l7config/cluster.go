package l7config

import (
	"fmt"
	"strconv"
	"strings"
)

// OriginalDst is the cluster of the Gateway's own route: the request goes to the address
// the client dialled (a workload), not to a Service.
const OriginalDst = "original-dst"

// Cluster is a parsed cluster name: Istio's `outbound|<port>|<subset>|<hostname>` (subset
// empty), or OriginalDst.
type Cluster struct {
	Name        string
	OriginalDst bool
	Hostname    string
	Port        uint16
}

// ParseCluster parses a cluster name; any other form is an error.
func ParseCluster(name string) (Cluster, error) {
	if name == OriginalDst {
		return Cluster{Name: name, OriginalDst: true}, nil
	}
	parts := strings.Split(name, "|")
	if len(parts) != 4 || parts[0] != "outbound" {
		return Cluster{}, fmt.Errorf("cluster %q: want outbound|<port>||<hostname> or %s", name, OriginalDst)
	}
	if parts[2] != "" {
		return Cluster{}, fmt.Errorf("cluster %q: subsets are not supported", name)
	}
	port, err := strconv.ParseUint(parts[1], 10, 16)
	if err != nil || port == 0 {
		return Cluster{}, fmt.Errorf("cluster %q: bad port %q", name, parts[1])
	}
	if parts[3] == "" || strings.ContainsAny(parts[3], " /|") {
		return Cluster{}, fmt.Errorf("cluster %q: bad hostname %q", name, parts[3])
	}
	return Cluster{Name: name, Hostname: parts[3], Port: uint16(port)}, nil
}

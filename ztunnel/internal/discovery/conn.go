package discovery

import (
	"fmt"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambient-lite/ambient-lite/pkg/xds"
)

// Node describes this ztunnel to the control plane as Istio's ztunnel does.
func Node(podIP, podName, podNamespace, nodeName string) *xds.Node {
	meta, _ := structpb.NewStruct(map[string]any{
		"NAME": podName, "NAMESPACE": podNamespace, "INSTANCE_IPS": podIP, "NODE_NAME": nodeName,
	})
	return &xds.Node{
		ID:       fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.cluster.local", podIP, podName, podNamespace, podNamespace),
		Metadata: meta,
	}
}

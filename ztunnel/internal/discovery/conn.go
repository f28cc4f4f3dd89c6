package discovery

import (
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// Node describes this ztunnel to the control plane as Istio's ztunnel does.
func Node(podIP, podName, podNamespace, nodeName string) *corev3.Node {
	meta, _ := structpb.NewStruct(map[string]any{
		"NAME": podName, "NAMESPACE": podNamespace, "INSTANCE_IPS": podIP, "NODE_NAME": nodeName,
	})
	return &corev3.Node{
		Id:       fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.cluster.local", podIP, podName, podNamespace, podNamespace),
		Metadata: meta,
	}
}

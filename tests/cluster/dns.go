package cluster

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"text/template"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

//go:embed manifests/coredns.yaml
var corednsManifest string

var corednsTemplate = template.Must(template.New("coredns").Delims("{{", "}}").Parse(corednsManifest))

// deployDNS applies CoreDNS (kube-system/coredns behind Service kube-dns at the cluster DNS
// address the kubelets hand to pods) and waits until every replica is available.
func (c *Cluster) deployDNS(ctx context.Context, image string) error {
	var b bytes.Buffer
	if err := corednsTemplate.Execute(&b, map[string]string{"Image": image, "ClusterDNS": clusterDNSIP.String()}); err != nil {
		return fmt.Errorf("rendering CoreDNS manifests: %w", err)
	}
	objs, err := decodeYAML(b.Bytes())
	if err != nil {
		return fmt.Errorf("decoding CoreDNS manifests: %w", err)
	}
	if err := Apply(ctx, c.Config, objs); err != nil {
		return fmt.Errorf("applying CoreDNS: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var last *appsv1.Deployment
	for {
		d, err := c.Client.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
		if err == nil {
			last = d
			if d.Status.ObservedGeneration >= d.Generation && d.Spec.Replicas != nil &&
				d.Status.AvailableReplicas == *d.Spec.Replicas && d.Status.UpdatedReplicas == *d.Spec.Replicas {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for CoreDNS to be available: %w (deployment status: %+v; see `kubectl -n kube-system describe pods -l k8s-app=kube-dns`)",
				ctx.Err(), statusOf(last))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func statusOf(d *appsv1.Deployment) any {
	if d == nil {
		return nil
	}
	return d.Status
}

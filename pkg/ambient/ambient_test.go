package ambient_test

import (
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/ambient"
)

func TestEnrolled(t *testing.T) {
	ambientLabels := map[string]string{ambient.LabelDataplaneMode: ambient.DataplaneModeAmbient}
	noneLabels := map[string]string{ambient.LabelDataplaneMode: ambient.DataplaneModeNone}
	otherLabels := map[string]string{ambient.LabelDataplaneMode: "sidecar"}
	sidecar := map[string]string{ambient.AnnotationSidecarStatus: `{"containers":["istio-proxy"]}`}
	tests := []struct {
		name        string
		podLabels   map[string]string
		podAnn      map[string]string
		nsLabels    map[string]string
		hostNetwork bool
		want        bool
	}{
		{name: "nothing labelled", want: false},
		{name: "pod ambient", podLabels: ambientLabels, want: true},
		{name: "namespace ambient", nsLabels: ambientLabels, want: true},
		{name: "namespace ambient, pod none", podLabels: noneLabels, nsLabels: ambientLabels, want: false},
		{name: "namespace ambient, pod other value", podLabels: otherLabels, nsLabels: ambientLabels, want: true},
		{name: "pod ambient, namespace none", podLabels: ambientLabels, nsLabels: noneLabels, want: true},
		{name: "pod other value, namespace unlabelled", podLabels: otherLabels, want: false},
		{name: "namespace other value", nsLabels: otherLabels, want: false},
		{name: "namespace none", nsLabels: noneLabels, want: false},
		{name: "host network, pod ambient", podLabels: ambientLabels, hostNetwork: true, want: false},
		{name: "host network, namespace ambient", nsLabels: ambientLabels, hostNetwork: true, want: false},
		{name: "sidecar injected, pod ambient", podLabels: ambientLabels, podAnn: sidecar, want: false},
		{name: "sidecar injected, namespace ambient", nsLabels: ambientLabels, podAnn: sidecar, want: false},
		{name: "empty sidecar status still counts", podLabels: ambientLabels,
			podAnn: map[string]string{ambient.AnnotationSidecarStatus: ""}, want: false},
		{name: "redirection annotation irrelevant", podLabels: ambientLabels,
			podAnn: map[string]string{ambient.AnnotationRedirection: ambient.RedirectionEnabled}, want: true},
		{name: "label value is case sensitive", podLabels: map[string]string{ambient.LabelDataplaneMode: "Ambient"}, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ambient.Enrolled(tt.podLabels, tt.podAnn, tt.nsLabels, tt.hostNetwork); got != tt.want {
				t.Errorf("Enrolled(%v, %v, %v, %v) = %v, want %v", tt.podLabels, tt.podAnn, tt.nsLabels, tt.hostNetwork, got, tt.want)
			}
		})
	}
}

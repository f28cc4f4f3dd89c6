package controller

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// TestSelectorIndexFindsEverySelectingService: every Service whose selector matches a pod is
// among the candidates (extra candidates are fine: translate checks the full selector).
func TestSelectorIndexFindsEverySelectingService(t *testing.T) {
	svc := func(ns, name string, sel map[string]string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{Selector: sel}}
	}
	services := []*corev1.Service{
		svc("a", "web", map[string]string{"app": "web"}),
		svc("a", "web-v2", map[string]string{"app": "web", "version": "v2"}),
		svc("a", "tier", map[string]string{"tier": "front"}),
		svc("a", "none", nil),
		svc("b", "web", map[string]string{"app": "web"}),
	}
	x := newSelectorIndex()
	for _, s := range services {
		x.add(s)
	}
	pods := []map[string]string{
		{"app": "web"}, {"app": "web", "version": "v2"}, {"app": "web", "version": "v2", "tier": "front"},
		{"tier": "front"}, {}, {"version": "v2"},
	}
	for _, lbls := range pods {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Labels: lbls}}
		got := x.candidates(pod)
		for _, s := range services {
			selects := s.Namespace == "a" && len(s.Spec.Selector) > 0 && labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(lbls))
			if selects && !slices.Contains(got, s) {
				t.Errorf("pod %v: service %s/%s selects it but is not a candidate", lbls, s.Namespace, s.Name)
			}
			if s.Namespace != "a" && slices.Contains(got, s) {
				t.Errorf("pod %v: candidate %s/%s is in another namespace", lbls, s.Namespace, s.Name)
			}
		}
	}
}

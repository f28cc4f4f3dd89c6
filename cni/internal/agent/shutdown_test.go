package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

var dsResource = schema.GroupResource{Group: "apps", Resource: "daemonsets"}

func TestDecideShutdown(t *testing.T) {
	live := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "istio-cni-node", Namespace: "istio-system"}}
	deleting := live.DeepCopy()
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	tests := []struct {
		name      string
		confirmed bool
		ds        *appsv1.DaemonSet
		err       error
		want      ShutdownMode
	}{
		{"restart: DaemonSet present", true, live, nil, Keep},
		{"uninstall: DaemonSet being deleted", true, deleting, nil, Uninstall},
		{"uninstall: DaemonSet gone", true, nil, apierrors.NewNotFound(dsResource, "istio-cni-node"), Uninstall},
		{"uninstall: ServiceAccount deleted", true, nil, apierrors.NewUnauthorized("Unauthorized"), Uninstall},
		{"uninstall: RBAC deleted", true, nil, apierrors.NewForbidden(dsResource, "istio-cni-node", errors.New("no")), Uninstall},
		{"apiserver down: keep", true, nil, errors.New("dial tcp 10.96.0.1:443: connect: connection refused"), Keep},
		{"apiserver overloaded: keep", true, nil, apierrors.NewTooManyRequests("slow down", 1), Keep},
		{"timeout: keep", true, nil, context.DeadlineExceeded, Keep},
		{"apiserver 500: keep", true, nil, apierrors.NewInternalError(errors.New("etcd")), Keep},
		{"never confirmed, DaemonSet gone: keep", false, nil, apierrors.NewNotFound(dsResource, "istio-cni-node"), Keep},
		{"never confirmed, forbidden: keep", false, nil, apierrors.NewForbidden(dsResource, "istio-cni-node", errors.New("no")), Keep},
		{"no answer at all: keep", true, nil, nil, Keep},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := DecideShutdown(tt.confirmed, tt.ds, tt.err)
			if got != tt.want {
				t.Errorf("DecideShutdown = %v (%s), want %v", got, why, tt.want)
			}
			if why == "" {
				t.Error("no reason given")
			}
		})
	}
}

func TestOwner(t *testing.T) {
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "istio-cni-node", Namespace: "istio-system"}}
	ctx := context.Background()
	t.Run("present then deleted", func(t *testing.T) {
		kube := fake.NewClientset(ds)
		o := &Owner{Kube: kube, Namespace: "istio-system", Name: "istio-cni-node"}
		o.Confirm(ctx)
		if !o.Confirmed() {
			t.Fatal("not confirmed")
		}
		if m, why := o.Decide(ctx); m != Keep {
			t.Errorf("with the DaemonSet: %v (%s), want keep", m, why)
		}
		if err := kube.AppsV1().DaemonSets("istio-system").Delete(ctx, "istio-cni-node", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if m, why := o.Decide(ctx); m != Uninstall {
			t.Errorf("without the DaemonSet: %v (%s), want uninstall", m, why)
		}
	})
	t.Run("wrong name never uninstalls", func(t *testing.T) {
		o := &Owner{Kube: fake.NewClientset(ds), Namespace: "istio-system", Name: "other"}
		o.Confirm(ctx)
		if m, _ := o.Decide(ctx); o.Confirmed() || m != Keep {
			t.Errorf("confirmed %v, mode %v; want not confirmed, keep", o.Confirmed(), m)
		}
	})
	t.Run("not configured", func(t *testing.T) {
		o := &Owner{Kube: fake.NewClientset(ds)}
		o.Confirm(ctx)
		if m, _ := o.Decide(ctx); m != Keep {
			t.Errorf("mode %v, want keep", m)
		}
	})
	t.Run("transient errors retried until the deadline", func(t *testing.T) {
		kube := fake.NewClientset(ds)
		o := &Owner{Kube: kube, Namespace: "istio-system", Name: "istio-cni-node"}
		o.Confirm(ctx)
		calls := 0
		kube.PrependReactor("get", "daemonsets", func(k8stesting.Action) (bool, runtime.Object, error) {
			calls++
			if calls < 3 {
				return true, nil, apierrors.NewServiceUnavailable("starting")
			}
			return true, nil, apierrors.NewNotFound(dsResource, "istio-cni-node")
		})
		if m, why := o.Decide(ctx); m != Uninstall || calls != 3 {
			t.Errorf("mode %v (%s) after %d calls, want uninstall after 3", m, why, calls)
		}
		calls = -1 << 30 // unavailable from now on
		dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if m, why := o.Decide(dctx); m != Keep {
			t.Errorf("apiserver unavailable until the deadline: %v (%s), want keep", m, why)
		}
	})
}

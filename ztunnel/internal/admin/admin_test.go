package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"istio.io/istio/pkg/workloadapi"
)

func TestConfigDumpAndReadiness(t *testing.T) {
	s := meshstate.NewStore("cluster.local")
	err := s.Apply([]*workloadapi.Address{
		{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{Uid: "b", Namespace: "ns", Addresses: [][]byte{{10, 0, 0, 2}}}}},
		{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{Uid: "a", Namespace: "ns", Addresses: [][]byte{{10, 0, 0, 1}}}}},
		{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{Name: "s", Namespace: "ns", Hostname: "s.ns.svc.cluster.local"}}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	Handler(s.Snapshot).ServeHTTP(rec, httptest.NewRequest("GET", "/config_dump", nil))
	var dump struct {
		Workloads []struct{ UID string }
		Services  []struct{ Hostname string }
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &dump); err != nil {
		t.Fatalf("config_dump is not JSON: %v\n%s", err, rec.Body)
	}
	if len(dump.Workloads) != 2 || dump.Workloads[0].UID != "a" || len(dump.Services) != 1 || dump.Services[0].Hostname != "s.ns.svc.cluster.local" {
		t.Errorf("config_dump = %s", rec.Body)
	}

	var ready atomic.Bool
	h := Readiness(&ready)
	for _, want := range []int{http.StatusServiceUnavailable, http.StatusOK} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz/ready", nil))
		if rec.Code != want {
			t.Errorf("ready=%v: status %d, want %d", ready.Load(), rec.Code, want)
		}
		ready.Store(true)
	}
}

// Package admin serves ztunnel's operator endpoints: the localhost admin server
// (/config_dump, /debug/pprof/) and the readiness probe (/healthz/ready). It reads ztunnel's
// state; it changes nothing.
package admin

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"sort"
	"sync/atomic"

	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"google.golang.org/protobuf/encoding/protojson"
)

// Handler returns the admin mux. snapshot returns the current state.
func Handler(snapshot func() *meshstate.Snapshot) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/config_dump", func(w http.ResponseWriter, _ *http.Request) {
		b, err := ConfigDump(snapshot())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// ConfigDump renders the snapshot as JSON: workloads and services in the workload API's
// protojson form, sorted by uid and key, plus counts.
func ConfigDump(s *meshstate.Snapshot) ([]byte, error) {
	var ws, svcs []json.RawMessage
	var werr error
	var wl []*meshstate.Workload
	s.Workloads(func(w *meshstate.Workload) { wl = append(wl, w) })
	sort.Slice(wl, func(i, j int) bool { return wl[i].Uid < wl[j].Uid })
	for _, w := range wl {
		b, err := protojson.Marshal(w.Workload)
		if err != nil {
			werr = err
		}
		ws = append(ws, b)
	}
	var sl []*meshstate.Service
	s.Services(func(v *meshstate.Service) { sl = append(sl, v) })
	sort.Slice(sl, func(i, j int) bool { return sl[i].Key < sl[j].Key })
	for _, v := range sl {
		b, err := protojson.Marshal(v.Service)
		if err != nil {
			werr = err
		}
		svcs = append(svcs, b)
	}
	if werr != nil {
		return nil, werr
	}
	return json.MarshalIndent(map[string]any{"workloads": ws, "services": svcs}, "", "  ")
}

// Readiness serves /healthz/ready: 200 once ready is set, 503 before and while draining.
func Readiness(ready *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// This file joins the waypoint's main package only in BenchmarkL7's profiling build
// (tests/netns, -bench-l7-profile), through `go build -overlay`: nothing is written under
// waypoint/, and the waypoint itself has no profiling endpoint. With BENCH_PPROF_ADDR set
// (e.g. 127.0.0.1:15000) it serves net/http/pprof there.
package main

import (
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof/ on http.DefaultServeMux
	"os"
	"time"
)

func init() {
	if addr := os.Getenv("BENCH_PPROF_ADDR"); addr != "" {
		srv := &http.Server{Addr: addr, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.ListenAndServe() }()
	}
}

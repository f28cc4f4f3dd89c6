package envconfig

import (
	"runtime"
	"runtime/debug"
)

// DataPlaneGODEBUG is the GODEBUG every data-plane process (ztunnel, the waypoint) is
// deployed with: the Helm chart, istiod-lite's waypoint Deployment and the netns tests and
// benchmarks set it, so they measure what runs.
//
// schedtrace with a period of 2^31-1 ms (24.8 days) keeps the runtime's monitor thread
// (sysmon) out of its deep sleep. A proxy at a few thousand requests per second goes idle
// between requests; without it each request's first syscall wakes sysmon, which then spins in
// 20 µs sleeps before sleeping again: measured side by side on ztunnel at 1,000 rps, futex
// per request 1.46 -> 0.58, nanosleep 1.47 -> 0.10, vCPU per 1k rps 0.119 -> 0.083. The cost
// is sysmon waking every 10 ms while idle, and one "SCHED" line on stderr at start on a
// host up longer than the period, then one per period.
const DataPlaneGODEBUG = "schedtrace=2147483647"

// EnvWorkerThreads is Rust ztunnel's name for its worker thread count; here it is the
// number of Ps (GOMAXPROCS) a data-plane process runs its goroutines on.
const EnvWorkerThreads = "ZTUNNEL_WORKER_THREADS"

// Workers is the number of Ps a data-plane process (ztunnel: ZTUNNEL_WORKER_THREADS, the
// waypoint: WORKER_THREADS) runs with: configured when positive;
// otherwise half of available (what GOMAXPROCS would be by default: the CPUs of the
// process's cgroup limit or affinity), at least 1 and at most 2, Rust ztunnel's default
// worker count. A node proxy shares its node with the workloads it serves: on a 2-CPU node
// it takes one. Measured on 2 shared cores (make bench-l4, 4 runs each): ztunnels with 1 P
// against 2: iperf3 5.8 against 4.4 Gb/s, 0.070 against 0.088 vCPU per 1k rps, 1 MiB less
// RSS; the waypoint with 1 P against 2 (make bench-l7): 0.102 against 0.143 vCPU per 1k
// rps, and 1.00-1.30x against 0.85-0.97x caddy's rps over 8 connections. The scheduler's
// spinning and hand-offs between threads are what 2 Ps add there.
func Workers(configured, available int) int {
	if configured > 0 {
		return configured
	}
	return max(1, min(2, available/2))
}

// ApplyWorkers sets GOMAXPROCS to Workers(configured, the runtime's default) unless the
// GOMAXPROCS environment variable is set (then it rules, as for any Go program). It returns
// the value in effect.
func ApplyWorkers(getenv func(string) string, configured int) int {
	if getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0)
	}
	n := Workers(configured, runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(n)
	return n
}

// ZtunnelGCPercent is ztunnel's garbage collector target (GOGC) when the GOGC environment
// variable is not set. ztunnel's data path allocates next to nothing per request, so the
// collector runs on connection churn only, and the heap is small (3 to 4 MB): with Go's
// default of 100 and its 4 MB minimum heap goal, freed connection state sits in the heap
// between rare cycles. Measured side by side (make bench-l4, GOGC 50 against 100, two runs
// each, interleaved): resident set at 1,000 rps 19.6 against 20.2-20.4 MiB, vCPU per 1k rps
// 0.071-0.075 against 0.077-0.087 (the same within the machine's noise).
const ZtunnelGCPercent = 50

// ApplyGCPercent sets the collector's target to percent unless the GOGC environment variable
// is set (then it rules, as for any Go program). It returns the value in effect (-1: off).
func ApplyGCPercent(getenv func(string) string, percent int) int {
	if getenv("GOGC") != "" {
		old := debug.SetGCPercent(100)
		debug.SetGCPercent(old)
		return old
	}
	debug.SetGCPercent(percent)
	return percent
}

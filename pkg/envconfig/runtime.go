package envconfig

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

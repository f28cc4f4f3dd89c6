package netns

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
)

var (
	benchL7Profile  = flag.String("bench-l7-profile", "", "run a waypoint built with net/http/pprof and write its CPU profile during the default-route 1,000 rps run to this directory")
	benchL7Duration = flag.Duration("bench-l7-duration", 20*time.Second, "length of each fortio run of BenchmarkL7 (the 1,000 rps one and the unthrottled one)")
)

// Issue 11's goals for the waypoint, printed beside what BenchmarkL7 measures.
const (
	goalWaypointVCPUPer1k = 0.15 // vCPU at 1,000 rps
	goalWaypointRSSMB     = 40   // MB (10^6 bytes) resident at 1,000 rps
)

// benchL7MaxConns are the connection counts of the unthrottled runs: 8, as at 1,000 rps,
// where a longer chain of hops is bound by its latency, and 64, which keeps every proxy
// busy.
var benchL7MaxConns = []int{8, 64}

// benchL7Proc is a process whose CPU and memory BenchmarkL7 reports.
type benchL7Proc struct {
	name string
	pid  func() int
}

// benchL7Row is one path's measurements.
type benchL7Row struct {
	name     string
	at1k     fortioResult
	max      []fortioResult     // unthrottled, by benchL7MaxConns
	cpuPer1k map[string]float64 // vCPU per 1,000 rps, at 1,000 rps, by process
	cpuAtMax map[string]float64 // vCPU used during the last unthrottled run, by process
	rssMB    map[string]float64 // peak VmRSS during the 1,000 rps run, by process
	procs    []string
}

// BenchmarkL7 measures fortio HTTP/1.1 (POSTs of 1 KiB echoed back over keep-alive
// connections) at 1,000 rps and unthrottled (benchL7MaxConns) through (a) nothing: pod to
// pod, (b) the mesh with the waypoint: client → ztunnel A → waypoint (the real binary,
// configured over delta xDS from l7.Translate) → ztunnel B → server, for a Service with no
// HTTPRoute, one with an 80/20 HTTPRoute, and the first again with the waypoint's access
// log off, and (c) caddy as a plain HTTP reverse proxy in its own pod. It prints latency, max rps, CPU per 1,000 rps
// of each proxy process and their RSS, ratios against direct and against caddy, and issue
// 11's goals as met or unmet. It asserts nothing about speed. One iteration is the whole
// run: use -benchtime 1x (make bench-l7).
func BenchmarkL7(b *testing.B) {
	var t testing.TB = b
	caddy, err := exec.LookPath("caddy")
	if err != nil {
		testenv.SkipOrFail(t, "caddy is not installed: run make setup")
	}
	fortio, err := exec.LookPath("fortio")
	if err != nil {
		testenv.SkipOrFail(t, "fortio is not on PATH: run make tools (make bench-l7 puts .bin on PATH)")
	}
	d := *benchL7Duration
	m := newBenchL7Mesh(t, fortio)
	waypointBin, waypointEnv := buildWaypoint(t), []string(nil)
	if *benchL7Profile != "" {
		if err := os.MkdirAll(*benchL7Profile, 0o755); err != nil {
			t.Fatal(err)
		}
		waypointBin, waypointEnv = buildWaypointPprof(t), []string{"BENCH_PPROF_ADDR=127.0.0.1:15000"}
	}
	m.startWaypoint(t, waypointBin, waypointEnv...)
	m.startCaddy(t, caddy)

	waypoint := benchL7Proc{"waypoint", func() int { return m.waypointCmd.Process.Pid }}
	ztunnels := []benchL7Proc{
		{"ztunnel A", func() int { return m.ztunnelA.Process.Pid }},
		{"ztunnel B", func() int { return m.ztunnelB.Process.Pid }},
	}
	mesh := append([]benchL7Proc{waypoint}, ztunnels...)
	caddyProc := benchL7Proc{"caddy", func() int { return m.caddyCmd.Process.Pid }}
	// Each waypoint path starts with a fresh waypoint, so that its memory at 1,000 rps is
	// not what an earlier unthrottled run left.
	restart := func(env ...string) func() {
		return func() { m.startWaypoint(t, waypointBin, append(env, waypointEnv...)...) }
	}
	paths := []struct {
		name    string
		url     string
		procs   []benchL7Proc
		before  func()
		after   func() string // a note printed under the table
		profile bool
	}{
		{name: "(a) direct pod to pod", url: fmt.Sprintf("http://10.10.2.2:%d/echo", l7FortioDirect)},
		{name: "(b1) waypoint, no HTTPRoute", url: "http://10.96.0.20/echo", procs: mesh, profile: *benchL7Profile != ""},
		{name: "(b2) waypoint, 80/20 HTTPRoute", url: "http://10.96.0.24/echo", procs: mesh, before: restart(), after: func() string {
			// A fresh waypoint: its requests are (b2)'s, to echo-v1 or echo-v2.
			by := m.waypointRequests(t, "destination_service")
			v1, v2 := by["echo-v1.default.svc.cluster.local"], by["echo-v2.default.svc.cluster.local"]
			return fmt.Sprintf("(b2) split by the waypoint: echo-v1 %.1f%%, echo-v2 %.1f%% of %.0f requests (its istio_requests_total; the route says 80/20)",
				100*v1/(v1+v2), 100*v2/(v1+v2), v1+v2)
		}},
		{name: "(b3) no HTTPRoute, no access log", url: "http://10.96.0.20/echo", procs: mesh, before: restart("ACCESS_LOG=false")},
		{name: "(c) caddy reverse proxy", url: fmt.Sprintf("http://10.10.7.2:%d/echo", l7Caddy), procs: []benchL7Proc{caddyProc}},
	}

	var rows []benchL7Row
	var notes []string
	var profileTop string
	for _, p := range paths {
		if p.before != nil {
			p.before()
		}
		r := benchL7Row{name: p.name, cpuPer1k: map[string]float64{}, cpuAtMax: map[string]float64{}, rssMB: map[string]float64{}}
		pids := map[string]int{}
		var pidList []int
		for _, pr := range p.procs {
			pids[pr.name] = pr.pid()
			pidList = append(pidList, pids[pr.name])
			r.procs = append(r.procs, pr.name)
		}
		cpu := func() map[string]float64 {
			out := map[string]float64{}
			for name, pid := range pids {
				out[name] = cpuSeconds(t, pid)
			}
			return out
		}
		// Warm up: connections, certificates, pools.
		m.fortioLoad(t, fortio, p.url, 200, 8, 2*time.Second)

		var profiling sync.WaitGroup
		profilePath := filepath.Join(*benchL7Profile, "waypoint.pprof")
		if p.profile {
			profiling.Add(1)
			go func() {
				defer profiling.Done()
				if err := m.cpuProfile(m.waypoint, "127.0.0.1:15000", max(1, int((d-2*time.Second)/time.Second)), profilePath); err != nil {
					t.Errorf("profiling the waypoint: %v", err)
				}
			}()
		}
		before, rss := cpu(), sampleRSS(pidList...)
		r.at1k = m.fortioLoad(t, fortio, p.url, 1000, 8, d)
		after, peaks := cpu(), rss.stop()
		profiling.Wait()
		for name, pid := range pids {
			// CPU seconds per 1,000 requests is vCPU per 1,000 rps.
			r.cpuPer1k[name] = (after[name] - before[name]) / (r.at1k.count / 1000)
			r.rssMB[name] = peaks[pid] / 1e6
		}
		if p.profile {
			top, err := pprofTop(waypointBin, profilePath, 25)
			if err != nil {
				t.Error(err)
			}
			profileTop = top
		}

		for _, conns := range benchL7MaxConns {
			before = cpu()
			res := m.fortioLoad(t, fortio, p.url, 0, conns, d)
			after = cpu()
			for name := range pids {
				r.cpuAtMax[name] = (after[name] - before[name]) / res.duration.Seconds()
			}
			r.max = append(r.max, res)
		}
		rows = append(rows, r)
		if p.after != nil {
			notes = append(notes, p.after())
		}
	}
	printBenchL7(rows, notes, caddyVersion(caddy), d, *benchL7Profile != "")
	if profileTop != "" {
		fmt.Printf("CPU profile of the waypoint during (b1) at 1,000 rps (%s):\n%s\n", filepath.Join(*benchL7Profile, "waypoint.pprof"), profileTop)
	}
}

// printBenchL7 prints BenchmarkL7's table, its ratios and the goals.
func printBenchL7(rows []benchL7Row, notes []string, caddyVersion string, d time.Duration, profiled bool) {
	direct, wp, caddy := rows[0], rows[1], rows[len(rows)-1]
	fmt.Printf("\nL7 benchmark: fortio HTTP/1.1, POST of 1 KiB echoed back over keep-alive connections: %s at 1,000 rps (8 connections), then %s unthrottled with 8, then 64;\n", d, d)
	fmt.Printf("netns pods on two nodes; 2 cores shared by fortio (client and servers), the ztunnels, the waypoint and caddy %s; a fresh waypoint per (b) row, as deployed (info logs, access log to a file)", caddyVersion)
	if profiled {
		fmt.Printf(", built with net/http/pprof and profiled during (b1)")
	}
	fmt.Printf("\n\n")
	fmt.Printf("%-32s %8s %8s %8s %9s %9s   %-52s %-26s %s\n", "path", "p50 ms", "p90 ms", "p99 ms", "max rps 8", "max rps 64", "vCPU per 1k rps at 1k rps", "RSS MB at 1k rps", "vCPU used at max rps, 64 conns")
	for _, r := range rows {
		var cpu, rss, atMax []string
		for _, name := range r.procs {
			cpu = append(cpu, fmt.Sprintf("%s %.3f", name, r.cpuPer1k[name]))
			atMax = append(atMax, fmt.Sprintf("%s %.2f", name, r.cpuAtMax[name]))
			if name == "waypoint" || name == "caddy" {
				rss = append(rss, fmt.Sprintf("%s %.1f", name, r.rssMB[name]))
			}
		}
		fmt.Printf("%-32s %8.3f %8.3f %8.3f %9.0f %9.0f   %-52s %-26s %s\n", r.name, r.at1k.p50, r.at1k.p90, r.at1k.p99, r.max[0].qps, r.max[1].qps,
			dash(strings.Join(cpu, ", ")), dash(strings.Join(rss, ", ")), dash(strings.Join(atMax, ", ")))
	}

	for _, n := range notes {
		fmt.Printf("%s\n", n)
	}
	fmt.Printf("\nratios at 1,000 rps (latency) and unthrottled (max rps):\n")
	vs := func(r, base benchL7Row, baseName string) {
		fmt.Printf("  %-32s vs %-7s p50 %+.3f ms (%.2fx), p99 %+.3f ms (%.2fx), max rps %.2fx (8 conns), %.2fx (64)\n", r.name, baseName,
			r.at1k.p50-base.at1k.p50, r.at1k.p50/base.at1k.p50, r.at1k.p99-base.at1k.p99, r.at1k.p99/base.at1k.p99,
			r.max[0].qps/base.max[0].qps, r.max[1].qps/base.max[1].qps)
	}
	for _, r := range rows[1:] {
		vs(r, direct, "direct")
	}
	for _, r := range rows[1 : len(rows)-1] {
		vs(r, caddy, "caddy")
	}
	meshCPU := wp.cpuPer1k["waypoint"] + wp.cpuPer1k["ztunnel A"] + wp.cpuPer1k["ztunnel B"]
	fmt.Printf("  %-32s vs %-7s vCPU per 1k rps %.2fx (waypoint alone), %.2fx (waypoint and both ztunnels); RSS %.2fx\n", wp.name, "caddy",
		wp.cpuPer1k["waypoint"]/caddy.cpuPer1k["caddy"], meshCPU/caddy.cpuPer1k["caddy"], wp.rssMB["waypoint"]/caddy.rssMB["caddy"])

	fmt.Printf("\nissue 11 goals, for (b1):\n")
	goal := func(what, want, got string, met bool) {
		fmt.Printf("  %-38s %-12s %-26s %s\n", what, want, got, map[bool]string{true: "met", false: "UNMET"}[met])
	}
	goal("waypoint vCPU per 1k rps at 1k rps", fmt.Sprintf("<= %.2f", goalWaypointVCPUPer1k), fmt.Sprintf("%.3f", wp.cpuPer1k["waypoint"]), wp.cpuPer1k["waypoint"] <= goalWaypointVCPUPer1k)
	goal("waypoint RSS at 1k rps", fmt.Sprintf("<= %d MB", goalWaypointRSSMB), fmt.Sprintf("%.1f MB", wp.rssMB["waypoint"]), wp.rssMB["waypoint"] <= goalWaypointRSSMB)
	for i, conns := range benchL7MaxConns {
		goal(fmt.Sprintf("waypoint max rps, %d connections", conns), ">= caddy's", fmt.Sprintf("%.0f vs caddy %.0f", wp.max[i].qps, caddy.max[i].qps), wp.max[i].qps >= caddy.max[i].qps)
	}
	fmt.Printf("(benchmarks assert nothing about speed; on 2 shared cores the figures move by tens of percent between runs)\n\n")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// caddyVersion is the first word of `caddy version`.
func caddyVersion(caddy string) string {
	out, err := exec.Command(caddy, "version").Output()
	if f := strings.Fields(string(out)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "(unknown version)"
}

//go:build unix

package main

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
)

// runMainEnv makes the test binary run main instead of the tests: the process test starts
// the waypoint as itself, so it runs the real main (environment, signals, exit code)
// without a separate build.
const runMainEnv = "WAYPOINT_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// proc is a running waypoint process.
type proc struct {
	cmd                       *exec.Cmd
	stderr, stdout            *testenv.Buffer
	exited                    chan struct{}
	inbound, readiness, stats netip.AddrPort
}

// freePort returns a loopback address nobody listens on (a port the kernel just handed out).
func freePort(t *testing.T) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return netip.MustParseAddrPort(l.Addr().String())
}

// startWaypoint runs the waypoint against ca and xdsAddr, with drain as DRAIN_DURATION.
func startWaypoint(t *testing.T, ca *testCA, xdsAddr string, drain time.Duration) *proc {
	t.Helper()
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("waypoint-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &proc{stderr: &testenv.Buffer{}, stdout: &testenv.Buffer{}, exited: make(chan struct{}),
		inbound: freePort(t), readiness: freePort(t), stats: freePort(t)}
	p.cmd = exec.Command(os.Args[0])
	p.cmd.Env = append(os.Environ(), runMainEnv+"=1",
		"XDS_ADDRESS="+xdsAddr, "CA_ADDRESS="+ca.address, "CA_SERVER_NAME="+caServerName,
		"ROOT_CERT_PATH="+ca.rootPath, "TOKEN_PATH="+token, "POD_NAME=waypoint-0", "POD_NAMESPACE=ns1",
		"INSTANCE_IP=127.0.0.1", "GATEWAY_NAME=waypoint", "SERVICE_ACCOUNT=waypoint", "LOG_LEVEL=debug",
		"DRAIN_DURATION="+drain.String(), "INBOUND_ADDR="+p.inbound.String(),
		"READINESS_ADDR="+p.readiness.String(), "STATS_ADDR="+p.stats.String())
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("waypoint stderr:\n%s\nwaypoint stdout (access log):\n%s", p.stderr, p.stdout)
		}
	})
	return p
}

// get fetches path from one of the waypoint's operator servers.
func get(addr netip.AddrPort, path string) (int, string, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr.String() + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// readiness returns the status of /healthz/ready, waiting for the server to listen.
func (p *proc) readinessStatus(t *testing.T) int {
	t.Helper()
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var code int
		if code, _, err = get(p.readiness, "/healthz/ready"); err == nil {
			return code
		}
		select {
		case <-p.exited:
			t.Fatalf("waypoint exited: %v", p.cmd.ProcessState)
		default:
		}
	}
	t.Fatalf("readiness server: %v", err)
	return 0
}

// waitReadiness waits until /healthz/ready answers want.
func (p *proc) waitReadiness(t *testing.T, want int) {
	t.Helper()
	waitFor(t, 10*time.Second, "readiness "+http.StatusText(want), func() bool { return p.readinessStatus(t) == want })
}

// terminate sends SIGTERM.
func (p *proc) terminate(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}

// wait returns the exit code once the process exited, failing after d.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(d):
		t.Fatalf("waypoint still running %v after SIGTERM", d)
	}
	return p.cmd.ProcessState.ExitCode() // -1 if a signal killed it
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
}

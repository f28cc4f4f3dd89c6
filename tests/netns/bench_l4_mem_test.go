package netns

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Memory figures of BenchmarkL4 beside the resident set at 1,000 rps (sampleRSS, shared
// with BenchmarkL7): what one idle open connection costs each ztunnel.

// procStatus reads one "Name:   N kB" field of /proc/<pid>/status, in KiB.
func procStatus(pid int, field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// procStatusKiB is procStatus, failing t on error.
func procStatusKiB(t testing.TB, pid int, field string) float64 {
	t.Helper()
	kb, err := procStatus(pid, field)
	if err != nil {
		t.Fatal(err)
	}
	return kb
}

// idleConnKiB opens n connections from the client pod through both ztunnels to a server
// that holds them open, waits until both ztunnels carry all of them, and returns what each
// ztunnel's resident set grew by per connection, in KiB (A: the client's node, B: the
// server's). The connections are closed before it returns.
func (m *mesh) idleConnKiB(t testing.TB, n int) (a, b float64) {
	t.Helper()
	const addr = "10.10.2.2:9099"
	var arrived atomic.Int64 // connections whose first byte reached the server
	tcpServer(t, m.tp, m.server, addr, func(c net.Conn) {
		var one [1]byte
		if _, err := c.Read(one[:]); err == nil {
			arrived.Add(1)
		}
		_, _ = c.Read(one[:]) // held open until the client closes
	})
	// Warm up the path (certificates, the pooled HBONE connection) outside the figure.
	m.dialIdle(t, addr, 1)[0].Close()
	pidA, pidB := m.ztunnelA.Process.Pid, m.ztunnelB.Process.Pid
	time.Sleep(500 * time.Millisecond)
	beforeA, beforeB := procStatusKiB(t, pidA, "VmRSS"), procStatusKiB(t, pidB, "VmRSS")
	conns := m.dialIdle(t, addr, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for deadline := time.Now().Add(time.Minute); arrived.Load() < int64(n)+1; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the server got %d of %d idle connections' first byte within a minute", arrived.Load()-1, n)
		}
	}
	time.Sleep(500 * time.Millisecond) // buffers the handshakes used are back in the pools
	afterA, afterB := procStatusKiB(t, pidA, "VmRSS"), procStatusKiB(t, pidB, "VmRSS")
	return (afterA - beforeA) / float64(n), (afterB - beforeB) / float64(n)
}

// dialIdle opens n connections from the client pod to addr, each having sent one byte.
func (m *mesh) dialIdle(t testing.TB, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	err := m.tp.Do(m.client, func() error {
		for range n {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				return err
			}
			conns = append(conns, c)
			if _, err := c.Write([]byte{1}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		for _, c := range conns {
			c.Close()
		}
		t.Fatalf("opening %d idle connections to %s: %v", n, addr, err)
	}
	return conns
}

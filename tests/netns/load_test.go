package netns

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countServer reads each connection to EOF and answers with the byte count (8 bytes).
func countServer(t testing.TB, tp *Topology, ns, addr string) {
	t.Helper()
	tcpServer(t, tp, ns, addr, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		_ = binary.Write(c, binary.BigEndian, n)
	})
}

// usage is a ztunnel process's goroutines (from its admin server) and open descriptors.
type usage struct{ goroutines, fds int }

func (m *mesh) usage(t testing.TB, ns string, pid int) usage {
	t.Helper()
	body := m.get(t, ns, "http://127.0.0.1:15000/debug/pprof/goroutine?debug=1")
	line, _, _ := strings.Cut(body, "\n")
	n, err := strconv.Atoi(strings.TrimPrefix(line, "goroutine profile: total "))
	if err != nil {
		t.Fatalf("parsing goroutine profile header %q: %v", line, err)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return usage{goroutines: n, fds: len(fds)}
}

// TestManyConnectionsAndABigStream: 10,000 short connections and one 10 GiB stream through
// two ztunnels, after which both are back to their goroutine and descriptor baselines.
func TestManyConnectionsAndABigStream(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 10 GiB; skipped with -short")
	}
	m := newMesh(t)
	countServer(t, m.tp, m.server, "10.10.2.2:8080")

	send := func(n int64) (int64, error) {
		var got int64
		err := m.tp.Do(m.client, func() error {
			c, err := net.DialTimeout("tcp", "10.10.2.2:8080", 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			if n > 0 {
				if _, err := io.CopyN(c, zeroReader{}, n); err != nil {
					return err
				}
			}
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				return err
			}
			return binary.Read(bufio.NewReader(c), binary.BigEndian, &got)
		})
		return got, err
	}
	if got, err := send(1); err != nil || got != 1 { // warm up: certificates and the pooled HBONE connection
		t.Fatalf("warm-up: %d, %v", got, err)
	}
	pidA, pidB := m.ztunnelA.Process.Pid, m.ztunnelB.Process.Pid
	baseA, baseB := m.usage(t, m.nodeA, pidA), m.usage(t, m.nodeB, pidB)

	const conns, workers = 10000, 8
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= conns {
				if got, err := send(100); err != nil || got != 100 {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d, %v", got, err))
				}
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d short connections failed; first: %v", n, conns, firstErr.Load())
	}
	t.Logf("%d short connections in %s (%.0f/s)", conns, time.Since(start).Round(time.Millisecond), conns/time.Since(start).Seconds())

	const big = 10 << 30
	start = time.Now()
	got, err := send(big)
	if err != nil || got != big {
		t.Fatalf("10 GiB stream: server counted %d bytes, %v", got, err)
	}
	elapsed := time.Since(start)
	t.Logf("10 GiB stream in %s (%.2f Gbit/s through two ztunnels)", elapsed.Round(time.Millisecond), float64(big)*8/elapsed.Seconds()/1e9)

	for _, z := range []struct {
		name, ns string
		pid      int
		base     usage
	}{{"ztunnel A", m.nodeA, pidA, baseA}, {"ztunnel B", m.nodeB, pidB, baseB}} {
		var now usage
		deadline := time.Now().Add(15 * time.Second)
		for {
			now = m.usage(t, z.ns, z.pid)
			if now.goroutines <= z.base.goroutines && now.fds <= z.base.fds || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if now.goroutines > z.base.goroutines || now.fds > z.base.fds {
			t.Errorf("%s: goroutines %d → %d, fds %d → %d; want back to baseline", z.name, z.base.goroutines, now.goroutines, z.base.fds, now.fds)
		} else {
			t.Logf("%s back to baseline: %d goroutines, %d fds", z.name, now.goroutines, now.fds)
		}
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

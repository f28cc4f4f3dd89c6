package netns

import (
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/testca"
)

// TestDrainOnSIGTERM: on SIGTERM ztunnel turns unready and stops accepting, keeps carrying
// open connections for the drain period, then closes them and exits cleanly.
func TestDrainOnSIGTERM(t *testing.T) {
	ca := testca.Start(t)
	const drain = 3 * time.Second
	m := newMeshWith(t, node{ca: ca, drain: drain.String()}, node{ca: ca})
	echoServer(t, m.tp, m.server, "10.10.2.2:8080")

	var conn net.Conn
	if err := m.tp.Do(m.client, func() (err error) { conn, err = net.DialTimeout("tcp", "10.10.2.2:8080", 5*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	echo := func(msg string) error {
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write([]byte(msg)); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			return errors.New("echo mismatch: " + string(buf))
		}
		return nil
	}
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}

	exited := make(chan error, 1)
	signalled := time.Now()
	if err := m.ztunnelA.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	go func() { exited <- m.ztunnelA.Wait() }()

	waitFor(t, 2*time.Second, "readiness to fail", func() bool {
		resp, err := m.tp.HTTPClient(m.nodeA).Get("http://127.0.0.1:15021/healthz/ready")
		if err != nil {
			return true // the readiness server may already be gone
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	if err := m.tp.Do(m.client, func() error {
		c, err := net.DialTimeout("tcp", "10.10.2.2:8080", 2*time.Second)
		if err == nil {
			c.Close()
			return errors.New("a new connection was accepted while draining")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if err := echo("during drain"); err != nil {
		t.Fatalf("an open connection stopped working during the drain: %v", err)
	}

	select {
	case err := <-exited:
		if took := time.Since(signalled); took < drain-500*time.Millisecond {
			t.Errorf("ztunnel exited %s after SIGTERM, before the %s drain ended", took, drain)
		}
		if err != nil {
			t.Errorf("ztunnel exit: %v", err)
		}
	case <-time.After(drain + 10*time.Second):
		t.Fatal("ztunnel did not exit after the drain period")
	}
	if err := echo("after"); err == nil {
		t.Error("the connection still works after ztunnel exited")
	}
}

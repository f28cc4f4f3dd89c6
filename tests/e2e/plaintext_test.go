package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/rand"
)

// TestNoPlaintextBetweenNodes captures every TCP packet on node2's link (eth0, the cable
// between the nodes) while a client on node1 calls echo on node2, once from a namespace
// outside the mesh and once from an enrolled one, each request carrying a marker. The
// capture must show the first marker (proving it sees application bytes) and never the
// second; the enrolled traffic must appear as HBONE (port 15008) and never on the app's port.
func TestNoPlaintextBetweenNodes(t *testing.T) {
	e := mustEnv(t)
	plain := e.deploy(t, app{EchoNode: "node2", ClientNode: "node1"})
	meshed := e.deploy(t, app{Enrolled: true, EchoNode: "node2", ClientNode: "node1"})
	meshedEcho, err := e.k.Pods(ctx(t), meshed, "app=echo")
	if err != nil || len(meshedEcho) != 1 {
		t.Fatalf("echo pod of %s: %v %v", meshed, meshedEcho, err)
	}

	pcap := filepath.Join(t.TempDir(), "node2-eth0.pcap")
	stop := capture(t, e.nodes["node2"].Netns, pcap)
	plainMarker := "plaintext-" + rand.String(12)
	meshMarker := "meshed-" + rand.String(12)
	e.mustEcho(t, plain, 2, "http://echo/"+plainMarker)
	e.mustEcho(t, meshed, 2, "http://echo/"+meshMarker)
	// tcpdump drops what it has not read when stopped, and lags on a busy machine: a last
	// plaintext request marks the end, and once the file holds it, it holds all before it.
	endMarker := "end-" + rand.String(12)
	e.mustEcho(t, plain, 1, "http://echo/"+endMarker)
	eventually(t, time.Minute, "the capture holding the last request", func() error {
		if b, err := os.ReadFile(pcap); err != nil || !bytes.Contains(b, []byte(endMarker)) {
			return fmt.Errorf("%d bytes captured so far, without %s (%v)", len(b), endMarker, err)
		}
		return nil
	})
	stop()

	raw, err := os.ReadFile(pcap)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte(plainMarker)) {
		t.Fatalf("the capture (%d bytes) lacks the marker of the namespace outside the mesh: it does not see application bytes, so it proves nothing", len(raw))
	}
	if bytes.Contains(raw, []byte(meshMarker)) {
		t.Errorf("the enrolled client's request crossed the node link in plaintext (marker %q in the capture)", meshMarker)
	}
	ip := meshedEcho[0].IP
	hbone := countPackets(t, pcap, "dst host "+ip+" and tcp dst port 15008")
	app := countPackets(t, pcap, "host "+ip+" and tcp port 8080")
	t.Logf("capture on node2's eth0: %d bytes; to the enrolled echo %s: %d packets to HBONE port 15008, %d on app port 8080", len(raw), ip, hbone, app)
	if hbone == 0 {
		out, _ := exec.Command("tcpdump", "-n", "-r", pcap).Output()
		t.Errorf("no packet to %s:15008: the enrolled traffic did not arrive as HBONE; the capture:\n%s", ip, out)
	}
	if app != 0 {
		t.Errorf("%d packets to or from %s:8080 on the node link: enrolled traffic must arrive as HBONE only", app, ip)
	}
}

// capture starts tcpdump on eth0 of netns, writing every TCP packet whole to file, and
// returns a function that stops it and waits until the file is complete.
func capture(t *testing.T, netns, file string) (stop func()) {
	t.Helper()
	cmd := exec.Command("nsenter", "--net="+netns, "--", "tcpdump", "-i", "eth0", "-U", "-n", "-s", "0", "-w", file, "tcp")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	listening := make(chan string, 1)
	var log strings.Builder
	go func() {
		s := bufio.NewScanner(stderr)
		for s.Scan() {
			log.WriteString(s.Text() + "\n")
			if strings.Contains(s.Text(), "listening on") {
				listening <- s.Text()
			}
		}
		close(listening)
	}()
	select {
	case _, ok := <-listening:
		if !ok {
			_ = cmd.Wait()
			t.Fatalf("tcpdump exited: %s", log.String())
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal("tcpdump did not start listening within 10 s")
	}
	done := false
	stop = func() {
		if done {
			return
		}
		done = true
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}
	t.Cleanup(stop)
	return stop
}

// countPackets counts the packets of pcap matching a tcpdump filter.
func countPackets(t *testing.T, pcap, filter string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "tcpdump", append([]string{"-n", "-r", pcap}, strings.Fields(filter)...)...).Output()
	if err != nil {
		t.Fatalf("tcpdump -r %s %s: %v", pcap, filter, err)
	}
	return strings.Count(string(out), "\n")
}

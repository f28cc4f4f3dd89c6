package netns

import (
	"io"
	"net"
	"strings"
	"testing"
)

// TestTwoNodesRoute builds pod—node—node—pod and sends bytes end to end through a Go
// listener created inside the server pod's namespace.
func TestTwoNodesRoute(t *testing.T) {
	tp := New(t)
	nodeA, nodeB := tp.Namespace("node-a"), tp.Namespace("node-b")
	client, server := tp.Namespace("client"), tp.Namespace("server")
	tp.Link(nodeA, "eth0", "10.0.0.1/24", nodeB, "eth0", "10.0.0.2/24")
	tp.Link(client, "eth0", "10.10.1.2/24", nodeA, "vclient", "10.10.1.1/24")
	tp.Link(server, "eth0", "10.10.2.2/24", nodeB, "vserver", "10.10.2.1/24")
	tp.Forwarding(nodeA)
	tp.Forwarding(nodeB)
	tp.Route(client, "default", "10.10.1.1")
	tp.Route(server, "default", "10.10.2.1")
	tp.Route(nodeA, "10.10.2.0/24", "10.0.0.2")
	tp.Route(nodeB, "10.10.1.0/24", "10.0.0.1")

	var l net.Listener
	if err := tp.Do(server, func() (err error) { l, err = net.Listen("tcp", "10.10.2.2:8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	var conn net.Conn
	if err := tp.Do(client, func() (err error) { conn, err = net.Dial("tcp", "10.10.2.2:8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("across two nodes")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "across two nodes" {
		t.Fatalf("echo = %q, %v", buf, err)
	}
	if out := tp.Run(client, "ip", "route"); !strings.Contains(out, "default via 10.10.1.1") {
		t.Errorf("client routes: %s", out)
	}
}

//go:build linux

package zds_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"istio.io/istio/pkg/zdsapi"

	"github.com/ambient-lite/ambient-lite/pkg/zds"
)

var quiet = slog.New(slog.DiscardHandler)

// printer is a ztunnel-side Handler that prints what it is told.
type printer struct{}

func (printer) Add(uid string, info *zdsapi.WorkloadInfo, netns *os.File) error {
	defer netns.Close() // a real handler keeps it to start the pod's proxies
	fmt.Println("add", uid, info.GetNamespace()+"/"+info.GetName())
	return nil
}
func (printer) Keep(uid string) error { fmt.Println("keep", uid); return nil }
func (printer) Del(uid string) error  { fmt.Println("del", uid); return nil }
func (printer) SnapshotSent(present []string) error {
	fmt.Println("snapshot", present)
	return nil
}

// The node agent records a pod before ztunnel is up; ztunnel connects, gets it in its
// snapshot, then a deletion.
func Example() {
	dir, _ := os.MkdirTemp("", "zds")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "ztunnel.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	netns, _ := os.Open("/proc/self/ns/net") // a pod's netns
	server, err := zds.NewServer(zds.ServerOptions{Path: path, Log: quiet, Restore: []zds.Workload{
		{UID: "uid-1", Info: &zdsapi.WorkloadInfo{Name: "web", Namespace: "shop", ServiceAccount: "web"}, Netns: netns},
	}})
	netns.Close() // the server keeps its own duplicate
	if err != nil {
		fmt.Println(err)
		return
	}
	defer server.Close()
	go server.Run(ctx)

	client, err := zds.NewClient(zds.ClientOptions{Path: path, Handler: printer{}, Log: quiet})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()
	go client.Run(ctx)

	if err := client.WaitReady(ctx); err != nil {
		fmt.Println(err)
		return
	}
	if err := server.Del(ctx, "uid-1"); err != nil {
		fmt.Println(err)
	}
	// Output:
	// add uid-1 shop/web
	// snapshot [uid-1]
	// del uid-1
}

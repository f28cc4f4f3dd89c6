// Command localcluster starts and stops the local cluster from the shell; it backs
// `make cluster-up` and `make cluster-down`.
//
//	localcluster up   [--dir DIR] [--bin-dir DIR] [--nodes N]   start (or find running) and print `export KUBECONFIG=…`
//	localcluster down [--dir DIR]                               stop every process and remove DIR
//	localcluster status [--dir DIR]                             exit 0 if a cluster runs in DIR
//	localcluster images [--dir DIR] [--bin-dir DIR] [NAME...]   build changed images and load them into every node (default: all)
//	localcluster forward --netns PATH --to ADDR                 (internal) relay the listener on fd 3 to ADDR in PATH
//
// With --nodes 0 (the default) it is a control plane on loopback; with nodes, a whole cluster
// (see package tests/cluster).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/images"
	"github.com/ambient-lite/ambient-lite/tests/netnsdial"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

func defaultDir() string {
	return filepath.Join(os.TempDir(), "ambient-lite-cluster")
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: localcluster up|down|status [--dir DIR] [--bin-dir DIR] [--nodes N]")
	}
	if args[0] == "forward" {
		return forward(args[1:])
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	dir := fs.String("dir", defaultDir(), "directory holding the cluster's state, logs and kubeconfig")
	binDir := fs.String("bin-dir", "", "directory with etcd and the Kubernetes binaries (default: $"+cluster.EnvBinDir+" or the repository's .bin)")
	nodes := fs.String("nodes", "0", fmt.Sprintf("kubelet nodes to run, 0 to %d (0: a control plane only, on loopback)", cluster.MaxNodes))
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	n, err := parseNodes(*nodes)
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	switch args[0] {
	case "up":
		return up(abs, *binDir, n)
	case "down":
		if err := cluster.StopDetached(abs); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "local cluster in %s stopped\n", abs)
		return nil
	case "images":
		names := fs.Args()
		if len(names) == 0 {
			names = images.All
		}
		bin, err := cluster.ResolveBinDir(*binDir)
		if err != nil {
			return err
		}
		start := time.Now()
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		if err := cluster.LoadImagesDetached(context.Background(), abs, bin, "", log, names...); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "images %s loaded into every node in %s\n", strings.Join(names, ", "), time.Since(start).Round(10*time.Millisecond))
		return nil
	case "status":
		kubeconfig, running, err := cluster.Running(abs)
		if err != nil {
			return err
		}
		if !running {
			return fmt.Errorf("no local control plane runs in %s", abs)
		}
		fmt.Printf("export KUBECONFIG=%s\n", kubeconfig)
		return nil
	}
	return fmt.Errorf("unknown command %q: want up, down, status or images", args[0])
}

// parseNodes reads the node count (make cluster-up NODES=...), naming the problem when it is
// not one.
func parseNodes(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 || n > cluster.MaxNodes {
		return 0, fmt.Errorf("NODES=%q: want a whole number of nodes from 0 to %d", s, cluster.MaxNodes)
	}
	return n, nil
}

// forward relays the listener it inherited on fd 3 into a network namespace: the detached
// cluster's way from the host to its apiserver.
func forward(args []string) error {
	fs := flag.NewFlagSet("forward", flag.ContinueOnError)
	ns := fs.String("netns", "", "network namespace to dial in")
	to := fs.String("to", "", "address to relay to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ns == "" || *to == "" {
		return errors.New("forward needs --netns and --to")
	}
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		return fmt.Errorf("forward: the listener on fd 3: %w", err)
	}
	return cluster.Forward(ln, *to, netnsdial.Dialer(*ns))
}

func up(dir, binDir string, nodes int) error {
	kubeconfig, running, err := cluster.Running(dir)
	if err != nil {
		return err
	}
	if running {
		fmt.Fprintf(os.Stderr, "local control plane already running in %s\n", dir)
		fmt.Printf("export KUBECONFIG=%s\n", kubeconfig)
		return nil
	}
	// Whatever a dead cluster left behind (after a reboot, a kill -9) is cleared first.
	if err := cluster.StopDetached(dir); err != nil {
		return fmt.Errorf("clearing stale cluster in %s: %w", dir, err)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	self, err := os.Executable()
	if err != nil {
		return err
	}
	c, err := cluster.Start(ctx, cluster.Options{Dir: dir, BinDir: binDir, Detached: true, Log: log, Nodes: nodes,
		ForwardCommand: []string{self, "forward"}})
	if err != nil {
		_ = os.RemoveAll(dir)
		return err
	}
	if err := c.SaveState(); err != nil {
		_ = c.Stop()
		_ = os.RemoveAll(dir)
		return err
	}
	if nodes == 0 {
		fmt.Fprintf(os.Stderr, "local control plane ready in %s (state and logs in %s; stop it with `make cluster-down`)\n",
			c.Ready.Round(10*time.Millisecond), dir)
	} else {
		fmt.Fprintf(os.Stderr, "local cluster with %d nodes ready in %s: control plane %s, nodes Ready %s, CoreDNS %s (state and logs in %s; stop it with `make cluster-down`)\n",
			nodes, c.Ready.Round(10*time.Millisecond), c.APIServerReady.Round(10*time.Millisecond),
			c.NodesReady.Round(10*time.Millisecond), c.DNSReady.Round(10*time.Millisecond), dir)
	}
	fmt.Printf("export KUBECONFIG=%s\n", c.Kubeconfig)
	return nil
}

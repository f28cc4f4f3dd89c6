// Command localcluster starts and stops the local control plane from the shell; it backs
// `make cluster-up` and `make cluster-down`.
//
//	localcluster up   [--dir DIR] [--bin-dir DIR]   start (or find running) and print `export KUBECONFIG=…`
//	localcluster down [--dir DIR]                   stop every process and remove DIR
//	localcluster status [--dir DIR]                 exit 0 if a cluster runs in DIR
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/cluster"
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
		return errors.New("usage: localcluster up|down|status [--dir DIR] [--bin-dir DIR]")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	dir := fs.String("dir", defaultDir(), "directory holding the cluster's state, logs and kubeconfig")
	binDir := fs.String("bin-dir", "", "directory with etcd and the Kubernetes binaries (default: $"+cluster.EnvBinDir+" or the repository's .bin)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	switch args[0] {
	case "up":
		return up(abs, *binDir)
	case "down":
		if err := cluster.StopDetached(abs); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "local control plane in %s stopped\n", abs)
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
	return fmt.Errorf("unknown command %q: want up, down or status", args[0])
}

func up(dir, binDir string) error {
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
	c, err := cluster.Start(ctx, cluster.Options{Dir: dir, BinDir: binDir, Detached: true, Log: log})
	if err != nil {
		_ = os.RemoveAll(dir)
		return err
	}
	if err := c.SaveState(); err != nil {
		_ = c.Stop()
		_ = os.RemoveAll(dir)
		return err
	}
	fmt.Fprintf(os.Stderr, "local control plane ready in %s (state and logs in %s; stop it with `make cluster-down`)\n",
		c.Ready.Round(10*time.Millisecond), dir)
	fmt.Printf("export KUBECONFIG=%s\n", c.Kubeconfig)
	return nil
}

// Command ztunnel is the mesh's per-node proxy: it carries the TCP connections of its node's
// workloads over HBONE (HTTP/2 CONNECT over mutual TLS). Configuration is environment
// variables (see ztunnel/internal/config).
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ambient-lite/ambient-lite/pkg/envconfig"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/app"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/config"
)

func main() {
	cfg, err := config.FromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel: invalid configuration:", err)
		os.Exit(2)
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	log := newLogger(os.Stderr, level)
	workers := envconfig.ApplyWorkers(os.Getenv, cfg.WorkerThreads)
	gcPercent := envconfig.ApplyGCPercent(os.Getenv, envconfig.ZtunnelGCPercent)
	log.Info("starting", "workerThreads", workers, "gcPercent", gcPercent)
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := app.Run(ctx, cfg, log); err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

// newLogger is the process's logger. The binary's name is its own key, "binary", so that
// the "component" each part of ztunnel sets once (xds, secrets, zds-client, ...) never
// repeats a key in a JSON line.
func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})).With("binary", "ztunnel")
}

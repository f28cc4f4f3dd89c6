// Command waypoint is the mesh's L7 proxy for a Gateway of class istio-waypoint: it
// terminates HBONE, applies HTTP routing and L7 authorization from istiod-lite's xDS, and
// re-originates HBONE to the destination. Configuration is environment variables (see
// waypoint/internal/config).
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
	"github.com/ambient-lite/ambient-lite/waypoint/internal/accesslog"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/app"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/config"
)

func main() {
	cfg, err := config.FromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "waypoint: invalid configuration:", err)
		os.Exit(2)
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("binary", "waypoint")
	log.Info("starting", "workerThreads", envconfig.ApplyWorkers(os.Getenv, cfg.WorkerThreads))
	var access io.Writer
	var accessBuf *accesslog.Buffer
	if cfg.AccessLog {
		// Lines are written in batches (at most a second late), not one write per request.
		accessBuf = accesslog.NewBuffer(os.Stdout, accesslog.FlushInterval)
		access = accessBuf
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = app.Run(ctx, cfg, log, access)
	cancel()
	if accessBuf != nil {
		if cerr := accessBuf.Close(); cerr != nil {
			log.Error("writing the access log", "err", cerr)
		}
	}
	if err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

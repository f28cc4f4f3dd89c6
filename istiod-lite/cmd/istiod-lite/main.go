// Command istiod-lite is the mesh's control plane: certificate authority (Istio's
// IstioCertificateService on :15012) and, later, the delta xDS server for ztunnels and
// waypoints. Configuration is flags with environment defaults; see --help.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/app"
	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/config"
)

func main() {
	cfg, err := config.Parse(os.Args[1:], os.Getenv, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "istiod-lite: invalid configuration:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel})).With("binary", "istiod-lite")
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := app.Run(ctx, cfg, log); err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

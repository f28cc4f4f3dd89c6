// Package accesslog is the waypoint's access log: one structured line per HTTP request or
// TCP connection, written to a *slog.Logger that is a separate, deliberate sink (not the
// diagnostic log). It formats; it decides nothing.
package accesslog

import (
	"context"
	"log/slog"
	"time"
)

// Entry is one request (or, with Method empty, one TCP connection).
type Entry struct {
	Method, Path, Authority  string
	Status                   int
	Flags                    string // Envoy response flags, "-" if none
	Duration                 time.Duration
	Upstream                 string // the endpoint's address, or "" if none was chosen
	Cluster                  string
	SourcePrincipal          string
	RequestID                string
	BytesReceived, BytesSent int64
	// DryRun are the would-be decisions of dry-run policies, written as Envoy's RBAC
	// filter writes them to dynamic metadata: <prefix>shadow_engine_result and
	// <prefix>shadow_effective_policy_id.
	DryRun []DryRun
}

// DryRun is one RBAC filter's shadow decision.
type DryRun struct {
	Prefix string // the filter's shadow_rules_stat_prefix, e.g. istio_dry_run_allow_
	Result string // "allowed" or "denied"
	Policy string // the matching policy, "" if none
}

// Logger writes entries; a nil Logger writes nothing.
type Logger struct{ log *slog.Logger }

// New returns a Logger writing to log, or nil if log is nil.
func New(log *slog.Logger) *Logger {
	if log == nil {
		return nil
	}
	return &Logger{log: log}
}

// Log writes e.
func (l *Logger) Log(e *Entry) {
	if l == nil {
		return
	}
	attrs := []slog.Attr{
		slog.String("method", e.Method), slog.String("path", e.Path), slog.String("authority", e.Authority),
		slog.Int("status", e.Status), slog.String("flags", e.Flags), slog.Float64("duration_ms", float64(e.Duration.Microseconds())/1000),
		slog.String("upstream", e.Upstream), slog.String("cluster", e.Cluster), slog.String("source_principal", e.SourcePrincipal),
		slog.String("request_id", e.RequestID), slog.Int64("bytes_received", e.BytesReceived), slog.Int64("bytes_sent", e.BytesSent),
	}
	for _, d := range e.DryRun {
		attrs = append(attrs, slog.String(d.Prefix+"shadow_engine_result", d.Result))
		if d.Policy != "" {
			attrs = append(attrs, slog.String(d.Prefix+"shadow_effective_policy_id", d.Policy))
		}
	}
	msg := "request"
	if e.Method == "" {
		msg = "connection"
	}
	l.log.LogAttrs(context.Background(), slog.LevelInfo, msg, attrs...)
}

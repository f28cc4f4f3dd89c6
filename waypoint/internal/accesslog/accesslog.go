// Package accesslog is the waypoint's access log: one JSON line per HTTP request or TCP
// connection, written to its own sink (not the diagnostic log), and the Buffer that
// batches the lines' writes. It formats; it decides nothing.
package accesslog

import (
	"io"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
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

// Logger writes entries as JSON lines, one Write each:
//
//	{"time":"2026-12-07T02:31:59.123456789Z","level":"INFO","msg":"request","log":"access","method":"GET",...}
//
// the shape slog's JSONHandler gives them, encoded directly: with slog's handler the log
// line cost a tenth of the waypoint's CPU per request. A nil Logger writes nothing. It is
// safe for concurrent use.
type Logger struct {
	mu sync.Mutex
	w  io.Writer
}

// New returns a Logger writing to w, or nil if w is nil.
func New(w io.Writer) *Logger {
	if w == nil {
		return nil
	}
	return &Logger{w: w}
}

var linePool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// Log writes e. A write error is dropped: the access log never fails a request.
func (l *Logger) Log(e *Entry) {
	if l == nil {
		return
	}
	bp := linePool.Get().(*[]byte)
	b := appendEntry((*bp)[:0], time.Now(), e)
	l.mu.Lock()
	_, _ = l.w.Write(b)
	l.mu.Unlock()
	*bp = b
	linePool.Put(bp)
}

// appendEntry appends e's line, stamped now.
func appendEntry(b []byte, now time.Time, e *Entry) []byte {
	msg := "request"
	if e.Method == "" {
		msg = "connection"
	}
	b = append(b, `{"time":"`...)
	b = now.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"INFO","msg":"`...)
	b = append(b, msg...)
	b = append(b, `","log":"access"`...)
	b = appendString(b, "method", e.Method)
	b = appendString(b, "path", e.Path)
	b = appendString(b, "authority", e.Authority)
	b = appendInt(b, "status", int64(e.Status))
	b = appendString(b, "flags", e.Flags)
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendFloat(b, float64(e.Duration.Microseconds())/1000, 'f', -1, 64)
	b = appendString(b, "upstream", e.Upstream)
	b = appendString(b, "cluster", e.Cluster)
	b = appendString(b, "source_principal", e.SourcePrincipal)
	b = appendString(b, "request_id", e.RequestID)
	b = appendInt(b, "bytes_received", e.BytesReceived)
	b = appendInt(b, "bytes_sent", e.BytesSent)
	for _, d := range e.DryRun {
		b = appendString(b, d.Prefix+"shadow_engine_result", d.Result)
		if d.Policy != "" {
			b = appendString(b, d.Prefix+"shadow_effective_policy_id", d.Policy)
		}
	}
	return append(b, "}\n"...)
}

func appendString(b []byte, key, v string) []byte {
	b = append(b, ',')
	b = appendJSONString(b, key)
	b = append(b, ':')
	return appendJSONString(b, v)
}

func appendInt(b []byte, key string, v int64) []byte {
	b = append(b, ',')
	b = appendJSONString(b, key)
	b = append(b, ':')
	return strconv.AppendInt(b, v, 10)
}

// appendJSONString appends s as a JSON string, escaped as encoding/json does without HTML
// escaping: quote, backslash and control characters escaped, invalid UTF-8 replaced by
// U+FFFD, U+2028 and U+2029 escaped (for JavaScript readers). Paths and headers come from
// clients, so nothing they contain can break the line.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

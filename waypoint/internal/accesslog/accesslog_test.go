package accesslog

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestLog(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf)
	l.Log(&Entry{
		Method: "GET", Path: "/reviews/1?x=y", Authority: "reviews.ns1.svc.cluster.local:9080", Status: 503, Flags: "UF",
		Duration: 1500 * time.Microsecond, Upstream: "10.0.0.11:9080", Cluster: "outbound|9080||reviews.ns1.svc.cluster.local",
		SourcePrincipal: "spiffe://cluster.local/ns/client/sa/sleep", RequestID: "req-1", BytesReceived: 12, BytesSent: 91,
	})
	l.Log(&Entry{Status: 0, Flags: "-", Duration: time.Second, Upstream: "10.0.0.20:7000", BytesReceived: 5, BytesSent: 7})

	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want one per entry:\n%s", len(lines), buf.String())
	}
	var req, conn map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &req); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &conn); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"level": "INFO", "msg": "request", "log": "access", "method": "GET", "path": "/reviews/1?x=y", "authority": "reviews.ns1.svc.cluster.local:9080",
		"status": 503.0, "flags": "UF", "duration_ms": 1.5, "upstream": "10.0.0.11:9080",
		"cluster": "outbound|9080||reviews.ns1.svc.cluster.local", "source_principal": "spiffe://cluster.local/ns/client/sa/sleep",
		"request_id": "req-1", "bytes_received": 12.0, "bytes_sent": 91.0,
	}
	for k, v := range want {
		if req[k] != v {
			t.Errorf("request line: %s = %#v, want %#v", k, req[k], v)
		}
	}
	if len(req) != len(want)+1 { // and time
		t.Errorf("request line has %d fields, want %d: %s", len(req), len(want)+1, lines[0])
	}
	if conn["msg"] != "connection" || conn["duration_ms"] != 1000.0 || conn["bytes_received"] != 5.0 || conn["bytes_sent"] != 7.0 || conn["upstream"] != "10.0.0.20:7000" {
		t.Errorf("connection line: %s", lines[1])
	}
}

func TestDryRun(t *testing.T) {
	var buf bytes.Buffer
	New(&buf).Log(&Entry{Method: "GET", DryRun: []DryRun{
		{Prefix: "istio_dry_run_deny_", Result: "denied", Policy: "ns[a]-policy[b]-rule[0]"},
		{Prefix: "istio_dry_run_allow_", Result: "denied"},
	}})
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"istio_dry_run_deny_shadow_engine_result": "denied", "istio_dry_run_deny_shadow_effective_policy_id": "ns[a]-policy[b]-rule[0]",
		"istio_dry_run_allow_shadow_engine_result": "denied",
	}
	for k, v := range want {
		if line[k] != v {
			t.Errorf("%s = %v, want %v", k, line[k], v)
		}
	}
	if _, ok := line["istio_dry_run_allow_shadow_effective_policy_id"]; ok {
		t.Error("a policy id is written for a shadow engine no policy of which matched")
	}
}

// The time is slog's: RFC 3339 with nanoseconds.
func TestTime(t *testing.T) {
	now := time.Date(2026, 12, 7, 2, 31, 59, 123456789, time.UTC)
	line := string(appendEntry(nil, now, &Entry{Method: "GET"}))
	if !strings.HasPrefix(line, `{"time":"2026-12-07T02:31:59.123456789Z","level":"INFO","msg":"request","log":"access",`) || !strings.HasSuffix(line, "}\n") {
		t.Errorf("line %s", line)
	}
}

// FuzzLine: whatever a client puts in a path, authority or request id, the line is one
// line of valid JSON that decodes to what encoding/json would have written.
func FuzzLine(f *testing.F) {
	f.Add("/a?b=c", "host:80", "id")
	f.Add("/\"\\\n\x00\u2028<>&", "\xff\xfe", "\u00e9t\u00e9")
	f.Fuzz(func(t *testing.T, path, authority, id string) {
		line := appendEntry(nil, time.Now(), &Entry{Method: "GET", Path: path, Authority: authority, RequestID: id,
			DryRun: []DryRun{{Prefix: id, Result: path, Policy: authority}}})
		if bytes.IndexByte(line, '\n') != len(line)-1 {
			t.Fatalf("not one line: %q", line)
		}
		var got map[string]any
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatalf("invalid JSON %q: %v", line, err)
		}
		for key, in := range map[string]string{"path": path, "authority": authority, "request_id": id} {
			enc, _ := json.Marshal(in)
			var want string
			_ = json.Unmarshal(enc, &want)
			if got[key] != want {
				t.Errorf("%s = %q, want %q", key, got[key], want)
			}
		}
	})
}

func TestNil(t *testing.T) {
	if New(nil) != nil {
		t.Error("New(nil) is not nil")
	}
	var l *Logger
	l.Log(&Entry{Method: "GET"}) // writes nothing, does not panic
}

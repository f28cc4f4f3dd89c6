package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestLoggerKeysUnique: a sub-component's "component" does not repeat a key of the
// binary's logger.
func TestLoggerKeysUnique(t *testing.T) {
	var b bytes.Buffer
	newLogger(&b, slog.LevelInfo).With("component", "zds-client").Info("hello")
	line := b.String()
	if n := strings.Count(line, `"component":`); n != 1 {
		t.Errorf("%d component keys in %s", n, line)
	}
	if !strings.Contains(line, `"binary":"ztunnel"`) {
		t.Errorf("no binary key in %s", line)
	}
}

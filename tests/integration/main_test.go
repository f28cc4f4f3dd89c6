package integration

import (
	"os"
	"testing"

	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/istiodtest"
)

func TestMain(m *testing.M) {
	code := cluster.Main(m)
	istiodtest.Cleanup()
	os.Exit(code)
}

// binary builds the command at pkg once per test binary and returns its path.
func binary(t testing.TB, pkg string) string { return istiodtest.Binary(t, pkg) }

//go:build tools

// Package tools pins Istio's echo server and client, the local cluster's test app (and the
// app of Gateway API conformance's echo-advanced image), which tools/build.sh builds from this
// module. Not part of the ambient-lite module.
package tools

import (
	_ "istio.io/istio/pkg/test/echo/cmd/client"
	_ "istio.io/istio/pkg/test/echo/cmd/server"
)

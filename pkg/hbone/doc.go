// Package hbone is the HBONE protocol of Istio ambient: TCP streams tunnelled as HTTP/2
// CONNECT requests over mutual TLS, on port 15008, wire-compatible with ztunnel and Istio's
// own implementation.
//
// A [Dialer] opens streams (net.Conn) over pooled HTTP/2 connections, at most 100 streams
// per connection and one connection per key until that fills, closing connections idle for
// five minutes. A [Server] accepts connections, parses and validates each CONNECT and asks
// its caller's [Handler] for an upstream connection, then pipes bytes both ways.
//
// It is protocol only. It holds no mesh state and knows nothing of policy: which identity
// to present or expect, whether a peer may connect and where a target lives are the
// caller's decisions, taken before Dial or inside a Handler. TLS configurations come from
// pkg/mtls; source-address binding and socket marks come from the caller's dial hook.
// Any package may import it.
//
// Both sides run this package's own HTTP/2 engine, built on golang.org/x/net/http2's Framer
// and hpack only, with ztunnel's flow-control windows (4 MiB per stream, 16 MiB per
// connection). Each connection has one reader goroutine that demultiplexes frames into
// per-stream buffers; whoever writes (a Stream's Write, a server stream's copy) encodes
// its frames and writes them to the TLS connection itself, so a small Write costs at most
// one TLS record and one write syscall, and no goroutine hand-off; small Writes of streams
// running at the same time share one (a sender yields once before it flushes). Each
// direction of a stream ends on its own, as in ztunnel: a client's half-close (CloseWrite)
// reaches the upstream as a FIN while the reply still flows back, and an upstream that
// closes its sending side first ends only the server-to-client direction (END_STREAM),
// while the client can still send.
// An upstream error resets the stream, so the client reads an error, not EOF.
package hbone

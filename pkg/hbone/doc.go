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
// Both sides use golang.org/x/net/http2, whose ClientConn lets the Dialer own its pool
// (dial, TLS, reservation of stream slots) and whose Server serves one connection at a
// time, with ztunnel's flow-control windows (4 MiB per stream, 16 MiB per connection).
// One limitation follows from the net/http handler model: a server can end its response
// only by returning, so when an upstream closes its sending side first the whole stream
// ends (the client reads every byte, then EOF; its further writes fail), where ztunnel would
// keep the client-to-upstream direction open. A client's half-close (CloseWrite) is
// propagated to the upstream as a FIN, and the reply still flows back.
package hbone

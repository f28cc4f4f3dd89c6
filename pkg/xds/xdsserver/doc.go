// Package xdsserver is the server side of delta ADS (see package xds): a Server that
// streams to each client the resources caller-supplied Sources produce, tracking per
// stream what was subscribed, sent, ACKed and NACKed, with debounced pushes.
//
// It is protocol only: deciding what a proxy may see, and building the resources, is glue
// in the component that owns the Server (istiod-lite).
package xdsserver

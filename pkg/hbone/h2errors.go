package hbone

// The errors of the HTTP/2 engine: connection errors that end it with GOAWAY, and the
// errors its streams fail with.

import (
	"errors"
	"fmt"

	"golang.org/x/net/http2"
)

var (
	// errWriteClosed is what Write returns after CloseWrite.
	errWriteClosed = errors.New("hbone stream: write after CloseWrite")
	// errRefused: the server did not process the stream (REFUSED_STREAM, or a GOAWAY below
	// its id); it is safe to open it again on another connection.
	errRefused = errors.New("hbone stream refused by the server before processing")
	// errKeepaliveTimeout closes a connection whose peer did not answer a keepalive PING.
	errKeepaliveTimeout = errors.New("hbone connection: keepalive PING not answered")
	// errTooManyControl closes a connection whose peer makes us queue control frames
	// (PING acks, RST_STREAMs) faster than it reads them.
	errTooManyControl = errors.New("hbone connection: too many control frames queued")
)

// h2Error is a connection error: the conn sends GOAWAY with code and closes.
type h2Error struct {
	code   http2.ErrCode
	reason string
}

func (e h2Error) Error() string { return fmt.Sprintf("http2 %v: %s", e.code, e.reason) }

// resetError is a stream ended by RST_STREAM, sent by the peer or by us.
type resetError struct {
	code   http2.ErrCode
	remote bool
}

func (e resetError) Error() string {
	if e.remote {
		return fmt.Sprintf("hbone stream reset by the peer (%v)", e.code)
	}
	return fmt.Sprintf("hbone stream reset (%v)", e.code)
}

// connError is a stream ended because its connection did.
type connError struct{ err error }

func (e connError) Error() string {
	if e.err == nil {
		return "hbone connection closed"
	}
	return "hbone connection closed: " + e.err.Error()
}

func (e connError) Unwrap() error { return e.err }

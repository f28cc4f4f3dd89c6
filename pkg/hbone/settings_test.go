package hbone

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// h2Settings reads an HTTP/2 peer's opening: its SETTINGS and the connection-level
// WINDOW_UPDATE that may follow, and returns the stream window, max frame size and total
// connection window it announces.
func h2Settings(t *testing.T, c io.ReadWriter) (stream, frame uint32, conn int64) {
	t.Helper()
	fr := http2.NewFramer(c, c)
	stream, frame, conn = 65535, 16384, 65535
	sawSettings := false
	for i := 0; i < 4; i++ {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			sawSettings = true
			if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
				stream = v
			}
			if v, ok := f.Value(http2.SettingMaxFrameSize); ok {
				frame = v
			}
			fr.WriteSettingsAck()
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				conn += int64(f.Increment)
				if sawSettings {
					return stream, frame, conn
				}
			}
		}
	}
	t.Fatal("no SETTINGS and WINDOW_UPDATE in the peer's first frames")
	return
}

func checkWindows(t *testing.T, side string, stream, frame uint32, conn int64) {
	t.Helper()
	if stream != StreamWindow || frame != MaxFrameSize {
		t.Errorf("%s announces stream window %d, max frame %d; want %d, %d", side, stream, frame, StreamWindow, MaxFrameSize)
	}
	// The client adds the configured size to the default 64 KiB (as x/net's does); the
	// server tops up to it.
	if conn < ConnWindow || conn > ConnWindow+65535 {
		t.Errorf("%s announces connection window %d, want %d", side, conn, ConnWindow)
	}
}

func TestServerWindows(t *testing.T) {
	e := newEnv(t, envOptions{})
	raw, err := net.Dial("tcp", e.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c := tls.Client(raw, e.clientTLS())
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := http2.NewFramer(c, c).WriteSettings(); err != nil {
		t.Fatal(err)
	}
	stream, frame, conn := h2Settings(t, c)
	checkWindows(t, "server", stream, frame, conn)
}

func TestDialerWindows(t *testing.T) {
	e := newEnv(t, envOptions{}) // for its PKI only
	ln := listen(t)
	defer ln.Close()
	d := newDialer(t, DialerOptions{})
	req := e.request(upstream(t, echo))
	req.Address = ln.Addr().(*net.TCPAddr).AddrPort()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dialed := make(chan error, 1)
	go func() {
		_, err := d.Dial(ctx, req)
		dialed <- err
	}()
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c := tls.Server(raw, e.server.tls)
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, preface); err != nil || string(preface) != http2.ClientPreface {
		t.Fatalf("preface %q, %v", preface, err)
	}
	if err := http2.NewFramer(c, c).WriteSettings(); err != nil {
		t.Fatal(err)
	}
	stream, frame, conn := h2Settings(t, c)
	checkWindows(t, "dialer", stream, frame, conn)
	raw.Close()
	if err := <-dialed; err == nil {
		t.Error("Dial succeeded against a server that hung up")
	}
}

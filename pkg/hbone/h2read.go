package hbone

// The reader goroutine: it reads every frame of the connection and dispatches it, DATA
// straight into its stream's buffer. It never writes to the connection itself: the
// frames it answers with are queued for the write side (h2write.go).

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func (c *conn) readFrames() error {
	for {
		if c.br.Buffered() == 0 {
			c.kickCtl()
		}
		fh, err := c.rfr.ReadFrameHeader()
		if err != nil {
			return c.readError(err)
		}
		c.frames.Add(1)
		if !c.sawSettings && fh.Type != http2.FrameSettings {
			return c.readError(h2Error{http2.ErrCodeProtocol, "first frame is not SETTINGS"})
		}
		if fh.Type == http2.FrameData {
			if err := c.readData(fh); err != nil {
				return c.readError(err)
			}
			continue
		}
		f, err := c.rfr.ReadFrameForHeader(fh)
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.streamError(se.StreamID, se.Code, se)
				continue
			}
			return c.readError(err)
		}
		if err := c.processFrame(f); err != nil {
			return c.readError(err)
		}
	}
}

// readError turns a reading error into the connection's end, sending GOAWAY for a
// protocol violation.
func (c *conn) readError(err error) error {
	var (
		he h2Error
		ce http2.ConnectionError
	)
	switch {
	case errors.As(err, &he):
	case errors.As(err, &ce):
		he = h2Error{http2.ErrCode(ce), "connection error"}
		if d := c.rfr.ErrorDetail(); d != nil {
			he.reason = d.Error()
		}
	case errors.Is(err, http2.ErrFrameTooLarge):
		he = h2Error{http2.ErrCodeFrameSize, "frame too large"}
	default:
		return err
	}
	c.mu.Lock()
	last := c.maxPeerID
	c.mu.Unlock()
	c.queueCtl(func(fr *http2.Framer) error { return fr.WriteGoAway(last, he.code, []byte(he.reason)) })
	// The connection ends: the reader may write its GOAWAY, for a while.
	if c.wmu.TryLock() {
		_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		c.drainCtlLocked()
		c.flushLocked(nil)
		c.wmu.Unlock()
	}
	return he
}

// streamError resets stream id with code (a stream error of the peer's making).
func (c *conn) streamError(id uint32, code http2.ErrCode, cause error) {
	c.mu.Lock()
	st := c.streams[id]
	if c.server && id%2 == 1 && id > c.maxPeerID {
		c.maxPeerID = id
	}
	c.mu.Unlock()
	if st != nil {
		st.reset(code, fmt.Errorf("hbone stream protocol error: %w", cause))
		return
	}
	c.queueCtl(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
}

// idleLocked reports whether id names a stream that was never opened.
func (c *conn) idleLocked(id uint32) bool {
	if c.server {
		return id%2 == 0 || id > c.maxPeerID
	}
	return id%2 == 0 || id >= c.nextID
}

func (c *conn) processFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		return c.processSettings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			c.mu.Lock()
			if c.pinging && f.Data == c.pingData {
				c.pinging = false
			}
			c.mu.Unlock()
			return nil
		}
		data := f.Data
		c.queueCtl(func(fr *http2.Framer) error { return fr.WritePing(true, data) })
	case *http2.WindowUpdateFrame:
		return c.processWindowUpdate(f)
	case *http2.RSTStreamFrame:
		c.mu.Lock()
		st := c.streams[f.StreamID]
		if st == nil {
			idle := c.idleLocked(f.StreamID)
			c.mu.Unlock()
			if idle {
				return h2Error{http2.ErrCodeProtocol, "RST_STREAM on an idle stream"}
			}
			return nil
		}
		drained := c.finishLocked(st)
		c.mu.Unlock()
		var err error = resetError{code: f.ErrCode, remote: true}
		if f.ErrCode == http2.ErrCodeRefusedStream {
			err = fmt.Errorf("%w: %w", errRefused, err)
		}
		st.fail(err)
		if drained {
			c.closeDrained()
		}
	case *http2.GoAwayFrame:
		c.processGoAway(f)
	case *http2.MetaHeadersFrame:
		if c.server {
			return c.serverHeaders(f)
		}
		return c.clientHeaders(f)
	case *http2.PushPromiseFrame:
		return h2Error{http2.ErrCodeProtocol, "PUSH_PROMISE"}
	}
	// PRIORITY, PRIORITY_UPDATE and unknown frames are ignored.
	return nil
}

func (c *conn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if f.NumSettings() > 100 || f.HasDuplicates() {
		return h2Error{http2.ErrCodeProtocol, "bad SETTINGS"}
	}
	c.mu.Lock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerInitWindow
			for _, st := range c.streams {
				st.sendWindow += delta
				if st.sendWindow > maxWindow {
					return h2Error{http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE overflows a window"}
				}
			}
			c.peerInitWindow = int64(s.Val)
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = s.Val
		case http2.SettingMaxHeaderListSize:
			c.peerMaxHeaderList = s.Val
		case http2.SettingHeaderTableSize:
			c.peerTableSize = min(s.Val, headerTableSize)
		}
		return nil
	})
	c.wakeWritersLocked()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	c.sawSettings = true
	c.queueCtl(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
	return nil
}

// readData reads a DATA frame's payload straight into its stream's buffer.
func (c *conn) readData(fh http2.FrameHeader) error {
	id := fh.StreamID
	if id == 0 {
		return h2Error{http2.ErrCodeProtocol, "DATA on stream 0"}
	}
	length := int64(fh.Length)
	data := int(fh.Length)
	pad := 0
	if fh.Flags.Has(http2.FlagDataPadded) {
		if data == 0 {
			return h2Error{http2.ErrCodeProtocol, "DATA padding length missing"}
		}
		b, err := c.br.ReadByte()
		if err != nil {
			return err
		}
		pad = int(b)
		data--
		if pad > data {
			return h2Error{http2.ErrCodeProtocol, "DATA padding longer than the payload"}
		}
		data -= pad
	}
	c.mu.Lock()
	if length > c.recvWindow {
		c.mu.Unlock()
		return h2Error{http2.ErrCodeFlowControl, "connection window exceeded"}
	}
	c.recvWindow -= length
	st := c.streams[id]
	var code http2.ErrCode
	deliver := false
	switch {
	case st == nil:
		if c.idleLocked(id) {
			c.mu.Unlock()
			return h2Error{http2.ErrCodeProtocol, "DATA on an idle stream"}
		}
	case st.remoteEnded:
		code = http2.ErrCodeStreamClosed
	case length > st.recvWindow:
		code = http2.ErrCodeFlowControl
	default:
		st.recvWindow -= length
		deliver = true
	}
	c.mu.Unlock()
	if !deliver {
		if _, err := io.CopyN(io.Discard, c.br, int64(data+pad)); err != nil {
			return err
		}
		c.queueConnCredit(length)
		if st != nil {
			st.reset(code, resetError{code: code})
		}
		return nil
	}
	rest := data
	if pad == 0 {
		k, err := c.deliverDirect(st, data)
		if err != nil {
			return err
		}
		rest -= k
	}
	var dropped int
	if rest > 0 {
		var err error
		if dropped, err = st.recv.fill(c.br, rest); err != nil {
			return err
		}
	}
	if pad > 0 {
		if _, err := io.CopyN(io.Discard, c.br, int64(pad)); err != nil {
			return err
		}
	}
	if padding := length - int64(data); padding > 0 || dropped > 0 {
		// Padding, and bytes of a stream closed locally, are never read: their
		// connection credit returns now (and the padding's stream credit).
		c.queueConnCredit(padding + int64(dropped))
		if padding > 0 {
			c.mu.Lock()
			st.recvWindow += padding
			c.mu.Unlock()
			c.queueCtl(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(id, uint32(padding)) })
		}
	}
	if fh.Flags.Has(http2.FlagDataEndStream) {
		c.remoteEnd(st)
	}
	return nil
}

// remoteEnd records the peer's END_STREAM on st.
func (c *conn) remoteEnd(st *stream) {
	c.mu.Lock()
	st.remoteEnded = true
	drained := false
	if st.localEnded {
		drained = c.finishLocked(st)
	}
	c.mu.Unlock()
	st.recv.setErr(io.EOF)
	if drained {
		c.closeDrained()
	}
}

// header builds an http.Header from header fields, canonicalizing names with a bounded
// cache.
func (c *conn) header(fields []hpack.HeaderField) http.Header {
	h := make(http.Header, len(fields))
	for _, f := range fields {
		k, ok := c.canon[f.Name]
		if !ok {
			k = textproto.CanonicalMIMEHeaderKey(f.Name)
			if len(c.canon) < 64 {
				if c.canon == nil {
					c.canon = map[string]string{}
				}
				c.canon[f.Name] = k
			}
		}
		h[k] = append(h[k], f.Value)
	}
	return h
}

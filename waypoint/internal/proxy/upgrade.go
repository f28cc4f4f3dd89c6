package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
)

// upgrade completes a 101 Switching Protocols (WebSocket, say) as httputil.ReverseProxy
// does: the upstream must switch to the protocol the client asked for; the response goes
// downstream on the hijacked stream, then bytes are copied both ways until either
// direction ends or the try's context does.
func (p *Proxy) upgrade(h *hop, resp *http.Response, reqUpType string) {
	x := h.x
	uc := resp.Body.(*upBody).detach()
	defer uc.Close()
	if !h.try.responseStarted() {
		upstreamError(h, errPerTryTimeout)
		return
	}
	applyResponseMods(resp.Header, h.rt, h.vh, h.wc)
	resUpType := upgradeType(resp.Header)
	if !isPrint(resUpType) {
		upstreamError(h, fmt.Errorf("backend tried to switch to invalid protocol %q", resUpType))
		return
	}
	if !strings.EqualFold(reqUpType, resUpType) {
		upstreamError(h, fmt.Errorf("backend tried to switch protocol %q when %q was requested", resUpType, reqUpType))
		return
	}
	conn, brw, err := http.NewResponseController(x.w).Hijack()
	if errors.Is(err, http.ErrNotSupported) {
		upstreamError(h, fmt.Errorf("can't switch protocols using non-Hijacker ResponseWriter type %T", x.w.ResponseWriter))
		return
	}
	if err != nil {
		upstreamError(h, fmt.Errorf("hijacking the stream for a protocol switch: %w", err))
		return
	}
	defer conn.Close()
	stop := context.AfterFunc(h.try.ctx, func() { uc.Close() })
	defer stop()
	copyHeader(x.w.Header(), resp.Header)
	resp.Header, resp.Body = x.w.Header(), nil
	if err := resp.Write(brw); err != nil {
		return
	}
	if err := brw.Flush(); err != nil {
		return
	}
	x.w.status = http.StatusSwitchingProtocols
	var wg sync.WaitGroup
	done := make(chan struct{}, 2)
	copyOne := func(dst io.Writer, src io.Reader) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	wg.Add(2)
	go copyOne(uc, brw.Reader)
	go copyOne(conn, uc.br)
	<-done // either direction ended: end both, as before (neither side half-closes)
	uc.Close()
	conn.Close()
	wg.Wait()
}

func isPrint(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

package proxy

import (
	"bufio"
	"net"
	"slices"
	"sync"
	"time"
)

// The HTTP/1.1 upstream connection pool's limits, net/http's Transport's as the waypoint
// configured it.
const (
	maxIdlePerUpstream  = 100
	upstreamIdleTimeout = 90 * time.Second
)

// upstreamConn is a keep-alive HTTP/1.1 connection to an upstream endpoint: an HBONE
// stream through the endpoint's ztunnel, or a plain connection.
type upstreamConn struct {
	net.Conn
	key       upstreamKey
	lr        limitReader
	br        *bufio.Reader
	idle      *time.Timer // closes it once idle too long; nil until first idle
	idleSince time.Time
	reused    bool
}

func newUpstreamConn(c net.Conn, key upstreamKey) *upstreamConn {
	uc := &upstreamConn{Conn: c, key: key}
	uc.lr.r = c
	uc.lr.unlimited()
	uc.br = bufio.NewReaderSize(&uc.lr, 4<<10)
	return uc
}

// h1pool keeps idle upstream connections per endpoint, most recently used first.
type h1pool struct {
	mu     sync.Mutex
	idle   map[upstreamKey][]*upstreamConn
	closed bool
}

// get takes an idle connection to k, or returns nil.
func (p *h1pool) get(k upstreamKey) *upstreamConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.idle[k]
	for len(l) > 0 {
		uc := l[len(l)-1]
		l[len(l)-1] = nil
		l = l[:len(l)-1]
		p.idle[k] = l
		if uc.idle.Stop() {
			uc.reused = true
			return uc
		}
		// Its idle timer fired: the timer closes it.
	}
	return nil
}

// put keeps uc for reuse; false if the pool is closed or full (the caller closes uc).
func (p *h1pool) put(uc *upstreamConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.idle[uc.key]) >= maxIdlePerUpstream {
		return false
	}
	if p.idle == nil {
		p.idle = map[upstreamKey][]*upstreamConn{}
	}
	p.idle[uc.key] = append(p.idle[uc.key], uc)
	uc.idleSince = time.Now()
	if uc.idle == nil {
		uc.idle = time.AfterFunc(upstreamIdleTimeout, func() { p.expire(uc) })
	} else {
		uc.idle.Reset(upstreamIdleTimeout)
	}
	return true
}

// expire closes uc, idle too long.
func (p *h1pool) expire(uc *upstreamConn) {
	p.mu.Lock()
	l := p.idle[uc.key]
	if i := slices.Index(l, uc); i >= 0 {
		p.idle[uc.key] = slices.Delete(l, i, i+1)
	}
	if len(p.idle[uc.key]) == 0 {
		delete(p.idle, uc.key)
	}
	p.mu.Unlock()
	uc.Close()
}

// closeIdle closes the idle connections; if final, the pool takes no more.
func (p *h1pool) closeIdle(final bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = p.closed || final
	for k, l := range p.idle {
		for _, uc := range l {
			uc.idle.Stop()
			uc.Close()
		}
		delete(p.idle, k)
	}
}

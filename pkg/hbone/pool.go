package hbone

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// poolID is a pool key plus the address dialled: streams share a connection only when
// both match.
type poolID struct {
	PoolKey
	address netip.AddrPort
}

// keyPool holds the connections of one poolID.
type keyPool struct {
	conns   []*pooledConn
	dialing *dialCall // connection setup in flight, shared by every waiter
}

type dialCall struct {
	done chan struct{}
	err  error
	pc   *pooledConn // the connection set up, if err is nil
}

// pooledConn is one HTTP/2 connection. Its fields other than cc and local are guarded by
// Dialer.mu.
type pooledConn struct {
	id      poolID
	cc      *conn
	local   net.Addr
	streams int         // streams handed out and not yet closed
	idle    *time.Timer // running while streams == 0
	idleGen int         // invalidates an idle timer that fired while being stopped
	pooled  bool        // still in its keyPool
}

func (pc *pooledConn) stopIdle() {
	if pc.idle != nil {
		pc.idle.Stop()
		pc.idle = nil
	}
	pc.idleGen++
}

// acquire returns a connection of req's pool with a stream slot reserved for the caller,
// setting one up if none has room. Concurrent callers wait for a single setup.
func (d *Dialer) acquire(ctx context.Context, req *DialRequest) (*pooledConn, error) {
	id := poolID{PoolKey: req.Key, address: req.Address}
	for {
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			return nil, ErrClosed
		}
		kp := d.pools[id]
		if kp == nil {
			kp = &keyPool{}
			d.pools[id] = kp
		}
		pc, stale := d.reserveLocked(kp)
		call := kp.dialing
		if pc == nil && call == nil {
			call = &dialCall{done: make(chan struct{})}
			kp.dialing = call
			d.wg.Add(1)
			go d.connect(id, req.TLS, call)
		}
		d.mu.Unlock()
		for _, s := range stale {
			s.cc.Close()
		}
		if pc != nil {
			return pc, nil
		}
		select {
		case <-call.done:
			if call.err != nil {
				return nil, call.err
			}
			if call.pc.cc.isClosed() {
				// Closed by the server as soon as it was set up: fail rather than dial again.
				return nil, fmt.Errorf("connection closed after setup: %w", call.pc.cc.closeErr())
			}
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// reserveLocked takes a stream slot on a connection of kp that has room, dropping the
// connections that can take no more streams (closed, or told to go away); those without
// streams are returned for the caller to close.
func (d *Dialer) reserveLocked(kp *keyPool) (*pooledConn, []*pooledConn) {
	var stale []*pooledConn
	live := kp.conns[:0]
	var found *pooledConn
	for _, pc := range kp.conns {
		if !pc.cc.canTakeNewStream() {
			pc.pooled = false
			if pc.streams == 0 {
				pc.stopIdle()
				stale = append(stale, pc)
			}
			continue
		}
		live = append(live, pc)
		if found == nil && pc.streams < d.maxStreams && pc.cc.reserve() {
			pc.streams++
			pc.stopIdle()
			found = pc
		}
	}
	clear(kp.conns[len(live):])
	kp.conns = live
	return found, stale
}

// connect sets up a connection for id and pools it; waiters on call then retry.
func (d *Dialer) connect(id poolID, cfg *tls.Config, call *dialCall) {
	defer d.wg.Done()
	ctx, cancel := context.WithTimeout(d.ctx, d.connectTimeout)
	defer cancel()
	pc, err := d.newConn(ctx, id, cfg)
	d.mu.Lock()
	if err == nil && d.closed {
		pc.cc.Close()
		pc, err = nil, ErrClosed
	}
	kp := d.pools[id]
	if kp != nil && kp.dialing == call {
		kp.dialing = nil
	}
	if err == nil {
		if kp == nil {
			kp = &keyPool{}
			d.pools[id] = kp
		}
		pc.pooled = true
		kp.conns = append(kp.conns, pc)
		d.armIdleLocked(pc)
	} else if kp != nil && len(kp.conns) == 0 {
		delete(d.pools, id)
	}
	call.err, call.pc = err, pc
	close(call.done)
	d.mu.Unlock()
}

func (d *Dialer) newConn(ctx context.Context, id poolID, cfg *tls.Config) (*pooledConn, error) {
	raw, err := d.dial(ctx, id.PoolKey, id.address)
	if err != nil {
		return nil, fmt.Errorf("connecting: %w", err)
	}
	bc := newBatchedTLS(raw, func(c net.Conn) *tls.Conn { return tls.Client(c, cfg) })
	tc := bc.Conn
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		raw.Close()
		return nil, fmt.Errorf("server negotiated ALPN %q, want \"h2\"", p)
	}
	cc := newConn(bc, false)
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetWriteDeadline(dl)
	}
	if err := cc.startClient(); err != nil {
		cc.Close()
		return nil, fmt.Errorf("starting http2: %w", err)
	}
	_ = raw.SetWriteDeadline(time.Time{})
	d.log.Debug("hbone connection opened", "address", id.address, "src", raw.LocalAddr(), "source", id.Source, "destinations", id.Destinations)
	return &pooledConn{id: id, cc: cc, local: raw.LocalAddr()}, nil
}

// release returns a stream slot; the connection idles when it has no stream left.
func (d *Dialer) release(pc *pooledConn) {
	d.mu.Lock()
	pc.streams--
	closeNow := pc.streams == 0 && (!pc.pooled || d.closed)
	if pc.streams == 0 && !closeNow {
		d.armIdleLocked(pc)
	}
	d.mu.Unlock()
	if closeNow {
		pc.cc.Close()
	}
}

func (d *Dialer) armIdleLocked(pc *pooledConn) {
	pc.stopIdle()
	gen := pc.idleGen
	pc.idle = time.AfterFunc(d.idleTimeout, func() { d.expire(pc, gen) })
}

// expire closes pc if it is still idle since the timer of generation gen was armed.
func (d *Dialer) expire(pc *pooledConn, gen int) {
	d.mu.Lock()
	if pc.idleGen != gen || pc.streams != 0 {
		d.mu.Unlock()
		return
	}
	pc.idle = nil
	if kp := d.pools[pc.id]; kp != nil && pc.pooled {
		for i, c := range kp.conns {
			if c == pc {
				kp.conns = append(kp.conns[:i], kp.conns[i+1:]...)
				break
			}
		}
		if len(kp.conns) == 0 && kp.dialing == nil {
			delete(d.pools, pc.id)
		}
	}
	pc.pooled = false
	d.mu.Unlock()
	d.log.Debug("hbone connection idle, closing", "address", pc.id.address, "src", pc.local)
	pc.cc.Close()
}

package hbone

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

func TestManyShortStreams(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{})
	d := newDialer(t, DialerOptions{})
	target := upstream(t, echo)
	const workers, perWorker = 20, 50
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				s, err := d.Dial(context.Background(), e.request(target))
				if err != nil {
					errs <- err
					return
				}
				msg := fmt.Appendf(nil, "worker %d stream %d", w, i)
				s.Write(msg)
				s.CloseWrite()
				got, err := io.ReadAll(s)
				s.Close()
				if err != nil || !bytes.Equal(got, msg) {
					errs <- fmt.Errorf("echo %q, %v; want %q", got, err, msg)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := e.ln.accepted.Load(); n > workers {
		t.Errorf("%d connections for %d concurrent workers", n, workers)
	}
	eventually(t, "every completion callback", func() bool { return len(e.stats()) == workers*perWorker })
	for _, st := range e.stats() {
		if st.Status != 200 || st.Err != nil || st.ToUpstream != st.FromUpstream || st.ToUpstream == 0 {
			t.Fatalf("stream stats %+v", st)
		}
	}
}

// TestLargeTransfer echoes 1 GiB (128 MiB under the race detector) through one stream in
// both directions at once and checks every byte.
func TestLargeTransfer(t *testing.T) {
	checkGoroutines(t)
	size := int64(1 << 30)
	if raceEnabled || testing.Short() {
		size = 128 << 20
	}
	e := newEnv(t, envOptions{})
	d := newDialer(t, DialerOptions{})
	target := upstream(t, echo)
	s, err := d.Dial(context.Background(), e.request(target))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sent := make(chan uint32, 1)
	go func() {
		h := crc32.NewIEEE()
		src := io.TeeReader(io.LimitReader(newPattern(1), size), h)
		if _, err := io.CopyBuffer(struct{ io.Writer }{s}, src, make([]byte, 256<<10)); err != nil {
			t.Error(err)
		}
		s.CloseWrite()
		sent <- h.Sum32()
	}()
	h := crc32.NewIEEE()
	n, err := io.CopyBuffer(h, struct{ io.Reader }{s}, make([]byte, 256<<10))
	if err != nil || n != size {
		t.Fatalf("received %d of %d bytes: %v", n, size, err)
	}
	if got, want := h.Sum32(), <-sent; got != want {
		t.Fatalf("crc of received %08x, of sent %08x", got, want)
	}
	s.Close()
	eventually(t, "the completion callback", func() bool { return len(e.stats()) == 1 })
	if st := e.stats()[0]; st.ToUpstream != size || st.FromUpstream != size || st.Err != nil {
		t.Errorf("stats %+v, want %d bytes each way", st, size)
	}
}

// pattern is a fast deterministic byte source.
type pattern struct{ r *rand.ChaCha8 }

func newPattern(seed byte) *pattern { return &pattern{rand.NewChaCha8([32]byte{seed})} }

func (p *pattern) Read(b []byte) (int, error) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], p.r.Uint64())
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(p.r.Uint64())
	}
	return len(b), nil
}

func TestShutdown(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{})
	d := newDialer(t, DialerOptions{})
	target := upstream(t, echo)
	s, err := d.Dial(context.Background(), e.request(target))
	if err != nil {
		t.Fatal(err)
	}
	shut := make(chan error, 1)
	go func() { shut <- e.server.Shutdown(context.Background()) }()
	// The open stream keeps working while the server drains.
	eventually(t, "the listener to close", func() bool {
		c, err := net.DialTimeout("tcp", e.addr.String(), time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a stream open", err)
	default:
	}
	s.Write([]byte("still here"))
	s.CloseWrite()
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "still here" {
		t.Fatalf("during shutdown: %q, %v", got, err)
	}
	s.Close()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	if _, err := d.Dial(context.Background(), e.request(target)); err == nil {
		t.Fatal("Dial succeeded after Shutdown")
	}
}

func TestShutdownTimeoutCloses(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{})
	d := newDialer(t, DialerOptions{})
	s, err := d.Dial(context.Background(), e.request(upstream(t, echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := e.server.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want the deadline", err)
	}
	if _, err := io.ReadAll(s); err == nil {
		t.Error("stream read a clean EOF after the server was closed under it")
	}
}

func TestServeContext(t *testing.T) {
	checkGoroutines(t)
	e := newEnv(t, envOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	ln := listen(t)
	served := make(chan error, 1)
	go func() { served <- e.server.Serve(ctx, ln) }()
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve = %v, want nil after its context ended", err)
	}
	if err := e.server.Serve(context.Background(), listen(t)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve on a closed server = %v", err)
	}
}

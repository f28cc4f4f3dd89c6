package hbone

import (
	"bytes"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"

	"golang.org/x/net/http2"
)

// recordingConn records the writes of a conn under test.
type recordingConn struct {
	net.Conn // nil: only Write is called
	mu       sync.Mutex
	writes   int
	buf      bytes.Buffer
}

func (w *recordingConn) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	return w.buf.Write(p)
}

// dataFrames decodes the DATA frames written, as stream id -> payloads in order.
func (w *recordingConn) dataFrames(t *testing.T) map[uint32][]string {
	t.Helper()
	fr := http2.NewFramer(nil, bytes.NewReader(w.buf.Bytes()))
	got := map[uint32][]string{}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return got
		}
		d, ok := f.(*http2.DataFrame)
		if !ok {
			t.Fatalf("unexpected frame %v", f.Header())
		}
		got[d.StreamID] = append(got[d.StreamID], string(d.Data()))
	}
}

func newCombineConn(streams int) (*conn, *recordingConn, []*stream) {
	w := &recordingConn{}
	c := newConn(w, true)
	var sts []*stream
	for i := range streams {
		st := newStream(c, uint32(2*i+1))
		c.streams[st.id] = st
		sts = append(sts, st)
	}
	return c, w, sts
}

// TestWritesCombine: DATA of streams whose goroutines run at the same time leaves in one
// write; a sender alone writes at once; the frames keep their order per stream.
func TestWritesCombine(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const n = 8
	c, w, sts := newCombineConn(n)
	if err := c.writeData(sts[0], []byte("alone")); err != nil {
		t.Fatal(err)
	}
	if w.writes != 1 {
		t.Fatalf("a sender alone: %d writes, want 1", w.writes)
	}

	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, st := range sts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for j := range 2 {
				if err := c.writeData(st, []byte{byte('a' + i), byte('0' + j)}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	close(start)
	wg.Wait() // the flushers among them returned after their writes
	if w.writes-1 >= n {
		t.Errorf("%d senders ready at once took %d writes, want fewer than %d", n, w.writes-1, n)
	}
	got := w.dataFrames(t)
	for i, st := range sts {
		want := []string{string([]byte{byte('a' + i), '0'}), string([]byte{byte('a' + i), '1'})}
		if i == 0 {
			want = append([]string{"alone"}, want...)
		}
		if g := got[st.id]; !slices.Equal(g, want) {
			t.Errorf("stream %d: DATA %q, want %q", st.id, g, want)
		}
	}
}

// TestCombinedWritesBounded: while a flusher waits to run, senders leave their frames to it
// until maxCombined bytes wait; the sender that reaches it writes them all.
func TestCombinedWritesBounded(t *testing.T) {
	c, w, sts := newCombineConn(1)
	c.wmu.Lock()
	c.combining = true // a flusher between its yield and its write
	c.wmu.Unlock()
	chunk := make([]byte, 4<<10)
	frames := 0
	for w.writes == 0 {
		if frames > maxCombined/len(chunk)+1 {
			t.Fatalf("%d frames of %d bytes buffered without a write", frames, len(chunk))
		}
		if err := c.writeData(sts[0], chunk); err != nil {
			t.Fatal(err)
		}
		frames++
	}
	if want := (maxCombined + 9 + len(chunk) - 1) / (9 + len(chunk)); frames != want {
		t.Errorf("written at frame %d, want %d", frames, want)
	}
	if got := len(w.dataFrames(t)[sts[0].id]); got != frames {
		t.Errorf("%d frames written, want all %d", got, frames)
	}
	if len(c.wb.bytes()) != 0 {
		t.Errorf("%d bytes left buffered", len(c.wb.bytes()))
	}
}

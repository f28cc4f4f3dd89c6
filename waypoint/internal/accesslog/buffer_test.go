package accesslog

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

type recorder struct {
	mu     sync.Mutex
	writes []string
	fail   error
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return 0, r.fail
	}
	r.writes = append(r.writes, string(p))
	return len(p), nil
}

func (r *recorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.writes...)
}

func TestBufferBatchesLines(t *testing.T) {
	r := &recorder{}
	b := NewBuffer(r, time.Hour)
	for _, l := range []string{"a\n", "b\n", "c\n"} {
		if _, err := b.Write([]byte(l)); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.get(); len(got) != 0 {
		t.Fatalf("written before a flush: %q", got)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got := r.get(); len(got) != 1 || got[0] != "a\nb\nc\n" {
		t.Fatalf("writes %q, want one of the three lines", got)
	}
	// After Close, lines go straight through.
	b.Write([]byte("d\n"))
	if got := r.get(); len(got) != 2 || got[1] != "d\n" {
		t.Fatalf("after close: %q", got)
	}
}

func TestBufferFlushesAfterInterval(t *testing.T) {
	r := &recorder{}
	b := NewBuffer(r, 20*time.Millisecond)
	defer b.Close()
	b.Write([]byte("late\n"))
	deadline := time.Now().Add(10 * time.Second)
	for len(r.get()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("a buffered line was never written by the timer")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := r.get(); got[0] != "late\n" {
		t.Fatalf("writes %q", got)
	}
}

func TestBufferFullWritesWholeLines(t *testing.T) {
	r := &recorder{}
	b := NewBuffer(r, time.Hour)
	line := strings.Repeat("x", 1000) + "\n"
	n := 2 * bufferSize / len(line)
	for i := 0; i < n; i++ {
		b.Write([]byte(line))
	}
	big := strings.Repeat("y", 2*bufferSize) + "\n"
	b.Write([]byte(big))
	b.Close()
	var all bytes.Buffer
	for _, w := range r.get() {
		if !strings.HasSuffix(w, "\n") {
			t.Fatalf("a write cut a line: it ends %q", w[len(w)-10:])
		}
		if len(w) > bufferSize && w != big {
			t.Fatalf("a write of %d bytes, more than the buffer", len(w))
		}
		all.WriteString(w)
	}
	if want := strings.Repeat(line, n) + big; all.String() != want {
		t.Fatalf("lost or reordered output: %d bytes, want %d", all.Len(), len(want))
	}
	if len(r.get()) < 2 {
		t.Fatalf("%d writes, want the buffer to have filled", len(r.get()))
	}
}

func TestBufferWriteError(t *testing.T) {
	r := &recorder{fail: errors.New("disk full")}
	b := NewBuffer(r, time.Hour)
	b.Write([]byte("a\n"))
	if err := b.Close(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Close = %v, want the write error", err)
	}
	if _, err := b.Write([]byte("b\n")); err == nil {
		t.Fatal("Write after a failed flush succeeded")
	}
}

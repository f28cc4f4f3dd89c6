package xdsserver

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/xds"
)

// BenchmarkPush100Streams measures the time from Push of a one-resource change to its
// arrival at each of 100 client streams (debounce disabled), and reports p50 and p99.
func BenchmarkPush100Streams(b *testing.B) {
	const streams = 100
	snap := newSnapshot("a", "0", "b", "0")
	e := newEnv(b, ServerOptions{Sources: map[string]Source{typeA: snap}, Debounce: -1})
	conn := e.dial(b)
	var (
		mu      sync.Mutex
		start   time.Time
		want    string
		lat     []time.Duration
		arrived = make(chan struct{}, streams)
	)
	for range streams {
		startClient(b, conn, func(_ string, ups []*xds.Resource, _ []string) error {
			for _, u := range ups {
				mu.Lock()
				if u.Name == "a" && u.Version == want {
					lat = append(lat, time.Since(start))
					mu.Unlock()
					arrived <- struct{}{}
					continue
				}
				mu.Unlock()
			}
			return nil
		}, func(c *xds.Client) { c.Watch(typeA) })
	}
	eventually(b, "all streams", func() bool { return e.srv.Streams() == streams })
	time.Sleep(50 * time.Millisecond) // let the initial syncs finish
	b.ResetTimer()
	for i := range b.N {
		v := fmt.Sprint(i + 1)
		snap.set("a", v)
		mu.Lock()
		want, start = v, time.Now()
		mu.Unlock()
		e.srv.Push(typeA, []string{"a"})
		for range streams {
			<-arrived
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
}

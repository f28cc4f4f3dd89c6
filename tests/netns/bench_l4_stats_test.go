package netns

import (
	"cmp"
	"math"
	"slices"
	"testing"
)

// fortioHistogram is fortio's JSON DurationHistogram (seconds).
type fortioHistogram struct {
	Count, Min, Max float64
	Data            []struct{ Start, End, Count float64 }
}

// latency pools fortio histograms of several runs of one path, so its percentiles are
// over every request of them (runs of different paths are interleaved: machine drift
// then falls on every path alike).
type latency struct {
	count, min, max float64
	buckets         map[[2]float64]float64 // [start, end) -> requests
}

func (l *latency) add(h fortioHistogram) {
	if h.Count == 0 {
		return
	}
	if l.buckets == nil {
		l.buckets, l.min, l.max = map[[2]float64]float64{}, h.Min, h.Max
	}
	l.count += h.Count
	l.min, l.max = min(l.min, h.Min), max(l.max, h.Max)
	for _, b := range h.Data {
		l.buckets[[2]float64{b.Start, b.End}] += b.Count
	}
}

// percentileMs is the p-th percentile in milliseconds, interpolated within its bucket as
// fortio does (the first bucket starts at the minimum, the last ends at the maximum).
func (l *latency) percentileMs(p float64) float64 {
	if l.count == 0 {
		return 0
	}
	keys := make([][2]float64, 0, len(l.buckets))
	for k := range l.buckets {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [2]float64) int { return cmp.Compare(a[0], b[0]) })
	var before float64 // requests in the buckets before this one
	for i, k := range keys {
		n := l.buckets[k]
		if (before+n)/l.count*100 < p && i < len(keys)-1 {
			before += n
			continue
		}
		lo, hi := k[0], k[1]
		if i == 0 {
			lo = l.min
		}
		if i == len(keys)-1 {
			hi = l.max
		}
		frac := (p/100*l.count - before) / n
		return (lo + (hi-lo)*min(max(frac, 0), 1)) * 1000
	}
	return l.max * 1000
}

func TestLatencyPercentiles(t *testing.T) {
	type bucket = struct{ Start, End, Count float64 }
	one := fortioHistogram{Count: 100, Min: 0.0005, Max: 0.004, Data: []bucket{{0.0005, 0.001, 50}, {0.001, 0.002, 40}, {0.002, 0.004, 10}}}
	other := fortioHistogram{Count: 100, Min: 0.0008, Max: 0.009, Data: []bucket{{0.0005, 0.001, 90}, {0.008, 0.009, 10}}}
	var single, pooled, empty latency
	single.add(one)
	pooled.add(one)
	pooled.add(other)
	for _, tc := range []struct {
		name string
		l    *latency
		p    float64
		want float64 // ms
	}{
		{"median at a bucket edge", &single, 50, 1},
		{"p90 at a bucket edge", &single, 90, 2},
		{"p99 inside the last bucket, which ends at the maximum", &single, 99, 2 + 2*0.9},
		{"p0 is the minimum", &single, 0, 0.5},
		{"pooled median: 140 of 200 in the first bucket", &pooled, 50, 0.5 + 0.5*100/140},
		{"pooled p99 in the slowest run's bucket", &pooled, 99, 8 + 1*0.8},
		{"no requests", &empty, 99, 0},
	} {
		if got := tc.l.percentileMs(tc.p); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("%s: p%v = %v ms, want %v", tc.name, tc.p, got, tc.want)
		}
	}
}

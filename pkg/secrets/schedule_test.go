package secrets

import (
	"testing"
	"time"
)

func TestRotateAt(t *testing.T) {
	nb := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		life   time.Duration
		jitter float64
		want   time.Duration // after nb
	}{
		{"half life without jitter", 24 * time.Hour, 0, 12 * time.Hour},
		{"jitter adds up to a tenth", 24 * time.Hour, 0.5, 12*time.Hour + 72*time.Minute},
		{"largest jitter", 10 * time.Second, 0.999999, 5*time.Second + 999999*time.Microsecond},
		{"out-of-range jitter capped at three quarters", 4 * time.Second, 10, 3 * time.Second},
		{"short lifetime", 2 * time.Second, 0, time.Second},
		{"empty lifetime", 0, 0.5, 0},
		{"inverted validity", -time.Hour, 0.5, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := rotateAt(nb, nb.Add(tt.life), tt.jitter)
			if want := nb.Add(tt.want); !got.Equal(want) {
				t.Errorf("rotateAt = nb+%s, want nb+%s", got.Sub(nb), tt.want)
			}
		})
	}
}

func TestRotateAtBounds(t *testing.T) {
	nb := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, life := range []time.Duration{3 * time.Second, time.Hour, 90 * 24 * time.Hour} {
		for j := 0.0; j < 1; j += 0.01 {
			got := rotateAt(nb, nb.Add(life), j).Sub(nb)
			if got < life/2 || got > life*3/4 || got > life/2+life/10 {
				t.Fatalf("life %s jitter %.2f: rotate after %s, want within [1/2, 6/10] of the lifetime", life, j, got)
			}
		}
	}
}

func TestBackoff(t *testing.T) {
	const lo, hi = time.Second, time.Minute
	tests := []struct {
		name     string
		failures int
		jitter   float64
		want     time.Duration
	}{
		{"first failure, least jitter", 1, 0, 500 * time.Millisecond},
		{"first failure, most jitter", 1, 0.999999999, time.Second - time.Nanosecond},
		{"second failure doubles", 2, 0, time.Second},
		{"third failure", 3, 0.5, 3 * time.Second},
		{"capped at max", 7, 0, 30 * time.Second},
		{"capped far beyond", 1000, 0.999999999, time.Minute - 30*time.Nanosecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := backoff(tt.failures, lo, hi, tt.jitter)
			if diff := got - tt.want; diff < -time.Microsecond || diff > time.Microsecond {
				t.Errorf("backoff(%d, jitter %v) = %s, want %s", tt.failures, tt.jitter, got, tt.want)
			}
		})
	}
}

func TestUsableFrom(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		notBefore time.Time
		want      time.Time
	}{
		{"backdated by the CA", now.Add(-time.Minute), now},
		{"issued now", now, now},
		{"starts later (CA clock ahead)", now.Add(time.Second), now.Add(time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := usableFrom(tt.notBefore, now); !got.Equal(tt.want) {
				t.Errorf("usableFrom = %s, want %s", got, tt.want)
			}
		})
	}
}

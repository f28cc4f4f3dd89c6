package secrets

import "time"

// rotateAt returns when a certificate usable from start to notAfter should be renewed: at
// half that lifetime plus jitter*10% of it (jitter in [0,1)), and never later than three
// quarters of it.
func rotateAt(start, notAfter time.Time, jitter float64) time.Time {
	life := notAfter.Sub(start)
	if life <= 0 {
		return start
	}
	d := life/2 + time.Duration(jitter*float64(life/10))
	return start.Add(min(d, life*3/4))
}

// usableFrom is when the lifetime of a certificate received at now starts for rotation:
// its NotBefore, unless the CA backdated that (Istio's CA backdates to tolerate clock skew
// between nodes), in which case now. Counting from a backdated NotBefore would make a
// short-lived certificate due for rotation on arrival.
func usableFrom(notBefore, now time.Time) time.Time {
	if now.After(notBefore) {
		return now
	}
	return notBefore
}

// backoff returns the wait before attempt failures+1 after failures consecutive failures
// (failures >= 1): min doubled per failure, capped at max, then scaled into [1/2, 1] of
// that by jitter in [0,1).
func backoff(failures int, minD, maxD time.Duration, jitter float64) time.Duration {
	d := minD
	for i := 1; i < failures && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	return d/2 + time.Duration(jitter*float64(d/2))
}

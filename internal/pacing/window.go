package pacing

import (
	"math"
	"slices"
	"time"
)

// window is an exact sliding-window limit: at most n calls in any span of
// span. It keeps the turns it handed out, sorted, from one span ago on. A
// path's window hands turns out in order (FIFO); the global window is booked
// out of order (a path's queue or penalty books turns ahead of other paths'),
// so it finds the earliest turn that keeps every span within the limit.
type window struct {
	times []time.Time // turns handed out, sorted
	n     int         // calls allowed per span, <= maxRing
	span  time.Duration
	fifo  bool      // turns never decrease
	last  time.Time // the latest turn handed out
}

func newWindow(rate float64, fifo bool) *window {
	w := &window{fifo: fifo}
	w.setRate(rate)
	return w
}

// newWindowN returns a window of exactly n calls per span (robots' 20 a
// minute, a learned per-minute budget): no margin.
func newWindowN(n int, span time.Duration) *window {
	return &window{n: max(1, min(n, maxRing)), span: span, fifo: true}
}

// setRate makes the window allow rate·margin calls per second.
func (w *window) setRate(rate float64) {
	w.set(rate, false)
}

// setEven makes the window allow rate·margin calls per second, one call
// every 1/(rate·margin) seconds: a path whose rate was learned from a
// throttle runs at the edge of what DingTalk allows, where a burst is what
// gets throttled, and a fractional rate (4.5 a second) must not round down
// to whole calls per second.
func (w *window) setEven(rate float64) {
	w.set(rate, true)
}

func (w *window) set(rate float64, even bool) {
	per := rate * margin
	n := int(math.Floor(per))
	span := time.Second
	switch {
	case n < 1 || even && n <= maxRing: // one call per 1/per seconds
		n, span = 1, time.Duration(float64(time.Second)/per)
	case n > maxRing: // k spans a second, so any second holds at most k·n <= per
		k := int(math.Ceil(per / maxRing))
		n = int(math.Floor(per / float64(k)))
		span = (time.Second + time.Duration(k) - 1) / time.Duration(k)
	}
	w.n, w.span = n, span
}

// next is the earliest turn at or after t this window allows: one that no
// span holds together with n turns already handed out.
func (w *window) next(t time.Time) time.Time {
	if w.fifo && w.last.After(t) {
		t = w.last
	}
	for {
		// Every n consecutive turns that fit in one span with t push t to a
		// span after the first of them.
		from := t.Add(-w.span)
		lo, _ := slices.BinarySearchFunc(w.times, from, func(x, f time.Time) int {
			if x.After(f) {
				return 1
			}
			return -1
		})
		free := t
		for i := lo; i+w.n-1 < len(w.times); i++ {
			first, last := w.times[i], w.times[i+w.n-1]
			if last.Sub(t) >= w.span {
				break
			}
			if last.Before(t) {
				last = t
			}
			if first.After(t) {
				first = t
			}
			if last.Sub(first) < w.span {
				free = w.times[i].Add(w.span)
			}
		}
		if !free.After(t) {
			return t
		}
		t = free
	}
}

// take books turn t; turns before now-span no longer matter and are dropped.
func (w *window) take(t, now time.Time) {
	old := 0
	for old < len(w.times) && !w.times[old].After(now.Add(-w.span)) {
		old++
	}
	w.times = w.times[old:]
	if len(w.times) == 0 || !t.Before(w.times[len(w.times)-1]) {
		w.times = append(w.times, t) // in order: always so on a path
	} else {
		i, _ := slices.BinarySearchFunc(w.times, t, func(x, t time.Time) int {
			if x.After(t) {
				return 1
			}
			return -1
		})
		w.times = slices.Insert(w.times, i, t)
	}
	if t.After(w.last) {
		w.last = t
	}
}

// release gives back turn t, booked but not used.
func (w *window) release(t time.Time) {
	i, ok := slices.BinarySearchFunc(w.times, t, time.Time.Compare)
	if ok {
		w.times = slices.Delete(w.times, i, i+1)
	}
}

// dropAfter forgets the turns booked after now (their callers book again).
func (w *window) dropAfter(now time.Time) {
	i, _ := slices.BinarySearchFunc(w.times, now, func(x, t time.Time) int {
		if x.After(t) {
			return 1
		}
		return -1
	})
	w.times = w.times[:i]
	if w.last.After(now) {
		w.last = now
	}
}

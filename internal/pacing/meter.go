package pacing

import "time"

// meter counts events over the last len(counts)·bucket, in fixed buckets:
// constant memory and constant time per event, however high the rate.
type meter struct {
	counts []uint32
	bucket time.Duration
	head   int64 // the newest bucket's index (time / bucket)
	first  int64 // the first event's bucket; 0: none yet
}

// newMeter counts over n buckets of d.
func newMeter(n int, d time.Duration) meter { return meter{counts: make([]uint32, n), bucket: d} }

// advance moves the meter to now, emptying the buckets that fell out.
func (m *meter) advance(now time.Time) int64 {
	idx := now.UnixNano() / int64(m.bucket)
	n := int64(len(m.counts))
	if gap := idx - m.head; gap > 0 {
		for i := int64(1); i <= min(gap, n); i++ {
			m.counts[(m.head+i)%n] = 0
		}
		m.head = idx
	}
	return idx
}

func (m *meter) add(now time.Time) {
	idx := m.advance(now)
	if m.first == 0 {
		m.first = idx
	}
	m.counts[idx%int64(len(m.counts))]++
}

// count is the events in the meter's span up to now, and the span they were
// counted over: the buckets since the first event, if fewer than the
// meter's, but at least least.
func (m *meter) count(now time.Time, least time.Duration) (uint32, time.Duration) {
	if m.first == 0 {
		return 0, least
	}
	idx := m.advance(now)
	var n uint32
	for _, c := range m.counts {
		n += c
	}
	buckets := min(idx-m.first+1, int64(len(m.counts)))
	over := max(time.Duration(buckets)*m.bucket, least)
	return n, over
}

// since is the events per second over the meter's span, counting only the
// buckets from t on (but at least a second's), and how many events that is.
func (m *meter) since(now, t time.Time) (perSecond float64, n uint32) {
	if m.first == 0 {
		return 0, 0
	}
	idx := m.advance(now)
	from := max(m.first, idx-int64(len(m.counts))+1)
	if !t.IsZero() {
		from = max(from, t.UnixNano()/int64(m.bucket))
	}
	for i := from; i <= idx; i++ {
		n += m.counts[i%int64(len(m.counts))]
	}
	over := max(time.Duration(idx-from+1)*m.bucket, time.Second)
	return float64(n) / over.Seconds(), n
}

// countFrom is the events counted in the buckets from t's on (t within the
// meter's span).
func (m *meter) countFrom(now, t time.Time) uint32 {
	if m.first == 0 {
		return 0
	}
	idx := m.advance(now)
	from := max(m.first, idx-int64(len(m.counts))+1, t.UnixNano()/int64(m.bucket))
	var n uint32
	for i := from; i <= idx; i++ {
		n += m.counts[i%int64(len(m.counts))]
	}
	return n
}

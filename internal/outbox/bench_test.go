package outbox

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkPut: Puts of a robot alert (about 600 bytes kept) with real
// fsync on a real temporary directory, one caller at a time (serial) and
// from 64 callers at once (parallel: group commit). It reports sends a
// second, the commits (one write and fsync each) per send, and the time in
// commits per send: what fsync costs each send.
//
//	go test -run '^$' -bench BenchmarkPut -benchmem ./internal/outbox
func BenchmarkPut(b *testing.B) {
	report := func(b *testing.B, s *Store, start time.Time) {
		el := time.Since(start)
		n := s.committed.Load()
		if n == 0 {
			return
		}
		b.ReportMetric(float64(b.N)/el.Seconds(), "sends/s")
		b.ReportMetric(float64(s.commits.Load())/float64(n), "commits/send")
		b.ReportMetric(float64(s.commitNanos.Load())/float64(n)/1e3, "commit-µs/send")
	}
	b.Run("serial", func(b *testing.B) {
		s, _ := newStore(b)
		sd := robotSend("robot:bench", 1)
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		for b.Loop() {
			c := *sd
			if _, err := s.Put(context.Background(), &c); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		report(b, s, start)
	})
	b.Run("parallel", func(b *testing.B) {
		s, _ := newStore(b)
		var q atomic.Int64
		b.ReportAllocs()
		b.SetParallelism(32) // 32 callers per core: a burst of deferred sends
		b.ResetTimer()
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			sd := robotSend(fmt.Sprint("robot:", q.Add(1)%8), 1)
			for pb.Next() {
				c := *sd
				if _, err := s.Put(context.Background(), &c); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.StopTimer()
		report(b, s, start)
	})
}

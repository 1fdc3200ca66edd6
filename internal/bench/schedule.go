package bench

import (
	"context"
	"sync"
	"time"
)

// Schedule is an open-loop arrival schedule: call i is due at
// begin + i/Rate, whatever became of the calls before it. A call is never
// skipped: one due while the loop was held up starts at once, late.
type Schedule struct {
	Rate  float64 // calls per second
	Calls int
	// MaxInFlight bounds the calls running at once; 0 means no bound.
	// Set it above what the load keeps in flight, so that it never bends
	// the schedule.
	MaxInFlight int
	// Before, if set, runs on the arrival loop just before call i starts,
	// since the schedule began (fault changes, token revocations,
	// snapshots of the fake's counters).
	Before func(i int, since time.Duration)
}

// Timing is how a schedule ran.
type Timing struct {
	Begin   time.Time
	Elapsed time.Duration // from Begin to the end of the last call
	Started int           // calls started (all, unless ctx ended first)
	Late    int           // calls started more than 1 ms after they were due
}

// Run starts job(i, due) in a goroutine of its own for each call, on
// schedule, and waits for them all. If ctx ends first, it waits for the
// calls started and returns ctx's error.
func (s Schedule) Run(ctx context.Context, job func(i int, due time.Time)) (Timing, error) {
	interval := time.Duration(float64(time.Second) / s.Rate)
	var sem chan struct{}
	if s.MaxInFlight > 0 {
		sem = make(chan struct{}, s.MaxInFlight)
	}
	var wg sync.WaitGroup
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	t := Timing{Begin: time.Now()}
	finish := func(err error) (Timing, error) {
		wg.Wait()
		t.Elapsed = time.Since(t.Begin)
		if err == nil {
			err = ctx.Err()
		}
		return t, err
	}
	for i := 0; i < s.Calls; i++ {
		// An absolute schedule: the rate holds even when this loop is
		// scheduled late (a Ticker would drop the missed ticks).
		due := t.Begin.Add(time.Duration(i) * interval)
		if w := time.Until(due); w > 0 {
			timer.Reset(w)
			select {
			case <-ctx.Done():
				return finish(ctx.Err())
			case <-timer.C:
			}
		}
		if s.Before != nil {
			s.Before(i, time.Since(t.Begin))
		}
		if sem != nil {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return finish(ctx.Err())
			}
		}
		if time.Since(due) > time.Millisecond {
			t.Late++
		}
		t.Started++
		wg.Add(1)
		go func() {
			defer wg.Done()
			if sem != nil {
				defer func() { <-sem }()
			}
			job(i, due)
		}()
	}
	return finish(nil)
}

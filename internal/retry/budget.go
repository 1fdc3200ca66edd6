package retry

import (
	"sync"
	"time"
)

// budgetWindow is how far back the budget looks, in one-second buckets, as
// Linkerd's and Finagle's retry budgets do.
const budgetWindow = 10

// Budget caps retries at Ratio of the requests seen in the last ten seconds
// plus MinPerSecond per second, so that when everything fails the upstream
// sees at most about (1+Ratio) times the client's calls. The minimum is a
// steady allowance (a bucket holding at most one second's worth), not a
// ten-second reserve: a fresh outage cannot triple the load before the ratio
// has anything to go on. The zero Budget, and a nil *Budget, allow every
// retry.
//
// A retry that gets a definitive answer is refunded: the budget caps wasted
// retries, not useful ones. In an outage no retry is refunded and the cap
// holds; under scattered transient faults most retries succeed and cost
// nothing, so the faults do not exhaust the budget.
type Budget struct {
	mu      sync.Mutex
	ratio   float64
	minRate float64
	buckets [budgetWindow]budgetBucket
	enabled bool
	// floor is the minimum's credit in retries; it refills at minRate per
	// second up to max(1, minRate).
	floor     float64
	floorTime time.Time
}

type budgetBucket struct {
	sec           int64
	reqs, retries float64
}

// Refund gives back one retry that got a definitive answer.
func (b *Budget) Refund() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.bucket(time.Now())
	if cur.retries >= 1 {
		cur.retries--
		return
	}
	b.floor = min(floorCap(b.minRate), b.floor+1)
}

// NewBudget returns a budget allowing ratio retries per request plus
// minPerSecond retries per second.
func NewBudget(ratio, minPerSecond float64) *Budget {
	b := &Budget{}
	b.Set(ratio, minPerSecond)
	return b
}

// Set changes the budget's limits, keeping what it has counted.
func (b *Budget) Set(ratio, minPerSecond float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.enabled || minPerSecond != b.minRate {
		b.floor, b.floorTime = floorCap(minPerSecond), time.Now()
	}
	b.ratio, b.minRate, b.enabled = ratio, minPerSecond, true
}

// MaxRetries is the most retries a Budget with these limits allows over a
// run of length d in which requests first attempts were made and none was
// refunded (an outage): ratio of the requests, plus minPerSecond for each
// second (counting the second under way), plus the allowance it starts
// with.
func MaxRetries(ratio, minPerSecond float64, requests int, d time.Duration) float64 {
	return ratio*float64(requests) + minPerSecond*(d.Seconds()+1) + floorCap(minPerSecond)
}

func floorCap(minRate float64) float64 {
	if minRate <= 0 {
		return 0
	}
	return max(1, minRate)
}

func (b *Budget) bucket(now time.Time) *budgetBucket {
	sec := now.Unix()
	bk := &b.buckets[sec%budgetWindow]
	if bk.sec != sec {
		*bk = budgetBucket{sec: sec}
	}
	return bk
}

// Request counts a client request (a first attempt).
func (b *Budget) Request() {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.bucket(time.Now()).reqs++
	b.mu.Unlock()
}

// Retry reports whether one more retry fits the budget, and counts it if so.
func (b *Budget) Retry() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.enabled {
		return true
	}
	now := time.Now()
	cur := b.bucket(now)
	oldest := now.Unix() - budgetWindow + 1
	var reqs, retries float64
	for _, bk := range b.buckets {
		if bk.sec >= oldest {
			reqs += bk.reqs
			retries += bk.retries
		}
	}
	if retries+1 <= b.ratio*reqs {
		cur.retries++
		return true
	}
	if elapsed := now.Sub(b.floorTime); elapsed > 0 {
		b.floor = min(floorCap(b.minRate), b.floor+b.minRate*elapsed.Seconds())
	}
	b.floorTime = now
	if b.floor >= 1 {
		b.floor--
		return true
	}
	return false
}

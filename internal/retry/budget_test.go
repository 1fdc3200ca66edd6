package retry_test

import (
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dingproxy/dingproxy/internal/retry"
)

// allowed counts how many of tries retries b allows now.
func allowed(b *retry.Budget, tries int) int {
	n := 0
	for range tries {
		if b.Retry() {
			n++
		}
	}
	return n
}

func requests(b *retry.Budget, n int) {
	for range n {
		b.Request()
	}
}

func TestBudget(t *testing.T) {
	tests := []struct {
		name  string
		ratio float64
		min   float64
		reqs  int
		want  int
	}{
		{"ratio of requests", 0.2, 0, 100, 20},
		{"no requests, no minimum", 0.2, 0, 0, 0},
		{"minimum: one second's worth at once", 0, 5, 0, 5},
		{"ratio plus minimum", 0.2, 5, 100, 25},
		{"ratio of few requests", 0.5, 0, 3, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				b := retry.NewBudget(tt.ratio, tt.min)
				requests(b, tt.reqs)
				if got := allowed(b, tt.want+30); got != tt.want {
					t.Errorf("NewBudget(%v, %v) after %d requests allowed %d retries, want %d", tt.ratio, tt.min, tt.reqs, got, tt.want)
				}
				// Spread over the window, the same holds.
				b = retry.NewBudget(tt.ratio, tt.min)
				for i := range tt.reqs {
					b.Request()
					if i%10 == 9 {
						time.Sleep(time.Second / 2)
					}
				}
				if got := allowed(b, tt.want+30); got != tt.want {
					t.Errorf("NewBudget(%v, %v) after %d requests over 5 s allowed %d retries, want %d", tt.ratio, tt.min, tt.reqs, got, tt.want)
				}
			})
		})
	}
}

// TestBudgetWindow: requests and retries count for ten seconds, then age out.
func TestBudgetWindow(t *testing.T) {
	t.Run("requests age out", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := retry.NewBudget(0.2, 0)
			requests(b, 100)
			time.Sleep(10*time.Second - time.Millisecond)
			if !b.Retry() {
				t.Fatal("Retry refused 10s-1ms after 100 requests, want allowed")
			}
			time.Sleep(time.Millisecond)
			if b.Retry() {
				t.Error("Retry allowed 10s after the last request, want refused")
			}
		})
	})
	t.Run("a bucket left unused ages out", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := retry.NewBudget(0.2, 0)
			requests(b, 100)
			// 15 s on, the current bucket is not the one the requests
			// filled: that one must be left out by its age.
			time.Sleep(15 * time.Second)
			if b.Retry() {
				t.Error("Retry allowed 15s after the last request, want refused")
			}
		})
	})
	t.Run("retries age out", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := retry.NewBudget(0.5, 0)
			requests(b, 20) // 10 retries in the window
			if got := allowed(b, 20); got != 10 {
				t.Fatalf("allowed %d retries, want 10", got)
			}
			time.Sleep(5 * time.Second)
			requests(b, 20) // 20 more in the window, 10 used: 10 more
			if got := allowed(b, 20); got != 10 {
				t.Fatalf("5s later allowed %d retries, want 10", got)
			}
			time.Sleep(5 * time.Second)
			// t=10: the first 20 requests and 10 retries are gone.
			if got := allowed(b, 20); got != 0 {
				t.Errorf("10s later allowed %d retries, want 0 (20 requests, 10 retries left in the window)", got)
			}
		})
	})
	t.Run("the minimum refills each second", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := retry.NewBudget(0, 2)
			if got := allowed(b, 20); got != 2 {
				t.Fatalf("allowed %d retries, want 2", got)
			}
			time.Sleep(time.Second / 2)
			if got := allowed(b, 20); got != 1 {
				t.Fatalf("0.5 s later allowed %d retries, want 1", got)
			}
			time.Sleep(10 * time.Second)
			if got := allowed(b, 20); got != 2 {
				t.Errorf("10 s later allowed %d retries, want 2: the minimum does not pile up", got)
			}
		})
	})
	t.Run("a sliding window", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := retry.NewBudget(1, 0)
			requests(b, 5) // t=0
			time.Sleep(5 * time.Second)
			requests(b, 3) // t=5
			time.Sleep(5 * time.Second)
			// t=10: the first 5 are gone, the 3 remain.
			if got := allowed(b, 10); got != 3 {
				t.Errorf("allowed %d retries, want 3", got)
			}
		})
	})
}

func TestBudgetNilAndZero(t *testing.T) {
	var nilBudget *retry.Budget
	nilBudget.Request()
	if got := allowed(nilBudget, 1000); got != 1000 {
		t.Errorf("nil *Budget allowed %d of 1000 retries, want all", got)
	}
	var zero retry.Budget
	zero.Request()
	if got := allowed(&zero, 1000); got != 1000 {
		t.Errorf("zero Budget allowed %d of 1000 retries, want all", got)
	}
}

func TestBudgetSet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := retry.NewBudget(0, 0)
		requests(b, 10)
		if b.Retry() {
			t.Fatal("NewBudget(0, 0) allowed a retry")
		}
		b.Set(0.5, 0) // the 10 requests counted still count
		if got := allowed(b, 20); got != 5 {
			t.Errorf("after Set(0.5, 0) allowed %d retries, want 5", got)
		}
		b.Set(0.5, 1) // the ratio's 5 are used; the minimum gives 1 a second
		if got := allowed(b, 30); got != 1 {
			t.Errorf("after Set(0.5, 1) allowed %d more retries, want 1", got)
		}
		b.Set(0, 0)
		if b.Retry() {
			t.Error("after Set(0, 0) a retry was allowed")
		}
		var zero retry.Budget
		zero.Set(0, 0)
		if zero.Retry() {
			t.Error("a zero Budget after Set(0, 0) allowed a retry")
		}
	})
}

// TestBudgetInTheLoop: the transport counts each request and asks before
// each retry; a refused retry returns the last answer and sets
// Call.BudgetExhausted.
func TestBudgetInTheLoop(t *testing.T) {
	tests := []struct {
		name          string
		budget        *retry.Budget
		warm          int // requests before, each fully failing
		wantAttempts  int
		wantExhausted bool
	}{
		{"nil budget", nil, 0, 3, false},
		{"empty budget", retry.NewBudget(0, 0), 0, 1, true},
		{"budget of one retry", retry.NewBudget(0, 0.1), 0, 2, true},
		// Two earlier failing requests used the one retry ratio 0.5 gave
		// them; with the third, 1.5 retries fit: not a second one.
		{"ratio shared by requests", retry.NewBudget(0.5, 0), 2, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var up upstream
				tr := newTestTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
					wroteHeaders(req)
					resp, _ := jsonAnswer(req, 502, `{}`)
					return resp, nil
				}))
				tr.Budget = tt.budget
				for range tt.warm {
					resp, err := do(tr, newRequest(t, t.Context(), http.MethodGet, newCall(true), nil))
					if err != nil {
						t.Fatal(err)
					}
					readAll(t, resp)
				}
				tc := newCall(true)
				resp, err := do(tr, newRequest(t, t.Context(), http.MethodGet, tc, nil))
				if err != nil {
					t.Fatalf("RoundTrip: %v", err)
				}
				if resp.StatusCode != 502 {
					t.Errorf("status = %d, want the last answer's 502", resp.StatusCode)
				}
				readAll(t, resp)
				if tc.Attempts != tt.wantAttempts || tc.BudgetExhausted != tt.wantExhausted {
					t.Errorf("Attempts = %d, BudgetExhausted = %v, want %d, %v", tc.Attempts, tc.BudgetExhausted, tt.wantAttempts, tt.wantExhausted)
				}
			})
		})
	}
}

// TestBudgetRefund: a retry that got a definitive answer is given back, so
// scattered transient faults do not exhaust the budget, while failed retries
// (an outage) still do.
func TestBudgetRefund(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := retry.NewBudget(0.5, 0)
		requests(b, 2) // one retry
		if !b.Retry() || b.Retry() {
			t.Fatal("want exactly one retry before the refund")
		}
		b.Refund()
		if !b.Retry() {
			t.Error("a refunded retry was not available again")
		}
		if b.Retry() {
			t.Error("a refund gave more than one retry back")
		}
	})
	t.Run("in the loop", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var up upstream
			// Every call fails once, then succeeds: each retry is refunded.
			tr := newTestTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
				wroteHeaders(req)
				if n%2 == 1 {
					resp, _ := jsonAnswer(req, 502, `{}`)
					return resp, nil
				}
				return ok(req)
			}))
			tr.Budget = retry.NewBudget(0, 1) // one retry a second, unless refunded
			for i := range 20 {
				tc := newCall(true)
				resp, err := do(tr, newRequest(t, t.Context(), http.MethodGet, tc, nil))
				if err != nil {
					t.Fatal(err)
				}
				readAll(t, resp)
				if tc.Attempts != 2 || tc.BudgetExhausted {
					t.Fatalf("call %d: attempts %d, exhausted %v; want a retry every time", i, tc.Attempts, tc.BudgetExhausted)
				}
			}
		})
	})
}

// TestMaxRetries: in an outage (100 requests a second, every one retried
// as often as allowed, nothing refunded) the retries a Budget allows over
// a run stay within MaxRetries, and come close to it.
func TestMaxRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ratio, minRate = 0.2, 5.0
		b := retry.NewBudget(ratio, minRate)
		start := time.Now()
		reqs, retries := 0, 0
		for range 500 {
			b.Request()
			reqs++
			retries += allowed(b, 3)
			time.Sleep(10 * time.Millisecond)
		}
		most := retry.MaxRetries(ratio, minRate, reqs, time.Since(start))
		if float64(retries) > most || float64(retries) < 0.9*most-float64(minRate) {
			t.Errorf("%d requests over %v: %d retries allowed, MaxRetries %.1f", reqs, time.Since(start), retries, most)
		}
	})
}

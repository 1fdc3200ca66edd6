package bench

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The schedule is open loop: calls start on time however long the ones
// before them take, and the bound on calls in flight holds. In a synctest
// bubble, so the clock is exact.
func TestScheduleOpenLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var starts []time.Duration
		var inflight, most int
		var befores []int
		begin := time.Now()
		s := Schedule{Rate: 10, Calls: 20, MaxInFlight: 15, Before: func(i int, _ time.Duration) { befores = append(befores, i) }}
		tm, err := s.Run(context.Background(), func(i int, due time.Time) {
			mu.Lock()
			starts = append(starts, time.Since(begin))
			inflight++
			most = max(most, inflight)
			mu.Unlock()
			time.Sleep(950 * time.Millisecond) // nine and a half arrivals' worth
			mu.Lock()
			inflight--
			mu.Unlock()
		})
		if err != nil || tm.Started != 20 || tm.Late != 0 || len(befores) != 20 {
			t.Fatalf("err %v, started %d, late %d, befores %d", err, tm.Started, tm.Late, len(befores))
		}
		for i, st := range starts {
			if want := time.Duration(i) * 100 * time.Millisecond; st != want {
				t.Errorf("call %d started at %v, want %v", i, st, want)
			}
		}
		if most != 10 || tm.Elapsed != 2850*time.Millisecond {
			t.Errorf("at most %d in flight (want 10), elapsed %v (want 2.85s)", most, tm.Elapsed)
		}
		// A bound below what the load keeps in flight holds, and makes
		// calls late.
		s = Schedule{Rate: 10, Calls: 6, MaxInFlight: 2}
		inflight, most = 0, 0
		tm, _ = s.Run(context.Background(), func(int, time.Time) {
			mu.Lock()
			inflight++
			most = max(most, inflight)
			mu.Unlock()
			time.Sleep(time.Second)
			mu.Lock()
			inflight--
			mu.Unlock()
		})
		if most != 2 || tm.Late != 4 {
			t.Errorf("bound 2: at most %d in flight, %d late; want 2 and 4", most, tm.Late)
		}
		// A context that ends stops the arrivals and waits for the calls.
		ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
		defer cancel()
		tm, err = Schedule{Rate: 10, Calls: 100}.Run(ctx, func(int, time.Time) { time.Sleep(time.Second) })
		if err != context.DeadlineExceeded || tm.Started != 3 || tm.Elapsed != 1200*time.Millisecond {
			t.Errorf("cancelled: err %v, started %d, elapsed %v; want deadline, 3, 1.2s", err, tm.Started, tm.Elapsed)
		}
	})
}

func TestPercentileAndTable(t *testing.T) {
	lat := []time.Duration{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	if got := Percentiles(lat, 0.5, 0.99, 0.1, 1); got[0] != 5 || got[1] != 10 || got[2] != 1 || got[3] != 10 {
		t.Errorf("percentiles %v", got)
	}
	if lat[0] != 5 || Percentile(nil, 0.5) != 0 || Ratio(1, 0) != 0 || Pct(1, 3) != "33.3%" {
		t.Error("Percentiles sorted its input, or a zero case is wrong")
	}
	if Dur(1520*time.Millisecond) != "1.52 s" || Dur(12100*time.Millisecond) != "12.1 s" || Dur(812300*time.Microsecond) != "812.3 ms" || Ms(1500*time.Microsecond, 3) != "1.500 ms" {
		t.Error("Dur or Ms")
	}
	tb := Table{Pad: 2, Widths: []int{6}}
	tb.Row("a", "1", "x")
	tb.Row("bb", "100", "yy")
	var buf bytes.Buffer
	tb.Print(&buf)
	if want := "  a         1   x\n  bb      100  yy\n"; buf.String() != want {
		t.Errorf("table:\n%q\nwant\n%q", buf.String(), want)
	}
}

// The three clients against the fake, a few calls each: what each counts
// (attempts, fallbacks, the fake's counters) does not depend on the
// machine's speed.
func TestClients(t *testing.T) {
	ctx := context.Background()
	busy := func(f *dingtalktest.Server) {
		f.Script(dingtalktest.PathUserGet, dingtalktest.SystemBusy())
		f.Script(dingtalktest.PathAsyncSend, dingtalktest.ResetAfterExec())
	}
	calls := func(i int) Request {
		if i == 0 {
			return Request{Method: http.MethodPost, Path: dingtalktest.PathUserGet, Body: []byte(`{"userid":"u1"}`)}
		}
		return Request{Method: http.MethodPost, Path: dingtalktest.PathAsyncSend, Send: true, Body: []byte(`{"agent_id":1,"userid_list":"u1","msg":{"msgtype":"text","text":{"content":"n"}}}`)}
	}
	for _, tc := range []struct {
		mode                   Mode
		okRead, okSend         bool
		upstream, dups, outAtt int
	}{
		{Direct, false, false, 2, 0, 2},
		{SDKRetry, true, true, 4, 1, 4},
		{Proxy, true, false, 3, 0, 3}, // the read retried; the send not repeated
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			c, err := Standard(tc.mode)
			if err != nil {
				t.Fatal(err)
			}
			// One call at a time (MaxInFlight 1): the read, then the send.
			r, err := Run(ctx, c, Load{Rate: 1000, Calls: 2, MaxInFlight: 1, Call: calls, Setup: busy})
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Outcomes) != 2 || r.Mode != tc.mode {
				t.Fatalf("%d outcomes, mode %q", len(r.Outcomes), r.Mode)
			}
			read, send := r.Outcomes[0], r.Outcomes[1]
			if read.OK != tc.okRead || send.OK != tc.okSend || !send.Req.Send || read.Fallback || send.Fallback {
				t.Errorf("read ok %v (%s), send ok %v (%s); want %v, %v", read.OK, read.Last, send.OK, send.Last, tc.okRead, tc.okSend)
			}
			if r.Upstream != tc.upstream || r.Duplicates != tc.dups || read.Attempts+send.Attempts != tc.outAtt {
				t.Errorf("upstream %d, duplicates %d, attempts counted by the calls %d; want %d, %d, %d",
					r.Upstream, r.Duplicates, read.Attempts+send.Attempts, tc.upstream, tc.dups, tc.outAtt)
			}
			if read.Latency <= 0 || send.End().Before(send.Start) || !strings.HasPrefix(read.Last, "200") && tc.okRead {
				t.Errorf("latency %v, last %q", read.Latency, read.Last)
			}
		})
	}
	if _, err := Standard("nope"); err == nil {
		t.Error("an unknown mode made a client")
	}
}

// A fleet opens its Via N times and spreads calls over the replicas by call
// number; a path with an access_token of its own (a custom robot) keeps it,
// and each outcome carries its status and fallback kind.
func TestFleetAndRobot(t *testing.T) {
	ctx := context.Background()
	fake := dingtalktest.New(dingtalktest.Options{RobotPerMinute: 1})
	if err := fake.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	hc := HTTPClient(5*time.Second, 8, 0)
	defer hc.CloseIdleConnections()
	for _, via := range []Via{Straight{}, ThroughProxy{}} {
		c, err := Open(ctx, Client{Mode: "fleet", Via: Fleet{N: 3, Of: via}}, fake, hc)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(c.ep.Bases); n != 3 {
			t.Errorf("%T: a fleet of 3 has %d bases", via, n)
		}
		if _, proxied := via.(ThroughProxy); proxied && (c.ep.Bases[0] == c.ep.Bases[1] || c.ep.Bases[1] == c.ep.Bases[2]) {
			t.Errorf("a fleet of dingproxies shares one: %v", c.ep.Bases)
		}
		for i := range 3 {
			read := Request{Method: http.MethodPost, Path: dingtalktest.PathUserGet, Body: []byte(`{"userid":"u1"}`)}
			if o := c.Do(ctx, i, read); !o.OK || o.Status != http.StatusOK || o.FallbackKind != "" {
				t.Errorf("%T: replica %d: ok %v, status %d, fallback %q: %s", via, i, o.OK, o.Status, o.FallbackKind, o.Last)
			}
		}
		c.Close()
	}
	if _, err := (Fleet{N: 0, Of: Straight{}}).Open(ctx, fake, hc); err == nil {
		t.Error("a fleet of 0 opened")
	}

	// A robot: its own token, not the app's (the fake answers a wrong
	// token 300001); past its 1 a minute the fake throttles it, and
	// dingproxy answers paced instead of sending.
	robot := Request{Method: http.MethodPost, Path: "/robot/send?access_token=" + dingtalktest.DefaultRobotToken + "-b", Send: true,
		Body: []byte(`{"msgtype":"text","text":{"content":"alert"}}`)}
	direct, err := Open(ctx, Client{Mode: Direct, Via: Straight{}}, fake, hc)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	if o := direct.Do(ctx, 0, robot); !o.OK {
		t.Errorf("a robot's alert straight: %s", o.Last)
	}
	if rq := fake.Requests("/robot/send"); len(rq) != 1 || strings.Count(rq[0].RawQuery, "access_token") != 1 {
		t.Errorf("the robot's query carried the app's token too: %v", rq)
	}
	if o := direct.Do(ctx, 1, robot); o.OK || fake.RobotThrottled() != 1 {
		t.Errorf("second alert straight: ok %v, robot throttled %d; want throttled", o.OK, fake.RobotThrottled())
	}
	robot.Path = "/robot/send?access_token=" + dingtalktest.DefaultRobotToken + "-c"
	px, err := Open(ctx, Client{Mode: Proxy, Via: ThroughProxy{}}, fake, hc)
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	if o := px.Do(ctx, 0, robot); !o.OK {
		t.Errorf("a robot's alert through dingproxy: %s", o.Last)
	}
	// dingproxy paces robots at its own robot_per_minute (20): the fake's
	// 1 throttles the second, and dingproxy blocks the robot from then on.
	px.Do(ctx, 1, robot)
	if o := px.Do(ctx, 2, robot); o.OK || o.Status != http.StatusTooManyRequests || o.FallbackKind != "paced" || !o.Fallback {
		t.Errorf("a blocked robot through dingproxy: ok %v, status %d, fallback %q: %s", o.OK, o.Status, o.FallbackKind, o.Last)
	}
}

package scenario

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/redistest"
)

func TestMain(m *testing.M) {
	ChildMain() // a dingproxy process of a scenario, when one is asked for
	goleak.VerifyTestMain(m)
}

// The table: valid rows with unique names, in groups, each with targets
// judging a client it runs.
func TestTable(t *testing.T) {
	seen := map[string]bool{}
	groups := []Group{GroupDemo, GroupFaults, GroupPacing, GroupFleet, GroupQuotaCache, GroupDeferred, GroupLoad}
	for _, s := range All {
		if seen[s.Name] {
			t.Errorf("two scenarios named %s", s.Name)
		}
		seen[s.Name] = true
		if err := s.validate(); err != nil {
			t.Error(err)
		}
		if !slices.Contains(groups, s.Group) {
			t.Errorf("%s: group %q", s.Name, s.Group)
		}
		if len(s.Targets) > 0 && !slices.Contains(s.Clients, s.judge()) {
			t.Errorf("%s: its targets judge %s, which it does not run", s.Name, s.judge())
		}
		for _, tg := range s.Targets {
			if tg.Figure == "" || tg.Want == "" || tg.Value == nil {
				t.Errorf("%s: target %+v", s.Name, tg)
			}
		}
	}
	if n := len(Of(GroupPacing, GroupFleet, GroupQuotaCache, GroupDeferred)); n != 16 {
		t.Errorf("%d scenarios with targets' groups, want 16", n)
	}
	for _, g := range groups {
		if len(Of(g)) == 0 {
			t.Errorf("group %s is empty", g)
		}
	}
	if _, ok := Find("nope"); ok {
		t.Error("found a scenario named nope")
	}
	bad := Must(Outages)
	bad.Faults.Chaos = Must(Transient).Faults.Chaos
	if bad.validate() == nil {
		t.Error("an outage with random faults was valid")
	}
	bad = Must(Demo)
	bad.Work.APIs = []Req{UserGet}
	if bad.validate() == nil {
		t.Error("a random mix of reads only was valid")
	}
}

// Every number a description gives comes from a field: change the field
// and the description follows.
func TestDescriptionsFollowFields(t *testing.T) {
	has := func(s Scenario, scale float64, want string) {
		t.Helper()
		if d := s.Describe(scale); !strings.Contains(d, want) {
			t.Errorf("%s: %q lacks %q", s.Name, d, want)
		}
	}
	for _, s := range All {
		if s.Describe(1) == "" {
			t.Errorf("%s: no description", s.Name)
		}
		c := s
		switch {
		case len(c.Rates) > 0:
			c.Rates = []float64{37, 74}
			has(c, 1, "37/s, then 74/s")
		case c.Calls > 0 && c.Duration > 0:
			c.Calls, c.Duration = 77, 13*time.Second
			has(c, 1, "77 ")
			has(c, 1, "13s")
		case c.Calls > 0:
			c.Calls, c.Rate = 77, 37
			has(c, 1, "77 ")
			has(c, 1, "37/s")
		default:
			c.Rate, c.Duration = 36, 13*time.Second
			has(c, 1, "36/s")
			has(c, 0.5, "6.5s")
		}
		c = s
		f := &c.Faults
		if f.QPSLimit > 0 {
			f.QPSLimit = 33
			has(c, 1, "33/s per API")
		}
		if f.RobotPerMinute > 0 {
			f.RobotPerMinute = 33
			has(c, 1, "33 a minute")
		}
		if f.MonthlyQuota > 0 {
			f.MonthlyQuota = 33
			has(c, 1, "quota is 33")
		}
		if len(f.Chaos.Faults) > 0 {
			f.Chaos.Faults = []dingtalktest.Weighted{{Fault: dingtalktest.Throttle(), P: 0.33}}
			has(c, 1, "33% of calls")
		}
		if f.Outage != nil {
			o := *f.Outage
			o.Status, o.For = 502, time.Second
			f.Outage = &o
			has(c, 1, "502 to every call for the first 1s")
		}
		if f.RevokeTokensEvery > 0 {
			f.RevokeTokensEvery = 1300 * time.Millisecond
			has(c, 1, "1.3s")
		}
		if f.Ban != nil {
			f.Ban = &Ban{At: 1300 * time.Millisecond, Wait: 33}
			has(c, 1, "at 1.3s (every answer the ban, for 33 s)")
		}
		if f.RedisDown != nil {
			f.RedisDown = &RedisDown{At: 1300 * time.Millisecond, Back: 3300 * time.Millisecond}
			has(c, 1, "at 1.3s, back empty at 3.3s")
		}
		if f.Refuse > 0 {
			f.Refuse = 1300 * time.Millisecond
			has(c, 1, "refuses connections for the first 1.3s")
			has(c, 2, "refuses connections for the first 2.6s")
		}
		if f.Kill != nil {
			k := *f.Kill
			k.After = 1300 * time.Millisecond
			f.Kill = &k
			has(c, 2, "SIGKILL 2.6s after the last answer")
		}
		if c.Tune.Merge {
			has(c, 1, "defer.merge")
		}
		if m := c.deferring(); m != "" {
			has(c, 1, fmt.Sprintf("%q with defer (max_age 1h) on %s", m, c.Work.APIs[0].API))
		}
		if c.Tune != (Tuning{}) {
			c.Tune = Tuning{PerAPIQPS: 33, OpenTimeout: 3 * time.Second, CachePath: "/x", CacheTTL: 3 * time.Second}
			has(c, 1, "pacing.per_api_qps 33, breaker.open_timeout 3s, a route on /x with cache 3s")
		}
		if c.Replicas > 1 {
			c.Replicas = 3
			has(c, 1, "3 ")
		}
	}
	// The targets' words follow the fields too.
	for _, tg := range Must(Robot).Targets {
		if strings.HasPrefix(tg.Figure, "first") && (tg.Figure != "first 20 delivered at once (< 1 s)" || tg.Want != "20 of 20") {
			t.Errorf("robot target %q, want %q", tg.Figure, tg.Want)
		}
	}
}

// The shared builders and the workloads made of them.
func TestWorkloads(t *testing.T) {
	r := UserGet.Request(53)
	if r.Method != http.MethodPost || r.Path != dingtalktest.PathUserGet || string(r.Body) != `{"userid":"u3"}` || r.Send {
		t.Errorf("UserGet: %+v", r)
	}
	if a, b := AsyncSend.Request(1), AsyncSend.Request(2); !a.Send || string(a.Body) == string(b.Body) {
		t.Errorf("two sends alike: %s, %s", a.Body, b.Body)
	}
	if a, b := Alert("").Request(0), Alerts(2)[1].Request(0); !a.Send || a.Path == b.Path || !strings.Contains(b.Path, "-r1") {
		t.Errorf("alerts: %s, %s", a.Path, b.Path)
	}
	// In turn, and each replica of a fleet taking the whole sequence.
	w := Workload{APIs: []Req{UserGet, AsyncSend, DeptListSub}}
	call := w.Calls(1, 4)
	for i, want := range []string{dingtalktest.PathUserGet, dingtalktest.PathAsyncSend, dingtalktest.PathDeptListSub, dingtalktest.PathUserGet} {
		if p := call(i).Path; p != want {
			t.Errorf("in turn: call %d to %s, want %s", i, p, want)
		}
	}
	w.PerReplica = true
	call = w.Calls(1, 4)
	for i := range 8 {
		if p, want := call(i).Path, w.APIs[i/4].API; p != want {
			t.Errorf("per replica: call %d to %s, want %s", i, p, want)
		}
	}
	// The demo's random mix: the same calls for every client, about its
	// share of sends, every API.
	demo := Must(Demo)
	a, b := demo.Work.Calls(1, 1), demo.Work.Calls(1, 1)
	sends, paths := 0, map[string]bool{}
	for i := range 2000 {
		x, y := a(i), b(i)
		if x.Path != y.Path || string(x.Body) != string(y.Body) {
			t.Fatalf("call %d differs between two clients: %s, %s", i, x.Path, y.Path)
		}
		if x.Send {
			sends++
		}
		paths[strings.SplitN(x.Path, "?", 2)[0]] = true
	}
	if share := float64(sends) / 2000; share < demo.Work.SendShare-0.05 || share > demo.Work.SendShare+0.05 {
		t.Errorf("%.2f sends, want about %.2f", share, demo.Work.SendShare)
	}
	if len(paths) < len(demo.Work.APIs) {
		t.Errorf("%d paths called of %d: %v", len(paths), len(demo.Work.APIs), paths)
	}
	// What the figures derive from the workload.
	if d := Must(Robot).Deliver(40); d != Must(Robot).Faults.RobotPerMinute {
		t.Errorf("robot: %d deliverable", d)
	}
	if d := Must(Robots).Deliver(50); d != 50 {
		t.Errorf("robots: %d deliverable, want all 50", d)
	}
	if Must(Fleet).Limit() == 0 || Must(Transient).Limit() != 0 || Must(Demo).Deliver(10) != 0 {
		t.Error("the limit of a one-API scenario, or none of several")
	}
	if n := Must(Tokens).revocations(1); n != 2 {
		t.Errorf("tokens: %d revocations, want 2", n)
	}
	if n := Must(SharedTokens).revocations(1); n != 1 {
		t.Errorf("shared-tokens: %d revocations, want 1", n)
	}
}

// One AttemptsPerCall: over the calls during an outage, else over all.
func TestAttemptsPerCall(t *testing.T) {
	r := Row{Calls: 100, UpstreamAttempts: 150, CallsDuring: 40, AttemptsDuring: 20}
	if got := r.AttemptsPerCall(); got != 1.5 {
		t.Errorf("no outage: %v", got)
	}
	r.Outage = true
	if got := r.AttemptsPerCall(); got != 0.5 {
		t.Errorf("outage: %v", got)
	}
}

// Check judges each scenario's client and leaves out the figures only shown.
func TestCheck(t *testing.T) {
	rows := []Row{
		{Scenario: SharedThrottle, Mode: bench.Proxy, Calls: 10, UpstreamAttempts: 10, Throttled: 5},
		{Scenario: SharedThrottle, Mode: ProxyShared, Calls: 10, UpstreamAttempts: 10},
		{Scenario: Cache, Mode: bench.Direct, Calls: 100, UpstreamAttempts: 100},
		{Scenario: Cache, Mode: bench.Proxy, Calls: 100, UpstreamAttempts: 3, CacheHits: 97},
	}
	var got []string
	for _, v := range Check(rows) {
		got = append(got, v.Scenario+" "+string(v.Row.Mode)+" "+v.Figure+" "+map[bool]string{true: "met", false: "missed"}[v.OK])
	}
	want := []string{
		"shared-throttle dingproxy shared throttled per 100 upstream attempts met",
		"cache dingproxy reads DingTalk saw of 100 identical missed",
		"cache dingproxy answers marked hit missed",
	}
	if !slices.Equal(got, want) {
		t.Errorf("verdicts:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// A real run against the fake: a plain client meets an outage that ends
// half-way. What it counts does not depend on the machine's speed: every
// call is counted once, as a read or a send, during the outage or after;
// a plain client makes one attempt a call; the calls started after the
// outage all succeed, and the first success comes after the recovery.
func TestRunCounts(t *testing.T) {
	sc := Scenario{Name: "test", Group: GroupFaults, Clients: []bench.Mode{bench.Direct},
		Work: Workload{APIs: []Req{UserGet, AsyncSend}}, Rate: 50, Duration: time.Second,
		Faults: Faults{Outage: &Outage{Status: http.StatusServiceUnavailable, For: 500 * time.Millisecond}}}
	var seen int
	r, err := Run(context.Background(), sc, bench.Direct, RunOptions{OnCall: func(bench.Outcome) { seen++ }})
	if err != nil {
		t.Fatal(err)
	}
	if r.Calls != 50 || seen != 50 || r.Reads != 25 || r.Sends != 25 || r.Reads+r.Sends != r.Calls {
		t.Errorf("%d calls (%d seen): %d reads, %d sends; want 50, 25 and 25", r.Calls, seen, r.Reads, r.Sends)
	}
	if !r.Outage || !r.Recovered || r.CallsDuring <= 0 || r.CallsDuring >= r.Calls || r.AttemptsDuring != r.CallsDuring {
		t.Errorf("outage: %d calls during, %d attempts, recovered %v", r.CallsDuring, r.AttemptsDuring, r.Recovered)
	}
	if r.OK < r.Calls-r.CallsDuring || r.Recovery < 0 || r.UpstreamAttempts != r.Calls || r.Fallbacks != 0 {
		t.Errorf("%d ok of %d after the outage, recovery %v, %d upstream attempts, %d fallbacks",
			r.OK, r.Calls-r.CallsDuring, r.Recovery, r.UpstreamAttempts, r.Fallbacks)
	}
	if got := r.AttemptsPerCall(); got != 1 {
		t.Errorf("a plain client: %.2f attempts per call during the outage", got)
	}
	sc.Faults.Chaos = Must(Transient).Faults.Chaos
	if _, err := Run(context.Background(), sc, bench.Direct, RunOptions{}); err == nil {
		t.Error("an invalid scenario ran")
	}
}

// A real run against the fake that refuses connections for its first
// half: a plain client sends each notice once; what DingTalk delivered is
// counted message by message, from when it listened again. The counts
// do not depend on the machine's speed: the notices sent while it
// refused are lost, the others delivered once each.
func TestRunCountsDeliveries(t *testing.T) {
	sc := Scenario{Name: "test", Group: GroupDeferred, Clients: []bench.Mode{bench.Direct},
		Work: Workload{APIs: []Req{AsyncSend}}, Calls: 20, Duration: 600 * time.Millisecond,
		Faults: Faults{Refuse: 300 * time.Millisecond}, DeliverWithin: time.Minute}
	r, err := Run(context.Background(), sc, bench.Direct, RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !r.HasDeliveries || r.Messages != 20 || r.Calls != 20 || r.Kept != 0 {
		t.Fatalf("deliveries %v: %d messages, %d calls, %d kept", r.HasDeliveries, r.Messages, r.Calls, r.Kept)
	}
	if r.MessagesDelivered != r.OK || r.OK == 0 || r.OK == 20 || r.MessagesTwice != 0 || r.Duplicates != 0 {
		t.Errorf("%d of 20 answered ok, %d delivered, %d twice (%d duplicates): want those answered ok delivered once, some refused",
			r.OK, r.MessagesDelivered, r.MessagesTwice, r.Duplicates)
	}
	// The refusal starts as the fake is set up, just before the load.
	if r.RefusedUntil < 200*time.Millisecond || r.LastArrival <= r.RefusedUntil || r.LastDelivery() != r.LastArrival-r.RefusedUntil {
		t.Errorf("listening again at %v, the last delivery at %v (%v after)", r.RefusedUntil, r.LastArrival, r.LastDelivery())
	}
	bad := sc
	bad.Clients, bad.DeliverWithin = []bench.Mode{ProxyDeferred}, 0
	if bad.validate() == nil {
		t.Error("dingproxy deferring with no time to deliver in was valid")
	}
	bad = sc
	bad.Work.APIs = []Req{UserGet}
	if bad.validate() == nil {
		t.Error("deliveries counted of reads was valid")
	}
	bad = sc
	bad.Faults.Kill = &Kill{After: time.Second}
	if bad.validate() == nil {
		t.Error("a kill without dingproxy deferring was valid")
	}
	bad = Must(FleetKilled)
	bad.Faults.Kill = &Kill{After: time.Second}
	if bad.validate() == nil {
		t.Error("a fleet deferring whose lease holder is not killed was valid")
	}
}

// Messages are counted in what DingTalk executed: a merged robot message
// counts for each alert in it, and its executions for each; the fake's
// msgUuid replays are not executions.
func TestCountDeliveries(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	robot := fake.URL() + Alert("").Request(0).Path
	post := func(body string) {
		t.Helper()
		resp, err := http.Post(robot, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	post(string(Alert("").Request(1).Body))
	post(string(Alert("").Request(10).Body))
	// Alerts 2, 3 and 10 merged, as the courier renders them, sent twice.
	merged := `{"msgtype":"markdown","markdown":{"title":"3 messages: alert 2","text":"#### 1. alert 2\n\nalert 2\n\n---\n\n#### 2. alert 3\n\nalert 3\n\n---\n\n#### 3. alert 10\n\nalert 10"}}`
	post(merged)
	post(merged)
	post(`{"msgtype":"text","text":{"content":"alert 99"}}`) // not one of the run's
	d := countDeliveries(fake, []string{Alert("").API}, 12)
	if d.delivered != 4 || d.twice != 3 || d.last.IsZero() {
		t.Errorf("%d delivered, %d twice, last %v; want 4 (1, 2, 3, 10), 3 (2, 3, 10)", d.delivered, d.twice, d.last)
	}
	if d := countDeliveries(fake, []string{dingtalktest.PathAsyncSend}, 12); d.delivered != 0 {
		t.Errorf("%d delivered on a path nothing was sent to", d.delivered)
	}
}

// dingproxy as a process of its own (this test binary re-executed),
// killed with SIGKILL after the last answer and started again on the same
// outbox: the notices it kept while DingTalk refused connections are
// delivered by the new process, each once. Connections are refused until
// well after the kill, so nothing is on the wire then, and nothing is
// unknown.
func TestRunKilled(t *testing.T) {
	sc := Scenario{Name: "test", Group: GroupDeferred, Clients: []bench.Mode{ProxyDeferred}, Judge: ProxyDeferred,
		Work: Workload{APIs: []Req{AsyncSend}}, Calls: 6, Duration: 300 * time.Millisecond,
		Faults:        Faults{Refuse: 3 * time.Second, Kill: &Kill{After: 100 * time.Millisecond, Restart: true}},
		DeliverWithin: time.Minute}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := Run(ctx, sc, ProxyDeferred, RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed at %v (refusing: %v), serving again %v later; %d kept, %d delivered, the last at %v",
		r.KilledAt, r.KilledRefused, r.Restart, r.Kept, r.MessagesDelivered, r.LastArrival)
	if !r.HasKill || r.KilledHolder || !r.KilledRefused || r.Restart <= 0 || !r.HasStates {
		t.Fatalf("kill %v (holder %v, refusing %v), restart %v, states read %v", r.HasKill, r.KilledHolder, r.KilledRefused, r.Restart, r.HasStates)
	}
	if r.Calls != 6 || r.OK != 6 || r.Kept != 6 {
		t.Errorf("%d calls, %d answered ok, %d kept; want every one kept while DingTalk refused", r.Calls, r.OK, r.Kept)
	}
	if r.MessagesDelivered != 6 || r.MessagesTwice != 0 || r.Duplicates != 0 || r.Unknown != 0 || r.Unsettled != 0 {
		t.Errorf("%d of 6 delivered, %d twice (%d duplicates), %d unknown, %d unsettled", r.MessagesDelivered, r.MessagesTwice, r.Duplicates, r.Unknown, r.Unsettled)
	}
	if r.LastArrival <= r.KilledAt+r.Restart {
		t.Errorf("the last notice delivered at %v, before the new process served (%v)", r.LastArrival, r.KilledAt+r.Restart)
	}
	for _, tg := range killTargets(Scenario{Calls: 6, DeliverWithin: time.Minute}) {
		if tg.Met != nil && !tg.Met(r) && !strings.Contains(tg.Figure, "robot") {
			t.Errorf("target %q: %s, want %s", tg.Figure, tg.Value(r), tg.Want)
		}
	}
}

// Processes of a fleet say which holds the courier's lease; when it is
// killed, none of those alive says so at once (the others wait for its
// lease to expire), and they still answer.
func TestProcessesHolder(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	sc := Must(FleetKilled)
	sc.Replicas = 2
	p, err := sc.processes(ProxyFleetDeferred, srv.URL(), "test", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hc := bench.HTTPClient(10*time.Second, 2, 0)
	defer hc.CloseIdleConnections()
	ep, err := p.Open(ctx, fake, hc)
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	if len(ep.Bases) != 2 || ep.Bases[0] == ep.Bases[1] {
		t.Fatalf("bases %v", ep.Bases)
	}
	h, err := p.WaitHolder(ctx, holderWait)
	if err != nil {
		t.Fatal(err)
	}
	p.Kill(h)
	if p.Holder() == h {
		t.Errorf("process %d killed, and still the holder", h)
	}
	resp, err := hc.Post(ep.Bases[1-h]+AsyncSend.API, "application/json", strings.NewReader(string(AsyncSend.Request(0).Body)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the other process answered %d", resp.StatusCode)
	}
	if _, err := bench.SendState(ctx, hc, p.Admin(), "no-such-send"); err == nil {
		t.Error("a send that does not exist had a state")
	}
}

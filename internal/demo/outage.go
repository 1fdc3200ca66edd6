package demo

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// OutageOptions shape the outage phase.
type OutageOptions struct {
	Down  time.Duration // how long the API answers 503; default 4 s
	After time.Duration // load after it recovers; default 3 s
	Rate  float64       // calls per second; default 18, under DingTalk's 20 per API
	// OpenTimeout is the demo proxy's breaker.open_timeout, short so the
	// recovery shows within the run; default 2 s.
	OpenTimeout time.Duration
	Modes       []Mode
}

// OutageResult is one client's figures for the outage phase.
type OutageResult struct {
	Mode Mode
	// CallsDuring and AttemptsDuring count client calls started while the
	// API was down and the upstream attempts those calls cost (counted per
	// call: by the client itself, or from X-Dingproxy-Attempts through the
	// proxy, so calls still in flight at the recovery are not misattributed).
	CallsDuring, AttemptsDuring int
	// Fallbacks is how many calls dingproxy answered with a fallback.
	Fallbacks int
	// Recovery is the time from the API's recovery to the first success.
	Recovery time.Duration
	// P50 is the median time a call started during the outage took.
	P50 time.Duration
}

// AttemptsPerCall is what each client call cost DingTalk during the outage.
func (r OutageResult) AttemptsPerCall() float64 { return ratio(r.AttemptsDuring, r.CallsDuring) }

func (o *OutageOptions) defaults() {
	if o.Down <= 0 {
		o.Down = 4 * time.Second
	}
	if o.After <= 0 {
		o.After = 3 * time.Second
	}
	if o.Rate <= 0 {
		o.Rate = 18
	}
	if o.OpenTimeout <= 0 {
		o.OpenTimeout = 2 * time.Second
	}
	if len(o.Modes) == 0 {
		o.Modes = []Mode{Direct, SDKRetry, Proxy}
	}
}

// OutagePath is the API that goes down.
const OutagePath = dingtalktest.PathUserGet

// RunOutage runs the outage phase for each mode.
func RunOutage(ctx context.Context, o OutageOptions) ([]OutageResult, error) {
	o.defaults()
	var out []OutageResult
	for _, m := range o.Modes {
		r, err := runOutage(ctx, m, o)
		if err != nil {
			return out, fmt.Errorf("demo: outage: %s: %w", m, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func runOutage(ctx context.Context, m Mode, o OutageOptions) (OutageResult, error) {
	fake := dingtalktest.New(dingtalktest.Options{})
	if err := fake.Start("127.0.0.1:0"); err != nil {
		return OutageResult{}, err
	}
	defer fake.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: 100}
	defer tr.CloseIdleConnections()
	c := &client{hc: &http.Client{Transport: tr, Timeout: 40 * time.Second}, base: fake.URL()}
	if m == Proxy {
		stop, url, err := StartProxy(fake.URL(), func(cfg *config.Config) { cfg.Breaker.OpenTimeout = o.OpenTimeout })
		if err != nil {
			return OutageResult{}, err
		}
		defer stop()
		c.base = url
	} else {
		tok, err := FetchToken(ctx, c.hc, fake.URL())
		if err != nil {
			return OutageResult{}, err
		}
		c.token, c.sdkRetry = tok, m == SDKRetry
	}
	fake.SetChaos(dingtalktest.Chaos{Paths: []string{OutagePath}, Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(503), P: 1}}})
	res := OutageResult{Mode: m}
	var mu sync.Mutex
	var wg sync.WaitGroup
	begin := time.Now()
	upAt := begin.Add(o.Down)
	var recovered bool
	var firstOK time.Time
	var lat []time.Duration // of calls started during the outage
	interval := time.Duration(float64(time.Second) / o.Rate)
	timer := time.NewTimer(0)
	defer timer.Stop()
	total := int((o.Down + o.After) / interval)
	for i := 0; i < total; i++ {
		timer.Reset(time.Until(begin.Add(time.Duration(i) * interval)))
		select {
		case <-ctx.Done():
			wg.Wait()
			return res, ctx.Err()
		case <-timer.C:
		}
		if !recovered && !time.Now().Before(upAt) {
			fake.SetChaos(dingtalktest.Chaos{})
			recovered = true
		}
		during := !recovered
		if during {
			res.CallsDuring++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			ok, fallback, attempts := c.do(ctx, http.MethodPost, OutagePath, fmt.Appendf(nil, `{"userid":"u%d"}`, i%50))
			mu.Lock()
			defer mu.Unlock()
			if during {
				res.AttemptsDuring += attempts
				lat = append(lat, time.Since(start))
			}
			if fallback {
				res.Fallbacks++
			}
			if ok && !during && (firstOK.IsZero() || time.Now().Before(firstOK)) {
				firstOK = time.Now()
			}
		}()
	}
	wg.Wait()
	slices.Sort(lat)
	res.P50 = percentile(lat, 0.5)
	if !firstOK.IsZero() {
		res.Recovery = firstOK.Sub(upAt)
	} else {
		res.Recovery = -1
	}
	return res, nil
}

// PrintOutageTable writes the outage results side by side.
func PrintOutageTable(w io.Writer, rs []OutageResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', tabwriter.AlignRight)
	row := func(name string, f func(OutageResult) string) {
		cells := []string{fmt.Sprintf("%-34s", name)}
		for _, r := range rs {
			cells = append(cells, f(r))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	row("", func(r OutageResult) string { return string(r.Mode) })
	row("client calls during the outage", func(r OutageResult) string { return fmt.Sprint(r.CallsDuring) })
	row("upstream attempts per call", func(r OutageResult) string { return fmt.Sprintf("%.2f", r.AttemptsPerCall()) })
	row("answered by a fallback (whole run)", func(r OutageResult) string { return fmt.Sprint(r.Fallbacks) })
	row("first success after recovery", func(r OutageResult) string {
		if r.Recovery < 0 {
			return "none"
		}
		return fmt.Sprintf("+%.1f s", r.Recovery.Seconds())
	})
	tw.Flush()
}

// Command robotburst sends a burst of alerts to one custom robot through
// dingproxy with deferred sends on for /robot/send (routes[].defer, merge
// on), as an alerting hook would: 60 alerts in 6 s, each sent once, to a
// robot DingTalk lets post 20 a minute. It starts nothing itself: run.sh
// starts the fake DingTalk and dingproxy, and checks the fake's counts
// after it (no send into the robot's block, none twice).
//
// It prints how the alerts were answered (sent at once, or deferred with
// an id), then polls GET /outbox/<id> on dingproxy's admin listener until
// every deferred alert is delivered, and exits 1 if an alert was refused,
// a deferred one is given up (dead, unknown), or one is not delivered
// within the wait. The robot's token is never printed.
//
// Environment (defaults match run.sh and bin/fakedingtalk):
//
//	DINGPROXY_PORT        dingproxy's port on 127.0.0.1 (8080)
//	DINGPROXY_ADMIN_PORT  its admin port on 127.0.0.1 (9090)
//	DINGTALK_BURST_ROBOT  the robot's access_token (demo-robot-token-burst: a
//	                      robot of its own on the fake, apart from the other examples')
//	BURST_ALERTS          how many alerts (60)
//	BURST_SPREAD          over how long they are sent (6s)
//	BURST_WAIT            how long to wait for them all to be delivered (100s)
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
)

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

var (
	port      = env("DINGPROXY_PORT", "8080")
	adminPort = env("DINGPROXY_ADMIN_PORT", "9090")
	robot     = env("DINGTALK_BURST_ROBOT", "demo-robot-token-burst")
)

// answer is how dingproxy answered one alert.
type answer struct {
	n        int
	deferred string // the kept send's id; "" when sent at once
	took     time.Duration
	err      error
}

// client has a timeout above dingproxy's retry.timeout (30s): an alert
// held for a pacing turn would show as a slow answer, not as an error here.
var client = &http.Client{Timeout: 40 * time.Second}

func main() {
	alerts, err := strconv.Atoi(env("BURST_ALERTS", "60"))
	must(err)
	spread, err := time.ParseDuration(env("BURST_SPREAD", "6s"))
	must(err)
	wait, err := time.ParseDuration(env("BURST_WAIT", "100s"))
	must(err)
	if alerts < 1 || spread <= 0 || wait <= 0 {
		fail("BURST_ALERTS, BURST_SPREAD and BURST_WAIT must be positive")
	}

	// The burst: one alert every spread/alerts, each on its own, as
	// separate alerting rules firing would send them; none is retried.
	start := time.Now()
	answers := make([]answer, alerts)
	var wg sync.WaitGroup
	tick := time.NewTicker(spread / time.Duration(alerts))
	for i := range alerts {
		if i > 0 {
			<-tick.C
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = send(i + 1)
		}()
	}
	tick.Stop()
	wg.Wait()
	sent := time.Since(start)

	var ids []string
	var took []time.Duration
	failed := 0
	for _, a := range answers {
		took = append(took, a.took)
		switch {
		case a.err != nil:
			failed++
			fmt.Printf("FAIL alert %d: %v\n", a.n, a.err)
		case a.deferred != "":
			ids = append(ids, a.deferred)
		}
	}
	slices.Sort(took)
	fmt.Printf("ok   burst: %d alerts to one robot in %.1fs: %d sent at once, %d deferred (X-Dingproxy-Deferred), %d refused\n",
		alerts, sent.Seconds(), alerts-len(ids)-failed, len(ids), failed)
	fmt.Printf("ok   answers: p50 %s, p99 %s, max %s (a deferred answer is given once the send is on disk)\n",
		ms(quantile(took, 0.5)), ms(quantile(took, 0.99)), ms(took[len(took)-1]))
	if failed > 0 {
		fail(fmt.Sprintf("%d alerts were not answered with success", failed))
	}
	if len(ids) == 0 {
		fail("no alert was deferred: is defer on for /robot/send, and does the fake limit the robot (-robot-per-minute 20)?")
	}

	// Delivery: every deferred alert, polled on the admin listener.
	deadline := start.Add(wait)
	pending := slices.Clone(ids)
	for len(pending) > 0 {
		var still []string
		for _, id := range pending {
			state, reason, err := outboxState(id)
			switch {
			case err != nil:
				fail(fmt.Sprintf("GET /outbox/%s: %v", id, err))
			case state == "delivered":
			case state == "queued":
				still = append(still, id)
			default:
				fail(fmt.Sprintf("deferred alert %s is %s: %s", id, state, reason))
			}
		}
		pending = still
		if len(pending) == 0 {
			break
		}
		if time.Now().After(deadline) {
			fail(fmt.Sprintf("%d of %d deferred alerts still queued %s after the first alert", len(pending), len(ids), wait))
		}
		time.Sleep(500 * time.Millisecond) // polling, with the deadline above
	}
	fmt.Printf("ok   delivered: all %d deferred alerts, %.1fs after the first alert (GET /outbox/<id>: state delivered)\n",
		len(ids), time.Since(start).Seconds())
	if summary, err := outboxSummary(); err == nil {
		fmt.Printf("ok   GET /outbox: %s\n", summary)
	}
}

// send posts alert n to the robot and reads dingproxy's answer.
func send(n int) answer {
	body, _ := json.Marshal(map[string]any{
		"msgtype": "text",
		"text":    map[string]string{"content": fmt.Sprintf("alert %d: disk 95%% full on host-%02d", n, n)},
	})
	u := "http://127.0.0.1:" + port + "/robot/send?access_token=" + url.QueryEscape(robot)
	t0 := time.Now()
	resp, err := client.Post(u, "application/json", bytes.NewReader(body))
	a := answer{n: n}
	if err != nil {
		a.err = errors.New("no answer: " + redact(err.Error()))
		return a
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	a.took = time.Since(t0)
	var v struct {
		Errcode  *int   `json:"errcode"`
		Errmsg   string `json:"errmsg"`
		Deferred string `json:"dingproxy_deferred"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &v) != nil || v.Errcode == nil || *v.Errcode != 0 {
		a.err = fmt.Errorf("HTTP %d %s", resp.StatusCode, bytes.TrimSpace(b))
		return a
	}
	if h := resp.Header.Get("X-Dingproxy-Deferred"); h != v.Deferred {
		a.err = fmt.Errorf("X-Dingproxy-Deferred %q but the body says %q", h, v.Deferred)
		return a
	}
	a.deferred = v.Deferred
	return a
}

// outboxState is what GET /outbox/<id> says of a deferred send.
func outboxState(id string) (state, reason string, err error) {
	var v struct {
		State  string `json:"state"`
		Reason string `json:"reason"`
	}
	if err := getJSON("/outbox/"+url.PathEscape(id), &v); err != nil {
		return "", "", err
	}
	return v.State, v.Reason, nil
}

// outboxSummary is GET /outbox's counts, one line.
func outboxSummary() (string, error) {
	var v struct {
		Routes []struct {
			Route     string `json:"route"`
			Queued    int    `json:"queued"`
			Delivered int    `json:"delivered"`
			Dead      int    `json:"dead"`
			Unknown   int    `json:"unknown"`
		} `json:"routes"`
	}
	if err := getJSON("/outbox", &v); err != nil {
		return "", err
	}
	line := ""
	for _, r := range v.Routes {
		line += fmt.Sprintf("%s queued %d, delivered %d, dead %d, unknown %d; ", r.Route, r.Queued, r.Delivered, r.Dead, r.Unknown)
	}
	if line == "" {
		return "no routes", nil
	}
	return line[:len(line)-2], nil
}

func getJSON(path string, v any) error {
	resp, err := client.Get("http://127.0.0.1:" + adminPort + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	return json.Unmarshal(b, v)
}

// quantile is the q-quantile of sorted d (nearest rank).
func quantile(d []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(d))+0.999999) - 1
	return d[max(0, min(i, len(d)-1))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }

// redact cuts the robot's token out of a message (a Go URL error quotes
// the URL).
func redact(s string) string {
	return string(bytes.ReplaceAll([]byte(s), []byte(url.QueryEscape(robot)), []byte("REDACTED")))
}

func must(err error) {
	if err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Println("FAIL robot burst:", msg)
	os.Exit(1)
}

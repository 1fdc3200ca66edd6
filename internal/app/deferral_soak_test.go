//go:build soak

package app_test

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/outbox"
)

// soakMarker finds the number a soak send carries in its text ("soak 7",
// "chunked 7", "robot 7"); a merged robot message carries several.
var soakMarker = regexp.MustCompile(`(soak|chunked|robot) ([0-9]+)\b`)

// TestFaultSoakDeferred is the fault soak (for half its length) with
// defer on for the send routes: work notices, and the custom robot with
// merge (the soak's robot sends are far past its 20 a minute; merged,
// what is kept drains in a few of its turns). Once the faults are over:
// every send answered as kept is accounted for, as delivered, dead or
// unknown (GET /outbox/<id>); none is lost (still queued, forgotten, or
// delivered by the outbox's word but never executed by DingTalk); none
// executed twice. Then the IP ban: a send is answered 503 or kept, and
// nothing reaches DingTalk.
func TestFaultSoakDeferred(t *testing.T) {
	d := *soakFor / 2
	if d == 0 {
		d = 30 * time.Second
		if testing.Short() {
			d = 5 * time.Second
		}
	}
	type keptSend struct {
		path, marker string
	}
	var mu sync.Mutex
	kept := map[string]keptSend{}
	var keptInBan []string
	var badAnswers []string
	df := &soakDefer{
		opts: []stackOpt{
			deferOn(t, dingtalktest.PathAsyncSend, time.Hour, false),
			deferOn(t, dingtalk.PathRobotSend, time.Hour, true),
		},
		sent: func(path string, body []byte, resp *http.Response, answer []byte, ban bool) {
			id := resp.Header.Get("X-Dingproxy-Deferred")
			if id == "" {
				return // not kept
			}
			m := soakMarker.FindSubmatch(body)
			mu.Lock()
			defer mu.Unlock()
			if ban {
				keptInBan = append(keptInBan, id) // the ban outlasts the test: still queued at its end
				return
			}
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(answer), `"dingproxy_deferred":"`+id+`"`) || m == nil {
				if len(badAnswers) < 5 {
					badAnswers = append(badAnswers, fmt.Sprintf("%d %s", resp.StatusCode, answer))
				}
				return
			}
			kept[id] = keptSend{path: path, marker: string(m[1]) + " " + string(m[2])}
		},
	}
	df.settled = func(s *stack) {
		mu.Lock()
		defer mu.Unlock()
		if len(badAnswers) > 0 {
			t.Errorf("kept sends answered out of shape: %v", badAnswers)
		}
		if len(kept) == 0 {
			t.Fatal("no send was kept: the faults never reached the deferral")
		}
		// Every kept send comes to an end: delivered, dead or unknown.
		ob := s.app.Outbox()
		states := map[outbox.State]int{}
		var lost []string
		deadline := time.Now().Add(3 * time.Minute)
		start := time.Now()
		for id, k := range kept {
			for {
				sd, err := ob.Get(id)
				if err != nil {
					lost = append(lost, fmt.Sprintf("%s (%s): %v", id, k.marker, err))
					break
				}
				if sd.State != outbox.Queued {
					states[sd.State]++
					if sd.State == outbox.Delivered {
						kept[id] = keptSend{path: k.path, marker: k.marker + "\x00delivered"}
					}
					break
				}
				if time.Now().After(deadline) {
					states[outbox.Queued]++
					lost = append(lost, fmt.Sprintf("%s (%s): still queued after %v, %d attempts", id, k.marker, time.Since(start).Round(time.Second), sd.Attempts))
					break
				}
				time.Sleep(20 * time.Millisecond) // polling with a deadline
			}
		}
		// What DingTalk executed, message by message (a merged robot
		// message counts for each of its parts).
		execs := map[string]int{}
		for _, path := range []string{dingtalktest.PathAsyncSend, dingtalk.PathRobotSend} {
			for _, dl := range s.fake.Deliveries(path) {
				if dl.Body == nil {
					t.Fatalf("the fake kept no body of a delivery on %s: the delivered ones cannot be found", path)
				}
				seen := map[string]bool{}
				for _, m := range soakMarker.FindAllSubmatch(dl.Body, -1) {
					key := path + " " + string(m[1]) + " " + string(m[2])
					if !seen[key] {
						seen[key] = true
						execs[key] += dl.Executions
					}
				}
			}
		}
		twice := 0
		for _, n := range execs {
			if n > 1 {
				twice++
			}
		}
		for id, k := range kept {
			marker, delivered := strings.CutSuffix(k.marker, "\x00delivered")
			if delivered && execs[k.path+" "+marker] == 0 {
				lost = append(lost, fmt.Sprintf("%s (%s): delivered by the outbox's word, never executed by DingTalk", id, marker))
			}
		}
		t.Logf("%d sends kept: %d delivered, %d dead, %d unknown, %d still queued, within %v; %d messages executed, %d of them twice",
			len(kept), states[outbox.Delivered], states[outbox.Dead], states[outbox.Unknown], states[outbox.Queued],
			time.Since(start).Round(100*time.Millisecond), len(execs), twice)
		if n := len(lost); n > 0 {
			t.Errorf("%d kept sends lost, e.g. %s", n, strings.Join(lost[:min(n, 5)], "; "))
		}
		if twice != 0 {
			t.Errorf("%d messages executed twice", twice)
		}
		if got := states[outbox.Delivered] + states[outbox.Dead] + states[outbox.Unknown]; got != len(kept) {
			t.Errorf("%d of %d kept sends accounted for as delivered, dead or unknown", got, len(kept))
		}
		if states[outbox.Delivered] == 0 {
			t.Error("no kept send was delivered")
		}
		robots := s.fake.Robot(dingtalktest.DefaultRobotToken)
		t.Logf("the robot: %d executed, %d throttled, %d blocks", robots.Executed, robots.Throttled, robots.Blocks)
	}
	df.banned = func(s *stack) {
		// Kept during the ban, which outlasts the test: each is still
		// queued, neither lost nor sent into the ban.
		mu.Lock()
		defer mu.Unlock()
		ob := s.app.Outbox()
		queued := 0
		for _, id := range keptInBan {
			sd, err := ob.Get(id)
			switch {
			case err != nil:
				t.Errorf("send %s kept during the IP ban is lost: %v", id, err)
			case sd.State != outbox.Queued:
				t.Errorf("send %s kept during the IP ban is %s, want queued until the ban ends", id, sd.State)
			default:
				queued++
			}
		}
		t.Logf("during the ban %d sends were kept; %d of them still queued at the end", len(keptInBan), queued)
	}
	faultSoak(t, d, df)
}

package scenario

import (
	"fmt"
	"math/rand/v2"
	"net/http"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// users is how many users the calls name, in turn ("u0" to "u49").
const users = 50

// Req is one API's call, a shared request builder: every scenario that
// reads a user calls UserGet, and so on.
type Req struct {
	// API is the path the call goes to, as the descriptions name it.
	API string
	// Send: the call sends something (a notice, an alert); DingTalk may
	// execute it even when the answer is lost.
	Send bool
	// Robot, for an alert, names its custom robot ("" is the fake's own).
	Robot string
	// Same: every call is the same request (a cache can answer them).
	Same  bool
	alert bool
	build func(i int) bench.Request
}

// Request is call number i of the API.
func (q Req) Request(i int) bench.Request { return q.build(i) }

func post(path string, send bool, body []byte) bench.Request {
	return bench.Request{Method: http.MethodPost, Path: path, Send: send, Body: body}
}

// The shared request builders: reads and sends on the fake's APIs. A
// user's id and a notice's text depend on the call's number, so no two
// sends are alike (DingTalk would execute both).
var (
	UserGet = Req{API: dingtalktest.PathUserGet, build: func(i int) bench.Request {
		return post(dingtalktest.PathUserGet, false, fmt.Appendf(nil, `{"userid":"u%d"}`, i%users))
	}}
	DeptListSub = Req{API: dingtalktest.PathDeptListSub, Same: true, build: func(int) bench.Request {
		return post(dingtalktest.PathDeptListSub, false, []byte(`{"dept_id":1}`))
	}}
	DeptList = Req{API: dingtalktest.PathDeptList, Same: true, build: func(int) bench.Request {
		return bench.Request{Method: http.MethodGet, Path: dingtalktest.PathDeptList + "?id=1"}
	}}
	ContactUser = Req{API: dingtalktest.PathContactUsers + "{id}", build: func(i int) bench.Request {
		return bench.Request{Method: http.MethodGet, Path: dingtalktest.PathContactUsers + fmt.Sprintf("u%d", i%users)}
	}}
	AttendanceList = Req{API: dingtalktest.PathAttendanceList, build: func(i int) bench.Request {
		return post(dingtalktest.PathAttendanceList, false, fmt.Appendf(nil, `{"offset":%d}`, i))
	}}
	APIEcho = Req{API: dingtalktest.PathAPIEcho, build: func(i int) bench.Request {
		return post(dingtalktest.PathAPIEcho, false, fmt.Appendf(nil, `{"offset":%d}`, i))
	}}
	AsyncSend = Req{API: dingtalktest.PathAsyncSend, Send: true, build: func(i int) bench.Request {
		return post(dingtalktest.PathAsyncSend, true,
			fmt.Appendf(nil, `{"agent_id":1,"userid_list":"u%d","msg":{"msgtype":"text","text":{"content":"notice %d"}}}`, i%users, i))
	}}
	ChatSend = Req{API: dingtalktest.PathChatSend, Send: true, build: func(i int) bench.Request {
		return post(dingtalktest.PathChatSend, true,
			fmt.Appendf(nil, `{"chatid":"chat%d","msg":{"msgtype":"text","text":{"content":"notice %d"}}}`, i%5, i))
	}}
	RobotBatchSend = Req{API: dingtalktest.PathRobotBatchSend, Send: true, build: func(i int) bench.Request {
		return post(dingtalktest.PathRobotBatchSend, true,
			fmt.Appendf(nil, `{"robotCode":"r1","userIds":["u%d"],"msgKey":"sampleText","msgParam":"{\"content\":\"notice %d\"}"}`, i%users, i))
	}}
)

// Alert is an alert to a custom robot: the fake's own (robot ""), or the
// one named robot. The webhook carries the robot's token, not the app's.
func Alert(robot string) Req {
	tok := dingtalktest.DefaultRobotToken
	if robot != "" {
		tok += "-" + robot
	}
	path := dingtalk.PathRobotSend + "?" + dingtalk.QueryAccessToken + "=" + tok
	return Req{API: dingtalk.PathRobotSend, Send: true, Robot: robot, alert: true, build: func(i int) bench.Request {
		return post(path, true, fmt.Appendf(nil, `{"msgtype":"text","text":{"content":"alert %d"}}`, i))
	}}
}

// Alerts are alerts to n custom robots named r0 to r(n-1), in turn.
func Alerts(n int) []Req {
	out := make([]Req, n)
	for i := range out {
		out[i] = Alert(fmt.Sprintf("r%d", i))
	}
	return out
}

// Workload is what a scenario's client calls: its APIs in turn, or a
// random mix of its reads and sends.
type Workload struct {
	// APIs are the calls, taken in turn: call i is APIs[i%len(APIs)].
	APIs []Req
	// SendShare, if above 0, draws each call at random instead (seeded
	// by the run's seed, so each client gets the same calls): a send with
	// this probability, else a read, then one of the APIs of that kind.
	SendShare float64
	// PerReplica: each replica of a fleet gets the whole sequence. Call i
	// goes to replica i%replicas and is call i/replicas of the sequence.
	PerReplica bool
}

// split is the APIs' reads and sends.
func (w Workload) split() (reads, sends []Req) {
	for _, q := range w.APIs {
		if q.Send {
			sends = append(sends, q)
		} else {
			reads = append(reads, q)
		}
	}
	return reads, sends
}

func (w Workload) validate() error {
	reads, sends := w.split()
	switch {
	case len(w.APIs) == 0:
		return fmt.Errorf("no APIs")
	case w.SendShare < 0 || w.SendShare > 1:
		return fmt.Errorf("send share %v is not in [0, 1]", w.SendShare)
	case w.SendShare > 0 && (len(reads) == 0 || len(sends) == 0):
		return fmt.Errorf("a random mix of %d reads and %d sends", len(reads), len(sends))
	}
	return nil
}

// Calls is the workload's call builder for one client of a fleet of
// replicas (1 for one client): call i. For a random mix it draws, so ask
// for the calls in order, once each; each Calls starts the same draws
// again.
func (w Workload) Calls(seed int64, replicas int) func(i int) bench.Request {
	if w.SendShare > 0 {
		reads, sends := w.split()
		rng := rand.New(rand.NewPCG(uint64(seed), 7))
		// One draw over the longer list, folded onto the shorter.
		kinds := max(len(reads), len(sends))
		return func(i int) bench.Request {
			list := reads
			if rng.Float64() < w.SendShare {
				list = sends
			}
			return list[rng.IntN(kinds)%len(list)].build(i)
		}
	}
	return func(i int) bench.Request {
		if w.PerReplica && replicas > 1 {
			i /= replicas
		}
		return w.APIs[i%len(w.APIs)].build(i)
	}
}

// robots is how many custom robots the workload alerts, if it is all
// alerts (0 otherwise).
func (w Workload) robots() int {
	for _, q := range w.APIs {
		if !q.alert {
			return 0
		}
	}
	return len(w.APIs)
}

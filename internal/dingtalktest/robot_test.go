package dingtalktest

import (
	"fmt"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// robotCall posts body to /robot/send with the robot token tok and the extra
// query (may be "").
func robotCall(t *testing.T, c *http.Client, s *Server, tok, query, body string) result {
	t.Helper()
	path := dingtalk.PathRobotSend
	if query != "" {
		path += "?" + query
	}
	return call(t, c, s, http.MethodPost, path, tok, []byte(body))
}

// signed is the query of a send signed with secret at ts.
func signed(secret string, ts time.Time) string {
	timestamp, sign := SignRobot(secret, ts)
	return "timestamp=" + timestamp + "&sign=" + sign
}

func textMsg(content string) string {
	return fmt.Sprintf(`{"msgtype":"text","text":{"content":%q}}`, content)
}

func TestSignRobot_KnownAnswer(t *testing.T) {
	// Computed independently:
	// printf '1577000000000\nSECabc' | openssl dgst -sha256 -hmac SECabc -binary | base64
	ts, sign := SignRobot("SECabc", time.UnixMilli(1577000000000))
	if ts != "1577000000000" {
		t.Errorf("timestamp = %q, want 1577000000000", ts)
	}
	if want := "7GpJpzn1QbzWPzb28Rn8n5kqQ%2BbZnFJ5q6yAXgyepM4%3D"; sign != want {
		t.Errorf("sign = %q, want %q (URL-encoded base64)", sign, want)
	}
}

func TestRobotSecret(t *testing.T) {
	const secret = "SECabc"
	clk := newClock(t0)
	s := NewServer(t, Options{
		RobotToken:  "rt",
		RobotSecret: secret,
		Robots:      map[string]RobotConfig{"open": {}, "own": {Secret: "SECown"}},
		Now:         clk.Now,
	})
	c := newClient(t)
	now := clk.Now()
	ts, goodSign := SignRobot(secret, now)
	_, otherSign := SignRobot(secret, now.Add(time.Millisecond))
	_, wrongSecret := SignRobot("SECother", now)

	const ok, badTS, badSign = "ok", "invalid timestamp", "sign not match"
	tests := []struct {
		name  string
		tok   string
		query string
		want  string
	}{
		{"signed now", "rt", signed(secret, now), ok},
		{"another rt- robot shares the secret", "rt-2", signed(secret, now), ok},
		{"signed an hour ago", "rt", signed(secret, now.Add(-time.Hour)), ok},
		{"signed an hour ahead", "rt", signed(secret, now.Add(time.Hour)), ok},
		{"signed an hour and 1 ms ago", "rt", signed(secret, now.Add(-time.Hour-time.Millisecond)), badTS},
		{"signed an hour and 1 ms ahead", "rt", signed(secret, now.Add(time.Hour+time.Millisecond)), badTS},
		{"no timestamp, no sign", "rt", "", badTS},
		{"timestamp not a number", "rt", "timestamp=now&sign=" + goodSign, badTS},
		{"timestamp far in the future", "rt", "timestamp=9223372036854775807&sign=" + goodSign, badTS},
		{"no sign", "rt", "timestamp=" + ts, badSign},
		{"sign of another timestamp", "rt", "timestamp=" + ts + "&sign=" + otherSign, badSign},
		{"sign with another secret", "rt", "timestamp=" + ts + "&sign=" + wrongSecret, badSign},
		{"robot without a secret", "open", "", ok},
		{"robot with its own secret, signed with the common one", "own", signed(secret, now), badSign},
		{"robot with its own secret", "own", signed("SECown", now), ok},
	}
	wantOK := 0
	for _, tt := range tests {
		res := robotCall(t, c, s, tt.tok, tt.query, textMsg("hi "+tt.name))
		if tt.want == ok {
			wantOK++
			checkFields(t, res, map[string]any{"errcode": num(0)})
			continue
		}
		msg, _ := res.json["errmsg"].(string)
		if res.status != http.StatusOK || res.json["errcode"] != num(errcodeRobotSecurity) || !strings.HasPrefix(msg, tt.want+", more: ") {
			t.Errorf("%s: %d %s, want 200 errcode 310000 %q", tt.name, res.status, res.raw, tt.want)
		}
	}
	if got := s.Executions(dingtalk.PathRobotSend); got != wantOK {
		t.Errorf("Executions = %d, want %d (refused sends are not executed)", got, wantOK)
	}
	if got, want := s.Robot("rt").Refused, len(tests)-wantOK-1; got != want {
		t.Errorf(`Robot("rt").Refused = %d, want %d`, got, want)
	}
	if got := s.Robot("own"); got.Refused != 1 || got.Executed != 1 {
		t.Errorf(`Robot("own") = %+v, want 1 refused, 1 executed`, got)
	}
}

func TestRobotSecret_SignMustBeURLEncoded(t *testing.T) {
	// This sign holds '+' and '=': unencoded, the '+' reads as a space.
	clk := newClock(time.UnixMilli(1577000000000))
	s := NewServer(t, Options{RobotToken: "rt", RobotSecret: "SECabc", Now: clk.Now})
	c := newClient(t)
	res := robotCall(t, c, s, "rt", "timestamp=1577000000000&sign=7GpJpzn1QbzWPzb28Rn8n5kqQ+bZnFJ5q6yAXgyepM4=", textMsg("x"))
	checkFields(t, res, map[string]any{"errcode": num(errcodeRobotSecurity)})
	res = robotCall(t, c, s, "rt", signed("SECabc", clk.Now()), textMsg("x"))
	checkFields(t, res, map[string]any{"errcode": num(0)})
}

func TestRobotKeywords(t *testing.T) {
	s := NewServer(t, Options{
		RobotToken:    "rt",
		RobotKeywords: []string{"告警", "alert"},
		Robots:        map[string]RobotConfig{"any": {}},
	})
	c := newClient(t)
	tests := []struct {
		name, tok, body string
		ok              bool
	}{
		{"text with a keyword", "rt", textMsg("CPU alert on host-1"), true},
		{"text with the other keyword", "rt", textMsg("磁盘告警"), true},
		{"text without", "rt", textMsg("CPU high on host-1"), false},
		{"keyword case differs", "rt", textMsg("ALERT"), false},
		{"markdown, keyword in title", "rt", `{"msgtype":"markdown","markdown":{"title":"alert","text":"cpu"}}`, true},
		{"markdown, keyword in text", "rt", `{"msgtype":"markdown","markdown":{"title":"t","text":"### 告警\ncpu"}}`, true},
		{"markdown without", "rt", `{"msgtype":"markdown","markdown":{"title":"t","text":"cpu"}}`, false},
		{"keyword outside the msgtype's content", "rt", `{"msgtype":"text","text":{"content":"x"},"markdown":{"title":"alert"}}`, false},
		{"link", "rt", `{"msgtype":"link","link":{"title":"alert","text":"x","messageUrl":"https://e"}}`, true},
		{"actionCard button", "rt", `{"msgtype":"actionCard","actionCard":{"title":"t","text":"x","btns":[{"title":"告警"}]}}`, true},
		{"feedCard", "rt", `{"msgtype":"feedCard","feedCard":{"links":[{"title":"a"},{"title":"alert b"}]}}`, true},
		{"not JSON", "rt", `alert`, false},
		{"robot without keywords", "any", textMsg("anything"), true},
	}
	wantOK := 0
	for _, tt := range tests {
		res := robotCall(t, c, s, tt.tok, "", tt.body)
		if tt.ok {
			wantOK++
			checkFields(t, res, map[string]any{"errcode": num(0)})
			continue
		}
		checkFields(t, res, map[string]any{"errcode": num(errcodeRobotSecurity), "errmsg": msgRobotNoKeyword})
	}
	if got := s.Executions(dingtalk.PathRobotSend); got != wantOK {
		t.Errorf("Executions = %d, want %d", got, wantOK)
	}
}

func TestRobotMaxBody(t *testing.T) {
	// pad returns a text message of exactly n bytes.
	pad := func(n int) string {
		m := textMsg("")
		return textMsg(strings.Repeat("a", n-len(m)))
	}
	s := NewServer(t, Options{RobotToken: "rt", RobotMaxBody: RobotBodyLimit})
	c := newClient(t)
	checkFields(t, robotCall(t, c, s, "rt", "", pad(RobotBodyLimit)), map[string]any{"errcode": num(0)})
	checkFields(t, robotCall(t, c, s, "rt", "", pad(RobotBodyLimit+1)), map[string]any{
		"errcode": num(errcodeRobotTooLong), "errmsg": "message too long, exceed 20000 bytes",
	})
	if got := s.Executions(dingtalk.PathRobotSend); got != 1 {
		t.Errorf("Executions = %d, want 1 (the long one is not executed)", got)
	}
	if got := s.Robot("rt"); got.Refused != 1 || got.Executed != 1 {
		t.Errorf(`Robot("rt") = %+v, want 1 refused, 1 executed`, got)
	}

	// Opt-in: without RobotMaxBody any length goes.
	open := NewServer(t, Options{RobotToken: "rt"})
	checkFields(t, robotCall(t, c, open, "rt", "", pad(RobotBodyLimit+1)), map[string]any{"errcode": num(0)})
}

// TestRobotMinute checks DingTalk's robot limit: 20 messages in any minute,
// then 130101 and a 10-minute block that sends into it do not extend.
func TestRobotMinute(t *testing.T) {
	clk := newClock(t0)
	s := NewServer(t, Options{RobotToken: "rt", RobotPerMinute: RobotLimit, Now: clk.Now})
	c := newClient(t)
	const ok, tooFast = "OK errcode=0", "OK errcode=130101"
	send := func(tok, want string) {
		t.Helper()
		res := robotCall(t, c, s, tok, "", textMsg("m"))
		if got := errKey(res); got != want {
			t.Errorf("%s at +%v: %s, want %s", tok, clk.Now().Sub(t0), got, want)
		}
		if want == tooFast && res.json["errmsg"] != msgRobotTooFast {
			t.Errorf("130101 errmsg = %v", res.json["errmsg"])
		}
	}

	// 20 in the first 38 s, then the 21st within the minute is refused and
	// starts the block.
	for range 20 {
		send("rt", ok)
		clk.Advance(2 * time.Second)
	}
	clk.Advance(20*time.Second - time.Millisecond) // +59.999 s: the first is still in the minute
	send("rt", tooFast)
	blockEnd := clk.Now().Add(RobotBlockTime)
	if got := s.RobotBlockedUntil("rt"); !got.Equal(blockEnd) {
		t.Errorf("RobotBlockedUntil = %v, want %v", got, blockEnd)
	}
	send("rt-2", ok) // another robot has its own minute

	// Into the block: refused, and the block does not grow.
	clk.Advance(time.Minute)
	send("rt", tooFast)
	clk.Advance(RobotBlockTime - time.Minute - time.Millisecond)
	send("rt", tooFast)
	clk.Advance(time.Millisecond)
	if got := s.RobotBlockedUntil("rt"); !got.IsZero() {
		t.Errorf("RobotBlockedUntil after the block = %v, want zero", got)
	}

	// After the block, a fresh minute: 20 at once, then the window slides.
	for range 20 {
		send("rt", ok)
	}
	clk.Advance(time.Minute - time.Millisecond)
	send("rt", tooFast)

	want := RobotStats{Executed: 40, Throttled: 4, Blocks: 2}
	if got := s.Robot("rt"); got != want {
		t.Errorf(`Robot("rt") = %+v, want %+v`, got, want)
	}
	if got := s.Robot("rt-2"); got != (RobotStats{Executed: 1}) {
		t.Errorf(`Robot("rt-2") = %+v, want 1 executed`, got)
	}
	if got, want := s.Robots(), map[string]RobotStats{"rt": want, "rt-2": {Executed: 1}}; !maps.Equal(got, want) {
		t.Errorf("Robots() = %+v, want %+v", got, want)
	}
	if got := s.RobotThrottled(); got != 4 {
		t.Errorf("RobotThrottled = %d, want 4", got)
	}
	s.ResetCounters()
	if got := s.Robot("rt"); got != (RobotStats{}) || s.RobotThrottled() != 0 {
		t.Errorf("after ResetCounters: %+v, %d throttled; want zero", got, s.RobotThrottled())
	}
	send("rt", tooFast) // the block survives ResetCounters
}

// TestRobotMinute_Sliding checks the minute is any 60 s: a send leaves the
// window 60 s after it was let through.
func TestRobotMinute_Sliding(t *testing.T) {
	clk := newClock(t0)
	s := NewServer(t, Options{RobotToken: "rt", RobotPerMinute: 3, Now: clk.Now})
	c := newClient(t)
	var got []string
	step := func(advance time.Duration) {
		clk.Advance(advance)
		got = append(got, errKey(robotCall(t, c, s, "rt", "", textMsg("m"))))
	}
	step(0)                // 0 s
	step(30 * time.Second) // 30 s
	step(20 * time.Second) // 50 s
	step(10 * time.Second) // 60 s: the first left the window
	step(29 * time.Second) // 89 s: 30, 50, 60 in the window: refused, blocked
	step(RobotBlockTime)   // at the end of the block
	want := []string{"OK errcode=0", "OK errcode=0", "OK errcode=0", "OK errcode=0", "OK errcode=130101", "OK errcode=0"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("answers = %v, want %v", got, want)
	}
}

// TestRobotRefused_NotCountedInTheMinute: sends refused by the robot's
// settings never reach the group, so they use none of its minute.
func TestRobotRefused_NotCountedInTheMinute(t *testing.T) {
	clk := newClock(t0)
	s := NewServer(t, Options{RobotToken: "rt", RobotSecret: "SEC", RobotKeywords: []string{"alert"}, RobotPerMinute: 2, Now: clk.Now})
	c := newClient(t)
	for range 5 {
		checkFields(t, robotCall(t, c, s, "rt", signed("SEC", clk.Now()), textMsg("no keyword")), map[string]any{"errcode": num(errcodeRobotSecurity)})
		checkFields(t, robotCall(t, c, s, "rt", signed("SECx", clk.Now()), textMsg("alert")), map[string]any{"errcode": num(errcodeRobotSecurity)})
	}
	for i, want := range []int{0, 0, dingtalk.ErrcodeRobotTooFast} {
		res := robotCall(t, c, s, "rt", signed("SEC", clk.Now()), textMsg(fmt.Sprint("alert ", i)))
		checkFields(t, res, map[string]any{"errcode": num(want)})
	}
	if got := s.Robot("rt"); got != (RobotStats{Executed: 2, Throttled: 1, Blocks: 1, Refused: 10}) {
		t.Errorf(`Robot("rt") = %+v`, got)
	}
}

func TestNew_CopiesRobotOptions(t *testing.T) {
	kw := []string{"alert"}
	robots := map[string]RobotConfig{"r": {Keywords: []string{"alert"}}}
	s := NewServer(t, Options{RobotToken: "rt", RobotKeywords: kw, Robots: robots})
	kw[0] = "changed"
	robots["r"].Keywords[0] = "changed"
	robots["r2"] = RobotConfig{}
	c := newClient(t)
	checkFields(t, robotCall(t, c, s, "rt", "", textMsg("alert")), map[string]any{"errcode": num(0)})
	checkFields(t, robotCall(t, c, s, "r", "", textMsg("alert")), map[string]any{"errcode": num(0)})
	checkFields(t, robotCall(t, c, s, "r2", "", textMsg("alert")), map[string]any{"errcode": num(dingtalk.ErrcodeRobotNoToken)})
}

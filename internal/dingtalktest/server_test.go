package dingtalktest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 100_000_000, time.UTC)

func TestToken_SameWithinValidityNewAfterExpire(t *testing.T) {
	clk := newClock(t0)
	s := NewServer(t, Options{Now: clk.Now})
	c := newClient(t)

	res := call(t, c, s, http.MethodGet, tokenQuery(DefaultAppKey, DefaultAppSecret), "", nil)
	checkFields(t, res, map[string]any{"errcode": num(dingtalk.ErrcodeOK), "errmsg": "ok", "expires_in": num(7200)})
	tok1 := res.json["access_token"].(string)

	clk.Advance(10 * time.Minute)
	res = call(t, c, s, http.MethodGet, tokenQuery(DefaultAppKey, DefaultAppSecret), "", nil)
	checkFields(t, res, map[string]any{"access_token": tok1, "expires_in": num(6600)})

	// The new endpoint hands out the same app token.
	body := []byte(`{"appKey":"` + DefaultAppKey + `","appSecret":"` + DefaultAppSecret + `"}`)
	res = call(t, c, s, http.MethodPost, dingtalk.PathOAuth2Token, "", body)
	if res.status != http.StatusOK {
		t.Fatalf("accessToken status = %d, want 200 (%s)", res.status, res.raw)
	}
	checkFields(t, res, map[string]any{"accessToken": tok1, "expireIn": num(6600)})

	s.ExpireTokens()
	tok2 := fetchToken(t, c, s)
	if tok2 == tok1 {
		t.Fatalf("token after ExpireTokens = %q, want a new one", tok2)
	}
	res = call(t, c, s, http.MethodPost, PathUserGet, tok1, []byte(`{"userid":"u1"}`))
	checkFields(t, res, map[string]any{"errcode": num(dingtalk.ErrcodeGateway), "sub_code": "40014"})
	res = call(t, c, s, http.MethodPost, PathUserGet, tok2, []byte(`{"userid":"u1"}`))
	checkFields(t, res, map[string]any{"errcode": num(dingtalk.ErrcodeOK)})

	// Expiry by the clock.
	clk.Advance(2 * time.Hour)
	res = call(t, c, s, http.MethodPost, PathUserGet, tok2, []byte(`{"userid":"u1"}`))
	checkFields(t, res, map[string]any{"errcode": num(dingtalk.ErrcodeGateway), "sub_code": "40014"})
	if tok3 := fetchToken(t, c, s); tok3 == tok2 || tok3 == tok1 {
		t.Errorf("token after expiry = %q, want a new one", tok3)
	}
	if got, want := s.TokenFetches(), 5; got != want {
		t.Errorf("TokenFetches() = %d, want %d", got, want)
	}
}

func TestToken_BadCredentials(t *testing.T) {
	s := NewServer(t, Options{AppKey: "k", AppSecret: "s3cr3t"})
	c := newClient(t)

	res := call(t, c, s, http.MethodGet, tokenQuery("k", "wrong"), "", nil)
	if res.status != http.StatusOK {
		t.Errorf("gettoken status = %d, want 200", res.status)
	}
	checkFields(t, res, map[string]any{"errcode": num(dingtalk.ErrcodeBadAppKey)})

	res = call(t, c, s, http.MethodPost, dingtalk.PathOAuth2Token, "", []byte(`{"appKey":"k","appSecret":"nope"}`))
	if res.status != http.StatusBadRequest {
		t.Errorf("accessToken status = %d, want 400", res.status)
	}
	checkFields(t, res, map[string]any{"code": dingtalk.CodeInvalidClient})
	if _, ok := res.json["requestid"].(string); !ok {
		t.Errorf("accessToken error body %s has no requestid", res.raw)
	}
	if got := s.TokenFetches(); got != 2 {
		t.Errorf("TokenFetches() = %d, want 2", got)
	}
	if got := s.SecretLeaks(); got != 0 {
		t.Errorf("SecretLeaks() = %d after token fetches only, want 0", got)
	}
}

func TestAuthErrors(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	tok := fetchToken(t, c, s)
	user := []byte(`{"userid":"u1"}`)

	tests := []struct {
		name       string
		method     string
		path       string
		token      string
		body       []byte
		wantStatus int
		want       map[string]any
	}{
		{"topapi missing", http.MethodPost, PathUserGet, "", user, 200,
			map[string]any{"errcode": num(dingtalk.ErrcodeGateway), "sub_code": "40000", "sub_msg": "access_token is blank"}},
		{"legacy missing", http.MethodGet, PathDeptList, "", nil, 200,
			map[string]any{"errcode": num(dingtalk.ErrcodeTokenMissing)}},
		{"api missing", http.MethodGet, PathContactUsers + "u1", "", nil, 400,
			map[string]any{"code": dingtalk.CodeMissingToken}},
		{"topapi invalid", http.MethodPost, PathUserGet, "bogus", user, 200,
			map[string]any{"errcode": num(dingtalk.ErrcodeGateway), "sub_code": "40014",
				"errmsg": "ding talk error[subcode=40014,submsg=不合法的access_token]"}},
		{"legacy invalid", http.MethodGet, PathDeptList, "bogus", nil, 200,
			map[string]any{"errcode": num(dingtalk.ErrcodeTokenInvalid)}},
		{"api invalid", http.MethodGet, PathContactUsers + "u1", "bogus", nil, 400,
			map[string]any{"code": dingtalk.CodeInvalidAuthentication}},
		{"oapi unknown path", http.MethodPost, "/topapi/nope", tok, nil, 200,
			map[string]any{"errcode": num(404)}},
		{"api unknown path", http.MethodGet, "/v1.0/nope", tok, nil, 404,
			map[string]any{"code": "NotFound"}},
		{"robot wrong token", http.MethodPost, dingtalk.PathRobotSend, "bogus", []byte(`{}`), 200,
			map[string]any{"errcode": num(dingtalk.ErrcodeRobotNoToken), "errmsg": "token is not exist"}},
		{"robot app token", http.MethodPost, dingtalk.PathRobotSend, tok, []byte(`{}`), 200,
			map[string]any{"errcode": num(dingtalk.ErrcodeRobotNoToken)}},
		{"api ok", http.MethodGet, PathContactUsers + "u1", tok, nil, 200,
			map[string]any{"userId": "u1"}},
		{"legacy ok", http.MethodGet, PathDeptList, tok, nil, 200,
			map[string]any{"errcode": num(0), "errmsg": "ok"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := call(t, c, s, tt.method, tt.path, tt.token, tt.body)
			if res.status != tt.wantStatus {
				t.Errorf("status = %d, want %d (%s)", res.status, tt.wantStatus, res.raw)
			}
			checkFields(t, res, tt.want)
			if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
		})
	}
}

func TestAuthErrors_NotExecuted(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	call(t, c, s, http.MethodPost, PathAsyncSend, "bogus", []byte(`{"msg":1}`))
	call(t, c, s, http.MethodPost, PathRobotGroupSend, "", []byte(`{"msg":1}`))
	if got := s.Executions(PathAsyncSend) + s.Executions(PathRobotGroupSend); got != 0 {
		t.Errorf("Executions = %d after auth failures, want 0", got)
	}
	if got := s.Hits(PathAsyncSend); got != 1 {
		t.Errorf("Hits(%s) = %d, want 1", PathAsyncSend, got)
	}
}

func TestEndpoints(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	tok := fetchToken(t, c, s)

	res := call(t, c, s, http.MethodPost, PathUserGet, tok, []byte(`{"userid":"manager7"}`))
	checkFields(t, res, map[string]any{"errcode": num(0), "errmsg": "ok"})
	if u, _ := res.json["result"].(map[string]any); u["userid"] != "manager7" {
		t.Errorf("user/get result = %v, want userid manager7", res.json["result"])
	}
	if _, ok := res.json["request_id"].(string); !ok {
		t.Errorf("topapi success %s has no request_id", res.raw)
	}

	res = call(t, c, s, http.MethodPost, PathDeptListSub, tok, []byte(`{"dept_id":1}`))
	if r, _ := res.json["result"].([]any); len(r) == 0 {
		t.Errorf("listsub = %s, want a result list", res.raw)
	}
	res = call(t, c, s, http.MethodGet, PathDeptList+"?id=1", tok, nil)
	if d, _ := res.json["department"].([]any); len(d) == 0 {
		t.Errorf("department/list = %s, want departments", res.raw)
	}
	res = call(t, c, s, http.MethodPost, PathAttendanceList, tok, []byte(`{"userIdList":["a","b"]}`))
	if r, _ := res.json["recordresult"].([]any); len(r) != 2 {
		t.Errorf("attendance/list = %s, want 2 records", res.raw)
	}

	res = call(t, c, s, http.MethodPost, PathAsyncSend, tok, []byte(`{"agent_id":1}`))
	if _, ok := res.json["task_id"].(json.Number); !ok {
		t.Errorf("asyncsend_v2 = %s, want a task_id", res.raw)
	}
	res = call(t, c, s, http.MethodPost, PathRobotBatchSend, tok, []byte(`{"robotCode":"r"}`))
	if _, ok := res.json["processQueryKey"].(string); !ok || res.header.Get("x-acs-request-id") == "" {
		t.Errorf("batchSend = %s (x-acs-request-id %q), want processQueryKey and a request id", res.raw, res.header.Get("x-acs-request-id"))
	}

	payload := []byte(strings.Repeat("钉", 1000))
	sum := sha256.Sum256(payload)
	for _, path := range []string{PathEcho, PathAPIEcho} {
		res = call(t, c, s, http.MethodPost, path, tok, payload)
		checkFields(t, res, map[string]any{"sha256": hex.EncodeToString(sum[:]), "length": num(len(payload))})
	}
	if got := s.Duplicates(); got != 0 {
		t.Errorf("Duplicates() = %d, want 0", got)
	}
	if got, want := s.TotalHits(), 9; got != want {
		t.Errorf("TotalHits() = %d, want %d", got, want)
	}
}

func TestScript_ConsumedInOrder(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	tok := fetchToken(t, c, s)
	s.Script(PathAsyncSend, SystemBusy(), Throttle(), Errcode(dingtalk.ErrcodeNoPermission, "没有调用该接口的权限"))
	s.Script(PathAsyncSend, Gateway88(dingtalk.ErrcodeTokenInvalid))

	var got []string
	for i := range 6 {
		res := call(t, c, s, http.MethodPost, PathAsyncSend, tok, fmt.Appendf(nil, `{"n":%d}`, i))
		got = append(got, errKey(res))
	}
	want := []string{
		"OK errcode=-1",
		"OK errcode=88/90018",
		"OK errcode=60011",
		"OK errcode=88/40014",
		"OK errcode=0",
		"OK errcode=0",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("answers (-want +got):\n%s", diff)
	}
	if got := s.Executions(PathAsyncSend); got != 2 {
		t.Errorf("Executions = %d, want 2", got)
	}
}

func TestFaultShapes(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	tok := fetchToken(t, c, s)
	end := time.Date(2026, 3, 1, 7, 0, 1, 0, time.UTC) // 15:00:01 in China

	tests := []struct {
		name       string
		fault      Fault
		path       string
		wantStatus int
		wantCT     string
		want       map[string]any
		wantRaw    string // substring of the body
		wantRetry  string
	}{
		{"system busy oapi", SystemBusy(), PathDeptList, 200, "application/json",
			map[string]any{"errcode": num(dingtalk.ErrcodeSystemBusy), "errmsg": "系统繁忙"}, "", ""},
		{"system busy api", SystemBusy(), PathRobotGroupSend, 503, "application/json",
			map[string]any{"code": "ServiceUnavailable"}, "", ""},
		{"throttle topapi", Throttle(), PathUserGet, 200, "application/json",
			map[string]any{"errcode": num(dingtalk.ErrcodeGateway), "sub_code": "90018"}, "", ""},
		{"throttle legacy", Throttle(), PathDeptList, 200, "application/json",
			map[string]any{"errcode": num(dingtalk.ErrcodeQPSAppAPI)}, "", ""},
		{"throttle api", Throttle(), PathRobotGroupSend, 403, "application/json",
			map[string]any{"code": dingtalk.CodeQPSLimitAppAPI}, "", ""},
		{"errcode", Errcode(dingtalk.ErrcodeMonthlyQuota, "quota"), PathUserGet, 200, "application/json",
			map[string]any{"errcode": num(dingtalk.ErrcodeMonthlyQuota), "errmsg": "quota"}, "", ""},
		{"gateway88", Gateway88(dingtalk.ErrcodeQPSAPI), PathUserGet, 200, "application/json",
			map[string]any{"errcode": num(dingtalk.ErrcodeGateway), "sub_code": "90002"}, "", ""},
		{"90002 with end", QPSLimitAPI90002(end), PathUserGet, 200, "application/json",
			map[string]any{"errcode": num(dingtalk.ErrcodeGateway), "sub_code": "90002"},
			"处罚将在 2026-03-01 15:00:01 结束", ""},
		{"api error", APIError(500, dingtalk.CodeUnknownError, "未知错误"), PathRobotBatchSend, 500, "application/json",
			map[string]any{"code": dingtalk.CodeUnknownError, "message": "未知错误"}, "", ""},
		{"status 502", Status(502), PathUserGet, 502, "text/html", nil, "tengine", ""},
		{"too many", TooMany().WithRetryAfter(1500 * time.Millisecond), PathRobotBatchSend, 429, "application/json",
			map[string]any{"code": dingtalk.CodeSystemBusy}, "", "2"},
		{"token invalid topapi", TokenInvalid(), PathUserGet, 200, "application/json",
			map[string]any{"errcode": num(dingtalk.ErrcodeGateway), "sub_code": "40014"}, "", ""},
		{"token invalid legacy", TokenInvalid(), PathChatSend, 200, "application/json",
			map[string]any{"errcode": num(dingtalk.ErrcodeTokenInvalid)}, "", ""},
		{"token invalid api", TokenInvalid(), PathContactUsers + "x", 400, "application/json",
			map[string]any{"code": dingtalk.CodeInvalidAuthentication}, "", ""},
		{"ip ban html", IPBanHTML(), PathUserGet, 403, "text/html", nil, "<html", ""},
		{"ip ban json", IPBanJSON(7), PathUserGet, 200, "application/json",
			map[string]any{"status": num(dingtalk.IPBanStatus), "wait": num(7), "punish": "deny", "source": "x5"}, "", ""},
		{"latency", Latency(time.Millisecond), PathUserGet, 200, "application/json",
			map[string]any{"errcode": num(0)}, "", ""},
		{"ok with retry-after", OK().WithRetryAfter(3 * time.Second), PathUserGet, 200, "application/json",
			map[string]any{"errcode": num(0)}, "", "3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.Script(tt.path, tt.fault)
			res := call(t, c, s, http.MethodPost, tt.path, tok, []byte(`{"userid":"u1"}`))
			if res.status != tt.wantStatus {
				t.Errorf("%v: status = %d, want %d (%s)", tt.fault, res.status, tt.wantStatus, res.raw)
			}
			if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, tt.wantCT) {
				t.Errorf("%v: Content-Type = %q, want %s", tt.fault, ct, tt.wantCT)
			}
			if tt.want != nil {
				checkFields(t, res, tt.want)
			}
			if !strings.Contains(string(res.raw), tt.wantRaw) {
				t.Errorf("%v: body %s does not contain %q", tt.fault, res.raw, tt.wantRaw)
			}
			if got := res.header.Get("Retry-After"); got != tt.wantRetry {
				t.Errorf("%v: Retry-After = %q, want %q", tt.fault, got, tt.wantRetry)
			}
			if sc, ok := res.json["sub_code"]; ok {
				if _, isString := sc.(string); !isString {
					t.Errorf("%v: sub_code %#v is not a string", tt.fault, sc)
				}
			}
		})
	}
}

func TestScript_TokenEndpoint(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	s.Script(dingtalk.PathGetToken, SystemBusy())
	res := call(t, c, s, http.MethodGet, tokenQuery(DefaultAppKey, DefaultAppSecret), "", nil)
	checkFields(t, res, map[string]any{"errcode": num(dingtalk.ErrcodeSystemBusy)})
	fetchToken(t, c, s)
	if got := s.TokenFetches(); got != 2 {
		t.Errorf("TokenFetches() = %d, want 2", got)
	}
}

func TestResetFaults(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	tok := fetchToken(t, c, s)
	body := []byte(`{"agent_id":1,"msg":{"msgtype":"text"}}`)

	s.Script(PathAsyncSend, ResetBeforeExec(), ResetAfterExec())
	if _, err := tryCall(c, s, http.MethodPost, PathAsyncSend, tok, body); err == nil {
		t.Fatal("ResetBeforeExec: request succeeded, want a transport error")
	}
	if got := s.Executions(PathAsyncSend); got != 0 {
		t.Errorf("after ResetBeforeExec Executions = %d, want 0", got)
	}
	if _, err := tryCall(c, s, http.MethodPost, PathAsyncSend, tok, body); err == nil {
		t.Fatal("ResetAfterExec: request succeeded, want a transport error")
	}
	if got := s.Executions(PathAsyncSend); got != 1 {
		t.Errorf("after ResetAfterExec Executions = %d, want 1", got)
	}
	// The client retries the "lost" send: DingTalk executes it a second time.
	res := call(t, c, s, http.MethodPost, PathAsyncSend, tok, body)
	checkFields(t, res, map[string]any{"errcode": num(0)})
	if got := s.Duplicates(); got != 1 {
		t.Errorf("Duplicates() = %d, want 1", got)
	}
	if got := s.Hits(PathAsyncSend); got != 3 {
		t.Errorf("Hits = %d, want 3", got)
	}
	if rs := s.Requests(PathAsyncSend); len(rs) != 3 || string(rs[0].Body) != string(body) {
		t.Errorf("Requests = %d requests, first body %q; want 3 with the body", len(rs), rs[0].Body)
	}
}

func TestDuplicates(t *testing.T) {
	s := NewServer(t, Options{RobotToken: "rt"})
	c := newClient(t)
	tok := fetchToken(t, c, s)

	send := func(path, token, body string) {
		t.Helper()
		res := call(t, c, s, http.MethodPost, path, token, []byte(body))
		if res.status != http.StatusOK {
			t.Fatalf("%s: status %d (%s)", path, res.status, res.raw)
		}
		if e, ok := res.json["errcode"]; ok && e != num(0) {
			t.Fatalf("%s: %s", path, res.raw)
		}
	}
	send(PathAsyncSend, tok, `{"msg":"a"}`)
	send(PathAsyncSend, tok, `{"msg":"b"}`)
	send(PathChatSend, tok, `{"msg":"a"}`)  // same body, other path: not a duplicate
	send(PathAsyncSend, tok, `{"msg":"a"}`) // duplicate 1
	send(PathRobotGroupSend, tok, `{"m":1}`)
	send(PathRobotGroupSend, tok, `{"m":1}`) // duplicate 2
	send(PathEcho, tok, `{"m":1}`)
	send(PathEcho, tok, `{"m":1}`) // echo is not a send

	robot := dingtalk.PathRobotSend + "?timestamp=1&sign=x"
	send(robot, "rt", `{"msgUuid":"u-1","text":{"content":"hi"}}`)
	send(robot, "rt", `{"msgUuid":"u-1","text":{"content":"hi"}}`) // replay, not executed
	send(robot, "rt", `{"text":{"content":"hi"}}`)
	send(robot, "rt", `{"text":{"content":"hi"}}`) // duplicate 3

	if got := s.Duplicates(); got != 3 {
		t.Errorf("Duplicates() = %d, want 3", got)
	}
	if got := s.Executions(dingtalk.PathRobotSend); got != 3 {
		t.Errorf("Executions(robot) = %d, want 3", got)
	}
	if got := s.Executions(PathAsyncSend); got != 3 {
		t.Errorf("Executions(asyncsend) = %d, want 3", got)
	}
	if q := s.Requests(dingtalk.PathRobotSend)[0].RawQuery; !strings.Contains(q, "sign=x") {
		t.Errorf("robot RawQuery = %q, want the sign kept", q)
	}

	s.ResetCounters()
	send(PathAsyncSend, tok, `{"msg":"a"}`)
	send(robot, "rt", `{"msgUuid":"u-1","text":{"content":"hi"}}`) // msgUuid memory survives
	if got, ex := s.Duplicates(), s.Executions(dingtalk.PathRobotSend); got != 0 || ex != 0 {
		t.Errorf("after ResetCounters: Duplicates() = %d, robot Executions = %d; want 0, 0", got, ex)
	}
}

func TestQPSLimit(t *testing.T) {
	clk := newClock(t0) // 00:00:00.100
	s := NewServer(t, Options{Now: clk.Now})
	c := newClient(t)
	tok := fetchToken(t, c, s)
	s.SetQPSLimit(2)
	user := []byte(`{"userid":"u1"}`)

	step := func(advance time.Duration, want string) {
		t.Helper()
		clk.Advance(advance)
		res := call(t, c, s, http.MethodPost, PathUserGet, tok, user)
		if got := errKey(res); got != want {
			t.Errorf("at %s: %s, want %s", clk.Now().Format("15:04:05.000"), got, want)
		}
	}
	const ok, throttled = "OK errcode=0", "OK errcode=88/90018"
	step(0, ok)
	step(0, ok)
	step(0, throttled)                    // 3rd call in 00:00:00: penalty until 00:00:01.100
	step(950*time.Millisecond, throttled) // 00:00:01.050: new window but still penalised
	step(100*time.Millisecond, ok)        // 00:00:01.150: the rejected call did not extend the penalty
	step(0, ok)
	step(0, throttled) // penalty until 00:00:02.150
	step(999*time.Millisecond, throttled)
	step(time.Millisecond, ok)

	if got := s.Throttled(); got != 4 {
		t.Errorf("Throttled() = %d, want 4", got)
	}
	if got := s.Executions(PathUserGet); got != 5 {
		t.Errorf("Executions = %d, want 5", got)
	}

	// Paths are limited separately; api paths answer 403; token fetches are not limited.
	for range 3 {
		fetchToken(t, c, s)
	}
	var got []string
	for range 3 {
		got = append(got, errKey(call(t, c, s, http.MethodGet, PathContactUsers+"u1", tok, nil)))
	}
	want := []string{"OK", "OK", "Forbidden code=" + dingtalk.CodeQPSLimitAppAPI}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("api answers (-want +got):\n%s", diff)
	}

	s.SetQPSLimit(0)
	for range 5 {
		step(0, ok)
	}
}

func TestHang_UnblocksOnClose(t *testing.T) {
	s := New(Options{})
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := newClient(t)
	tok := fetchToken(t, c, s)

	hanging := make(chan struct{})
	s.mu.Lock()
	s.testHookHang = func() { close(hanging) }
	s.mu.Unlock()
	s.Script(PathUserGet, Hang())

	errc := make(chan error, 1)
	go func() {
		_, err := tryCall(c, s, http.MethodPost, PathUserGet, tok, []byte(`{"userid":"u1"}`))
		errc <- err
	}()
	select {
	case <-hanging:
	case err := <-errc:
		t.Fatalf("request returned (%v) instead of hanging", err)
	case <-time.After(10 * time.Second):
		t.Fatal("handler never started hanging")
	}

	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	select {
	case err := <-errc:
		if err == nil {
			t.Error("hung request succeeded after Close, want an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("hung request still blocked after Close")
	}
	<-closed
	s.Close() // idempotent
	if err := s.Start("127.0.0.1:0"); err == nil {
		t.Error("Start after Close succeeded, want an error")
	}
}

func TestHang_UnblocksWhenClientLeaves(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	tok := fetchToken(t, c, s)
	hanging := make(chan struct{})
	s.mu.Lock()
	s.testHookHang = func() { close(hanging) }
	s.mu.Unlock()
	s.Script(PathEcho, Hang())

	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost,
			s.URL()+PathEcho+"?access_token="+tok, strings.NewReader("x"))
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	select {
	case <-hanging:
	case err := <-errc:
		t.Fatalf("request returned (%v) instead of hanging", err)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled request: %v, want context.Canceled", err)
	}
	// The server stays usable.
	res := call(t, c, s, http.MethodPost, PathEcho, tok, []byte("y"))
	checkFields(t, res, map[string]any{"length": num(1)})
}

func TestSecretLeaks(t *testing.T) {
	const secret = "Zs3cr3t-value"
	s := NewServer(t, Options{AppSecret: secret})
	c := newClient(t)

	// Token endpoints may carry the secret.
	call(t, c, s, http.MethodGet, tokenQuery(DefaultAppKey, secret), "", nil)
	call(t, c, s, http.MethodPost, dingtalk.PathOAuth2Token, "",
		[]byte(`{"appKey":"`+DefaultAppKey+`","appSecret":"`+secret+`"}`))
	tok := fetchToken(t, c, s)
	if got := s.SecretLeaks(); got != 0 {
		t.Fatalf("SecretLeaks() = %d after token fetches, want 0", got)
	}

	call(t, c, s, http.MethodPost, PathEcho+"?appsecret="+secret, tok, nil)     // query
	call(t, c, s, http.MethodPost, PathEcho, tok, []byte(`{"s":"`+secret+`"}`)) // body
	call(t, c, s, http.MethodGet, PathContactUsers+secret, tok, nil)            // path
	call(t, c, s, http.MethodPost, PathEcho, tok, []byte("clean"))              // none

	req, _ := http.NewRequest(http.MethodGet, s.URL()+PathContactUsers+"u1", nil)
	req.Header.Set(dingtalk.HeaderAccessToken, tok)
	req.Header.Set("X-App-Secret", secret)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	if got := s.SecretLeaks(); got != 4 {
		t.Errorf("SecretLeaks() = %d, want 4", got)
	}
}

func TestRequests_KeepsLast64(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	tok := fetchToken(t, c, s)
	for i := range 70 {
		call(t, c, s, http.MethodPost, PathEcho, tok, []byte(strconv.Itoa(i)))
	}
	rs := s.Requests(PathEcho)
	if len(rs) != 64 {
		t.Fatalf("len(Requests) = %d, want 64", len(rs))
	}
	if first, last := string(rs[0].Body), string(rs[63].Body); first != "6" || last != "69" {
		t.Errorf("bodies %q..%q, want 6..69", first, last)
	}
	r := rs[0]
	if r.Method != http.MethodPost || r.Path != PathEcho || !strings.Contains(r.RawQuery, tok) {
		t.Errorf("request = %s %s ?%s, want POST %s with the token", r.Method, r.Path, r.RawQuery, PathEcho)
	}
	r.Header.Set("Mutated", "1")
	if s.Requests(PathEcho)[0].Header.Get("Mutated") != "" {
		t.Error("Requests returned a shared header")
	}
	if got := s.Hits(PathEcho); got != 70 {
		t.Errorf("Hits = %d, want 70", got)
	}
	s.ResetCounters()
	if s.Hits(PathEcho) != 0 || len(s.Requests(PathEcho)) != 0 || s.TotalHits() != 0 || s.TokenFetches() != 0 {
		t.Error("ResetCounters left counters non-zero")
	}
}

func TestConcurrentUse(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	tok := fetchToken(t, c, s)
	s.SetChaos(Chaos{Faults: []Weighted{{Fault: SystemBusy(), P: 0.2}, {Fault: ResetAfterExec(), P: 0.1}}})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 20 {
				_, _ = tryCall(c, s, http.MethodPost, PathAsyncSend, tok, fmt.Appendf(nil, `{"g":%d,"i":%d}`, g, i))
				_ = s.Hits(PathAsyncSend) + s.Duplicates() + len(s.Requests(PathAsyncSend))
			}
		})
	}
	wg.Wait()
	if got := s.Hits(PathAsyncSend); got != 160 {
		t.Errorf("Hits = %d, want 160", got)
	}
	if got := s.Duplicates(); got != 0 {
		t.Errorf("Duplicates = %d, want 0 (all bodies differ)", got)
	}
}

func TestStartTwice(t *testing.T) {
	s := NewServer(t, Options{})
	if err := s.Start("127.0.0.1:0"); err == nil {
		t.Error("second Start succeeded, want an error")
	}
	if !strings.HasPrefix(s.URL(), "http://127.0.0.1:") {
		t.Errorf("URL() = %q", s.URL())
	}
	if New(Options{}).URL() != "" {
		t.Error("URL() before Start is not empty")
	}
}

func TestDeadAndBrokenAddr(t *testing.T) {
	c := newClient(t)
	dead := DeadAddr(t)
	_, err := c.Get("http://" + dead + "/")
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" {
		t.Errorf("DeadAddr error = %v, want a dial error", err)
	}
	if _, err := c.Get("http://" + BrokenAddr(t) + "/"); err == nil {
		t.Error("request to BrokenAddr succeeded")
	}
}

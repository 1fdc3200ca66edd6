package dingtalk

import (
	"net/http"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	const jsonCT = "application/json;charset=utf-8"
	tests := []struct {
		name   string
		status int
		ct     string
		body   string
		want   Class
		reason string
	}{
		{"oapi ok", 200, jsonCT, `{"errcode":0,"errmsg":"ok","task_id":1}`, Success, ReasonSuccess},
		{"oapi ok string errcode", 200, jsonCT, `{"errcode":"0","errmsg":"ok"}`, Success, ReasonSuccess},
		{"oapi system busy", 200, jsonCT, `{"errcode":-1,"errmsg":"系统繁忙"}`, ServerError, ReasonSystemBusy},
		{"oapi system busy string", 200, jsonCT, `{"errcode":"-1","errmsg":"系统繁忙"}`, ServerError, ReasonSystemBusy},
		{"oapi 90018", 200, jsonCT, `{"errcode":90018,"errmsg":"qps"}`, Throttled, ReasonRateLimited},
		{"oapi 90002", 200, jsonCT, `{"errcode":90002,"errmsg":"qps"}`, Throttled, ReasonRateLimited},
		{"oapi 90019", 200, jsonCT, `{"errcode":90019,"errmsg":"qps"}`, Throttled, ReasonRateLimited},
		{"88 + 90018", 200, jsonCT, `{"errcode":88,"sub_code":"90018","sub_msg":"x","errmsg":"ding talk error[subcode=90018]","request_id":"a"}`, Throttled, ReasonRateLimited},
		{"88 + 90018 in errmsg only", 200, jsonCT, `{"errcode":88,"errmsg":"ding talk error[subcode=90018,submsg=x]"}`, Throttled, ReasonRateLimited},
		{"88 + 40014", 200, jsonCT, `{"errcode":88,"sub_code":"40014","sub_msg":"不合法的access_token","errmsg":"ding talk error[subcode=40014]"}`, TokenInvalid, ReasonTokenInvalid},
		{"88 + 42001 numeric sub_code", 200, jsonCT, `{"errcode":88,"sub_code":42001}`, TokenInvalid, ReasonTokenInvalid},
		{"88 + 40000 blank token is no refresh", 200, jsonCT, `{"errcode":88,"sub_code":"40000","sub_msg":"access_token is blank"}`, Business, ReasonBusiness},
		{"88 other", 200, jsonCT, `{"errcode":88,"sub_code":"60011"}`, Business, ReasonBusiness},
		{"oapi 40014", 200, jsonCT, `{"errcode":40014,"errmsg":"不合法的access_token"}`, TokenInvalid, ReasonTokenInvalid},
		{"oapi 42001", 200, jsonCT, `{"errcode":42001,"errmsg":"access_token超时"}`, TokenInvalid, ReasonTokenInvalid},
		{"oapi 40001", 200, jsonCT, `{"errcode":40001,"errmsg":"x"}`, TokenInvalid, ReasonTokenInvalid},
		{"oapi 41001 missing is no refresh", 200, jsonCT, `{"errcode":41001,"errmsg":"x"}`, Business, ReasonBusiness},
		{"oapi quota", 200, jsonCT, `{"errcode":90020,"errmsg":"本月api调用量已超过限制"}`, Business, ReasonQuota},
		{"oapi no permission", 200, jsonCT, `{"errcode":60011,"errmsg":"没有调用该接口的权限"}`, Business, ReasonBusiness},
		{"oapi bad parameter", 200, jsonCT, `{"errcode":40035,"errmsg":"缺少参数"}`, Business, ReasonBusiness},
		{"oapi unknown path", 200, jsonCT, `{"errcode":404,"errmsg":"请求的URI地址不存在"}`, Business, ReasonUnknownAPI},
		{"topapi unknown method", 200, jsonCT, `{"errcode":22,"sub_msg":"不合法ApiName","errmsg":"Invalid method[x]","request_id":"a"}`, Business, ReasonUnknownAPI},
		{"api unknown path 404", 404, "text/plain", `404 page not found`, Business, ReasonUnknownAPI},
		{"api unknown method 405", 405, "", ``, Business, ReasonUnknownAPI},
		{"api 404 with a code is an answer", 404, jsonCT, `{"code":"userNotFound","message":"x"}`, Business, ReasonBusiness},
		{"api 404 NotFound", 404, jsonCT, `{"code":"NotFound","message":"请求的URI地址不存在"}`, Business, ReasonUnknownAPI},
		{"api 404 InvalidAction.NotFound", 404, jsonCT, `{"code":"InvalidAction.NotFound","message":"x"}`, Business, ReasonUnknownAPI},
		{"robot token error", 200, jsonCT, `{"errcode":300005,"errmsg":"token is not exist"}`, Business, ReasonBusiness},
		{"api invalid auth 400", 400, jsonCT, `{"code":"InvalidAuthentication","requestid":"01A","message":"不合法的access_token"}`, TokenInvalid, ReasonTokenInvalid},
		{"api missing token", 400, jsonCT, `{"code":"AuthenticationFailed.MissingParameter","message":"x"}`, Business, ReasonBusiness},
		{"api 401 plain", 401, "text/plain", `Unauthorized`, TokenInvalid, ReasonTokenInvalid},
		{"api qps", 403, jsonCT, `{"code":"Forbidden.AccessDenied.QpsLimitForAppkeyAndApi","message":"x"}`, Throttled, ReasonRateLimited},
		{"api qps for api", 403, jsonCT, `{"code":"Forbidden.AccessDenied.QpsLimitForApi","message":"x"}`, Throttled, ReasonRateLimited},
		{"api qpm is not retried", 403, jsonCT, `{"code":"Forbidden.AccessDenied.QpmLimitForAppkeyAndApi","message":"x"}`, Business, ReasonMinuteLimit},
		{"90006 is not retried", 200, jsonCT, `{"errcode":90006,"errmsg":"x"}`, Business, ReasonMinuteLimit},
		{"90005 is not retried", 200, jsonCT, `{"errcode":90005,"errmsg":"x"}`, Business, ReasonMinuteLimit},
		{"robot too fast", 200, jsonCT, `{"errcode":130101,"errmsg":"send too fast, exceed 20 times per minute"}`, Business, ReasonRobotThrottled},
		{"robot too many", 200, jsonCT, `{"errcode":660026,"errmsg":"sending too many messages per minute"}`, Business, ReasonRobotThrottled},
		{"api system.busy 429", 429, jsonCT, `{"code":"system.busy","message":"system busy"}`, Throttled, ReasonHTTP429},
		{"api quota", 403, jsonCT, `{"code":"Forbidden.AccessDenied.ApiCountLimitForOrg","message":"x"}`, Business, ReasonQuota},
		{"api permission", 403, jsonCT, `{"code":"Forbidden.AccessDenied.AccessTokenPermissionDenied"}`, Business, ReasonBusiness},
		{"api 500 unknownError", 500, jsonCT, `{"code":"unknownError","message":"x"}`, ServerError, ReasonHTTP5xx},
		{"api 504 service.timeout", 504, jsonCT, `{"code":"service.timeout"}`, ServerError, ReasonHTTP5xx},
		{"api 200 success", 200, jsonCT, `{"result":{"userid":"u1"}}`, Success, ReasonSuccess},
		{"api 200 numeric code is data", 200, jsonCT, `{"code":200,"data":{}}`, Success, ReasonSuccess},
		{"429 plain", 429, "text/plain", "too many", Throttled, ReasonHTTP429},
		{"429 html is a throttle, not a ban", 429, "text/html", "<html>429</html>", Throttled, ReasonHTTP429},
		{"429 with oapi business errcode", 429, jsonCT, `{"errcode":12345}`, Throttled, ReasonHTTP429},
		{"502 html", 502, "text/html", "<html>502 Bad Gateway<hr><center>tengine</center></html>", ServerError, ReasonHTTP5xx},
		{"503 empty", 503, "", "", ServerError, ReasonHTTP5xx},
		{"501 is not transient", 501, "", "", Business, ReasonBusiness},
		{"200 errcode 0 on 503", 503, jsonCT, `{"errcode":0}`, ServerError, ReasonHTTP5xx},
		{"ip ban html", 403, "text/html; charset=utf-8", "<html><body>访问被拒绝</body></html>", IPBan, ReasonIPBan},
		{"ip ban html on 200 without type", 200, "", "  <!DOCTYPE html><html></html>", IPBan, ReasonIPBan},
		{"ip ban json", 200, jsonCT, `{"status":1111,"wait":5,"source":"x5","punish":"deny","uuid":"x"}`, IPBan, ReasonIPBan},
		{"400 html is not a ban", 400, "text/html", "<html>400 Bad Request</html>", Business, ReasonBusiness},
		{"200 non-JSON text", 200, "text/plain", "hello", Success, ReasonSuccess},
		{"truncated success prefix", 200, jsonCT, `{"errcode":0,"errmsg":"ok","result":{"list":[1,2,3`, Success, ReasonSuccess},
		{"truncated before errcode value", 200, jsonCT, `{"result":{"list":[1,2`, Success, ReasonSuccess},
		{"errcode after a big member", 200, jsonCT, `{"result":{"a":[{"b":"}"}]},"errcode":-1}`, ServerError, ReasonSystemBusy},
		{"escaped quote in string", 200, jsonCT, `{"errmsg":"a\"b","errcode":90018}`, Throttled, ReasonRateLimited},
		{"nested errcode ignored", 200, jsonCT, `{"data":{"errcode":-1},"errcode":0}`, Success, ReasonSuccess},
		{"errcode bool", 200, jsonCT, `{"errcode":true}`, Success, ReasonSuccess},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := Classify(tt.status, tt.ct, []byte(tt.body))
			if got.Class != tt.want || got.Reason != tt.reason {
				t.Errorf("Classify(%d, %q) = %v/%s, want %v/%s", tt.status, tt.body, got.Class, got.Reason, tt.want, tt.reason)
			}
		})
	}
}

func TestClassifyDetails(t *testing.T) {
	t.Parallel()
	r := Classify(200, "application/json", []byte(`{"errcode":88,"sub_code":"90002","errmsg":"ding talk error[subcode=90002,submsg=您的服务器调用钉钉开放平台当前接口的所有请求都被暂时禁用了, apiPath(dingtalk.oapi.process.listbyuserid), 从 2018-12-09 15:01:10 到 2018-12-09 15:01:10 请求总次数超过了 100 次, 处罚将在 2018-12-09 15:01:11 结束.]"}`))
	want := time.Date(2018, 12, 9, 7, 1, 11, 0, time.UTC)
	if r.Class != Throttled || !r.PenaltyEnd.Equal(want) {
		t.Errorf("90002: got %v penalty end %v, want throttled until %v", r.Class, r.PenaltyEnd, want)
	}
	if r.Errcode != ErrcodeQPSAPI {
		t.Errorf("90002: errcode %d, want %d", r.Errcode, ErrcodeQPSAPI)
	}
	r = Classify(200, "application/json", []byte(`{"status":1111,"wait":5}`))
	if r.Wait != 5*time.Minute {
		t.Errorf("ip ban wait = %v, want 5m", r.Wait)
	}
	r = Classify(200, "application/json", []byte(`{"status":1111}`))
	if r.Class != IPBan || r.Wait != 0 {
		t.Errorf("ip ban without wait = %v %v, want ip_ban 0", r.Class, r.Wait)
	}
	r = Classify(403, "application/json", []byte(`{"code":"Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"}`))
	if r.Code != "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi" {
		t.Errorf("api code = %q", r.Code)
	}
}

func TestIdempotency(t *testing.T) {
	t.Parallel()
	h := http.Header{}
	tests := []struct {
		name   string
		path   string
		header string
		body   string
		want   bool
	}{
		{"robot with msgUuid", "/robot/send", "", `{"msgtype":"text","msgUuid":"u-1"}`, true},
		{"robot without msgUuid", "/robot/send", "", `{"msgtype":"text"}`, false},
		{"robot empty msgUuid", "/robot/send", "", `{"msgUuid":""}`, false},
		{"robot nested msgUuid", "/robot/send", "", `{"text":{"msgUuid":"u"}}`, false},
		{"clientToken field", "/v1.0/notable/bases/x/sheets/y/records", "", `{"clientToken":"c-1","records":[]}`, true},
		{"msgUuid is only the robot's key", "/topapi/message/corpconversation/asyncsend_v2", "", `{"msgUuid":"u"}`, false},
		{"x-client-token header", "/v1.0/calendar/users/u/calendars/c/events", "tok", `{}`, true},
		{"send without key", "/topapi/message/corpconversation/asyncsend_v2", "", `{"agent_id":1}`, false},
	}
	for _, tt := range tests {
		h := h.Clone()
		if tt.header != "" {
			h.Set(HeaderClientToken, tt.header)
		}
		if got := HasIdempotencyKey(tt.path, h, []byte(tt.body)); got != tt.want {
			t.Errorf("%s: HasIdempotencyKey = %v, want %v", tt.name, got, tt.want)
		}
	}
	for _, p := range []string{"/topapi/v2/user/get", "/topapi/v2/department/listsub", "/attendance/list"} {
		if !IsReadEndpoint(p) {
			t.Errorf("IsReadEndpoint(%q) = false", p)
		}
	}
	if IsReadEndpoint("/topapi/message/corpconversation/asyncsend_v2") {
		t.Error("asyncsend_v2 counted as a read")
	}
	if UpstreamFor("/v1.0/contact/users/1") != API || UpstreamFor("/v2.0/x") != API || UpstreamFor("/topapi/v2/user/get") != OAPI || UpstreamFor("/v1.0") != OAPI {
		t.Error("UpstreamFor misroutes")
	}
}

func BenchmarkClassify(b *testing.B) {
	body := []byte(`{"errcode":0,"errmsg":"ok","result":{"userid":"manager4220","name":"张三","dept_id_list":[1,2,3],"unionid":"z21HjQliSzpw0Yxxx"},"request_id":"4jzllmte0wau"}`)
	b.ReportAllocs()
	for b.Loop() {
		if Classify(200, "application/json", body).Class != Success {
			b.Fatal("not success")
		}
	}
}

// A kept send waits again only on answers that refused it unexecuted and may
// pass later; every other answer is final for it.
func TestRefusedForNow(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
		body   string
		want   bool
	}{
		{"qps throttle", 200, `{"errcode":90018,"errmsg":"qps"}`, true},
		{"api 429", 429, `{"code":"system.busy","message":"busy"}`, true},
		{"minute limit", 200, `{"errcode":90006,"errmsg":"per minute"}`, true},
		{"robot block", 200, `{"errcode":130101,"errmsg":"send too fast, exceed 20 times per minute"}`, true},
		{"robot block documented", 200, `{"errcode":410100,"errmsg":"too fast"}`, true},
		{"app token expired", 200, `{"errcode":42001,"errmsg":"expired"}`, true},
		{"ip ban page", 200, `{"status":1111,"wait":5,"source":"x5","punish":"deny"}`, true},
		{"success", 200, `{"errcode":0,"errmsg":"ok","task_id":1}`, false},
		{"system busy may have executed", 200, `{"errcode":-1,"errmsg":"系统繁忙"}`, false},
		{"robot signature", 200, `{"errcode":310000,"errmsg":"sign not match"}`, false},
		{"robot too long", 200, `{"errcode":460101,"errmsg":"message too long, exceed 20000 bytes"}`, false},
		{"robot token", 200, `{"errcode":300005,"errmsg":"token is not exist"}`, false},
		{"monthly quota", 200, `{"errcode":90020,"errmsg":"quota"}`, false},
		{"no such user", 200, `{"errcode":60121,"errmsg":"找不到该用户"}`, false},
		{"unknown api", 404, `{"errcode":404,"errmsg":"请求的URI地址不存在"}`, false},
	}
	for _, tt := range tests {
		r := Classify(tt.status, "application/json", []byte(tt.body))
		if got := r.RefusedForNow(); got != tt.want {
			t.Errorf("%s: %+v RefusedForNow = %v, want %v", tt.name, r, got, tt.want)
		}
	}
}

package dingtalk

import (
	"bytes"
	"net/http"
	"testing"
)

var reasonClass = map[string]Class{
	ReasonSuccess: Success, ReasonBusiness: Business, ReasonQuota: Business,
	ReasonRateLimited: Throttled, ReasonHTTP429: Throttled, ReasonTokenInvalid: TokenInvalid,
	ReasonSystemBusy: ServerError, ReasonHTTP5xx: ServerError, ReasonIPBan: IPBan,
	ReasonMinuteLimit: Business, ReasonRobotThrottled: Business, ReasonUnknownAPI: Business,
}

// FuzzClassify: any status, content type and body (or a prefix of one) is
// classified without panicking, into the fixed vocabulary, with a reason
// that matches its class and a request id safe for a log line.
// Seed corpus: testdata/fuzz/FuzzClassify.
func FuzzClassify(f *testing.F) {
	f.Add(200, "application/json", []byte(`{"errcode":0,"errmsg":"ok","request_id":"4jzllmte0wau"}`))
	f.Add(200, "application/json", []byte(`{"errcode":88,"sub_code":"90018","errmsg":"ding talk error[subcode=90018]"}`))
	f.Add(403, "application/json", []byte(`{"code":"Forbidden.AccessDenied.QpsLimitForAppkeyAndApi","requestid":"01A","message":"x"}`))
	f.Add(200, "text/html", []byte(`<html>banned</html>`))
	f.Add(200, "application/json", []byte(`{"status":1111,"wait":5}`))
	f.Add(200, "application/json", []byte(`{"errcode":"40014"`))
	f.Add(502, "", []byte(``))
	f.Fuzz(func(t *testing.T, status int, ct string, body []byte) {
		r := Classify(status, ct, body)
		want, ok := reasonClass[r.Reason]
		if !ok {
			t.Fatalf("reason %q outside the vocabulary", r.Reason)
		}
		if want != r.Class {
			t.Fatalf("reason %q with class %v", r.Reason, r.Class)
		}
		if len(r.RequestID) > 64 {
			t.Fatalf("request id of %d bytes", len(r.RequestID))
		}
		for i := 0; i < len(r.RequestID); i++ {
			c := r.RequestID[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
				t.Fatalf("request id %q has byte %q", r.RequestID, c)
			}
		}
		if r.Wait < 0 {
			t.Fatalf("negative ban length %v", r.Wait)
		}
		// Any prefix (a body cut at the inspection limit) classifies too.
		Classify(status, ct, body[:len(body)/2])
	})
}

// FuzzHasIdempotencyKey: any path, header value and body are judged without
// panicking; a non-empty x-client-token always counts; a body without the
// key's name never does.
// Seed corpus: testdata/fuzz/FuzzHasIdempotencyKey.
func FuzzHasIdempotencyKey(f *testing.F) {
	f.Add(PathRobotSend, "", []byte(`{"msgtype":"text","msgUuid":"u-1"}`))
	f.Add("/v1.0/workflow/processInstances", "", []byte(`{"clientToken":"t"}`))
	f.Add("/topapi/message/corpconversation/asyncsend_v2", "", []byte(`{"agent_id":1,"msg":{"clientToken":"nested"}}`))
	f.Add("/x", "tok", []byte(`not json`))
	f.Add(PathRobotSend, "", []byte(`{"msgUuid":""}`))
	f.Fuzz(func(t *testing.T, path, clientToken string, body []byte) {
		h := http.Header{}
		if clientToken != "" {
			h.Set(HeaderClientToken, clientToken)
		}
		got := HasIdempotencyKey(path, h, body)
		if h.Get(HeaderClientToken) != "" && !got {
			t.Fatalf("x-client-token %q not counted", clientToken)
		}
		key := keyClientToken
		if path == PathRobotSend {
			key = keyMsgUUID
		}
		if h.Get(HeaderClientToken) == "" && !bytes.Contains(body, key) && got {
			t.Fatalf("counted a key that is not in %q", body)
		}
		if got != HasIdempotencyKey(path, h, body) {
			t.Fatal("not deterministic")
		}
	})
}

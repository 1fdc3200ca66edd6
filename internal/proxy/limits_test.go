package proxy

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestBadPath(t *testing.T) {
	for _, tc := range []struct {
		target string
		want   string // a part of the message; "" for none
	}{
		{"/topapi/v2/user/get", ""},
		{"/v1.0/robot/oToMessages/batchSend", ""},
		{"/gettoken?appkey=a.b", ""},
		{"/file/v1.0/a..b/.hidden/x.", ""}, // dots inside names are fine
		{"/topapi/..", "dot segment"},
		{"/topapi/../gettoken", "dot segment"},
		{"/./topapi", "dot segment"},
		{"/topapi/.", "dot segment"},
		{"/topapi/%2e%2E/x", "dot segment"},
		{"/v1.0%2Fx", "encoded slash"},
		{"/v1.0%2fx", "encoded slash"},
		{"/a%5Cb", "backslash"},
		{"/a%5cb", "backslash"},
		{"/a\\b", "backslash"},
		{"/a%00b", "control character"},
		{"/a%0d%0aX-Injected:%201", "control character"},
		{"/a%7Fb", "control character"},
		{"*", "must start with /"},
		{"topapi", "must start with /"},
	} {
		u, err := url.ParseRequestURI(tc.target)
		if err != nil {
			u = &url.URL{Path: tc.target}
		}
		got := badPath(u)
		if tc.want == "" && got != "" || tc.want != "" && !strings.Contains(got, tc.want) {
			t.Errorf("badPath(%q) = %q, want %q", tc.target, got, tc.want)
		}
	}
}

func BenchmarkBadPath(b *testing.B) {
	u, _ := url.ParseRequestURI("/topapi/message/corpconversation/asyncsend_v2?access_token=x")
	b.ReportAllocs()
	for b.Loop() {
		if badPath(u) != "" {
			b.Fatal("rejected")
		}
	}
}

func TestRedactPanic(t *testing.T) {
	px := &Proxy{opts: Options{AppSecret: "s3cret-value"}}
	for _, tc := range []struct {
		v    any
		want string
	}{
		{"boom", "boom"},
		{"bad s3cret-value here", "bad REDACTED here"},
		{"GET /x?access_token=abc123&y=1 failed", "GET /x?access_token=REDACTED&y=1 failed"},
		{"access_token=abc\naccess_token=def", "access_token=REDACTED\naccess_token=REDACTED"},
		{"access_token=", "access_token="},
		{&url.Error{Op: "Get", URL: "https://oapi.dingtalk.com/x?access_token=t0k", Err: errors.New("eof")}, `Get "https://oapi.dingtalk.com/x?REDACTED": eof`},
	} {
		if got := px.redactPanic(tc.v); got != tc.want {
			t.Errorf("redactPanic(%v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}

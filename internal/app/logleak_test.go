package app_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// TestNoSecretOrTokenInDebugLogs runs a session full of token traffic at
// debug level (fetches through GET /gettoken, whose URL carries the secret,
// failed fetches, revocations, refreshes, clients' own token calls, retries
// and errors) and checks that no log line holds the secret or any token.
func TestNoSecretOrTokenInDebugLogs(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	s := newStack(t, zap.New(core), func(c *config.Config) { c.Token.Endpoint = config.EndpointGetToken })
	// The first fetch (made at start) may already be done; script failures
	// for the later ones: a reset mid-fetch and a DingTalk error answer.
	s.fake.Script(dingtalk.PathGetToken, dingtalktest.ResetBeforeExec(), dingtalktest.Errcode(dingtalk.ErrcodeBadAppKey, "不合法的appKey或appSecret"))
	s.fake.ExpireTokens()
	s.app.Tokens().Invalidate(func() string { tok, _ := s.app.Tokens().Peek(); return tok }())
	s.do(http.MethodGet, dingtalktest.PathDeptList, nil)          // fetch fails: reset
	s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{}`)) // within the fetch backoff, or fails with 40096
	waitFor(t, "a token after the scripted failures", func() bool {
		resp, body := s.do(http.MethodGet, dingtalktest.PathDeptList, nil)
		return resp.StatusCode == 200 && errcodeOf(t, body) == 0
	})
	s.fake.ExpireTokens() // revoked mid-run: one refresh
	s.fake.Script(dingtalktest.PathUserGet, dingtalktest.SystemBusy(), dingtalktest.ResetBeforeExec())
	s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"u1"}`))
	s.do(http.MethodGet, dingtalktest.PathContactUsers+"u1", nil)
	s.do(http.MethodGet, "/gettoken?appkey="+dingtalktest.DefaultAppKey+"&appsecret="+dingtalktest.DefaultAppSecret, nil)
	s.do(http.MethodPost, dingtalk.PathOAuth2Token, []byte(`{"appKey":"`+dingtalktest.DefaultAppKey+`","appSecret":"`+dingtalktest.DefaultAppSecret+`"}`))
	s.fake.Script(dingtalktest.PathAsyncSend, dingtalktest.ResetAfterExec())
	s.do(http.MethodPost, dingtalktest.PathAsyncSend, []byte(`{"agent_id":1}`))

	secrets := map[string]bool{dingtalktest.DefaultAppSecret: true}
	for _, p := range []string{dingtalktest.PathDeptList, dingtalktest.PathUserGet, dingtalktest.PathAsyncSend, dingtalktest.PathContactUsers + "u1"} {
		for _, r := range s.fake.Requests(p) {
			q, _ := url.ParseQuery(r.RawQuery)
			if tok := q.Get(dingtalk.QueryAccessToken); tok != "" {
				secrets[tok] = true
			}
			if tok := r.Header.Get(dingtalk.HeaderAccessToken); tok != "" {
				secrets[tok] = true
			}
		}
	}
	if len(secrets) < 3 {
		t.Fatalf("only %d secrets collected: the session did not refresh tokens as planned", len(secrets))
	}
	entries := logs.All()
	if len(entries) < 10 {
		t.Fatalf("only %d log entries: debug logging is not reaching the observer", len(entries))
	}
	enc := zapcore.NewJSONEncoder(zap.NewDevelopmentEncoderConfig())
	var sawFetchFailure bool
	for _, e := range entries {
		buf, err := enc.EncodeEntry(e.Entry, e.Context)
		if err != nil {
			t.Fatal(err)
		}
		line := buf.String()
		buf.Free()
		if strings.Contains(line, "token fetch failed") {
			sawFetchFailure = true
		}
		for sec := range secrets {
			if strings.Contains(line, sec) {
				t.Errorf("log line holds a secret or token: %s", line)
			}
		}
	}
	if !sawFetchFailure {
		t.Error("no failed token fetch was logged: the dangerous path was not exercised")
	}
}

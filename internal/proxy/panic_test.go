package proxy_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/retry"
)

// servedStatuses is a proxy.Observer keeping the statuses served.
type servedStatuses struct{ s []int }

func (o *servedStatuses) Served(_ string, status int, _ string, _ *call.Facts, _ time.Duration) {
	o.s = append(o.s, status)
}

// panicky is a transport that panics on every other call: a stand-in for
// a bug anywhere below the handler.
type panicky struct{ calls atomic.Int64 }

func (p *panicky) RoundTrip(r *http.Request) (*http.Response, error) {
	if p.calls.Add(1)%2 == 1 {
		panic("boom")
	}
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(`{"errcode":0}`)), Request: r}, nil
}

// TestPanicBecomes502: a panic while serving a request answers that request
// 502 with a DingTalk-shaped body and a log line, and the next request is
// served as usual.
func TestPanicBecomes502(t *testing.T) {
	core, logs := observer.New(zapcore.ErrorLevel)
	up, _ := url.Parse("http://127.0.0.1:1")
	served := &servedStatuses{}
	loop := retry.NewLoop(retry.Policy{MaxAttempts: 1}, retry.Options{})
	px := proxy.New(proxy.Options{
		OAPI: up, API: up,
		Path:     loop.Layer(loop.Send(&panicky{})),
		Logger:   zap.New(core),
		Observer: served,
	}, proxy.Policy{MaxBodyBytes: 1 << 20, MaxRoutes: 8})
	srv := httptest.NewServer(px)
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/department/list")
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Errcode int    `json:"errcode"`
		Errmsg  string `json:"errmsg"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("502 body is not JSON: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || body.Errcode != -1 || body.Errmsg == "" {
		t.Errorf("after a panic: HTTP %d %+v, want 502 errcode -1", resp.StatusCode, body)
	}
	if logs.FilterMessage("panic serving a request: answered 502").Len() != 1 {
		t.Errorf("no log line for the panic")
	}
	resp, err = http.Get(srv.URL + "/department/list")
	if err != nil {
		t.Fatalf("the server stopped serving after a panic: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("next request: HTTP %d, want 200", resp.StatusCode)
	}
	if got := served.s; len(got) != 2 || got[0] != http.StatusBadGateway || got[1] != http.StatusOK {
		t.Errorf("Served saw %v, want [502 200]", got)
	}
}

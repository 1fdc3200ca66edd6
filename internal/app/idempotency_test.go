package app_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

func TestIdempotencySources(t *testing.T) {
	notIdempotent := func(path string) stackOpt {
		return func(c *config.Config) {
			f := false
			c.Routes = append(c.Routes, config.Route{Path: path, Idempotent: &f})
		}
	}
	s := newStack(t, nil, notIdempotent(dingtalktest.PathDeptList))
	robot := dingtalk.PathRobotSend + "?access_token=" + dingtalktest.DefaultRobotToken
	tests := []struct {
		name         string
		method, path string
		script       []dingtalktest.Fault
		body         string
		hdr          []string
		wantAttempts int
	}{
		{"GET is retried", http.MethodGet, dingtalktest.PathContactUsers + "u1", []dingtalktest.Fault{dingtalktest.SystemBusy()}, "", nil, 2},
		{"route idempotent:false forbids retrying a GET", http.MethodGet, dingtalktest.PathDeptList, []dingtalktest.Fault{dingtalktest.SystemBusy()}, "", nil, 1},
		{"route flag does not forbid a throttle retry", http.MethodGet, dingtalktest.PathDeptList, []dingtalktest.Fault{dingtalktest.Throttle()}, "", nil, 2},
		{"POST read from the catalogue is retried", http.MethodPost, dingtalktest.PathDeptListSub, []dingtalktest.Fault{dingtalktest.ResetAfterExec()}, `{"dept_id":1}`, nil, 2},
		{"send without a key is not retried", http.MethodPost, dingtalktest.PathChatSend, []dingtalktest.Fault{dingtalktest.SystemBusy()}, `{"chatid":"c","msg":{}}`, nil, 1},
		{"robot send with msgUuid is retried", http.MethodPost, robot, []dingtalktest.Fault{dingtalktest.ResetAfterExec()}, `{"msgtype":"text","text":{"content":"x"},"msgUuid":"m-1"}`, nil, 2},
		{"robot send without msgUuid is not", http.MethodPost, robot, []dingtalktest.Fault{dingtalktest.ResetAfterExec()}, `{"msgtype":"text","text":{"content":"y"}}`, nil, 1},
		{"x-client-token header makes a send retryable", http.MethodPost, dingtalktest.PathRobotGroupSend, []dingtalktest.Fault{dingtalktest.SystemBusy()}, `{"msgParam":"{}"}`, []string{dingtalk.HeaderClientToken, "ct-1"}, 2},
		{"clientToken field makes a send retryable", http.MethodPost, dingtalktest.PathRobotGroupSend, []dingtalktest.Fault{dingtalktest.SystemBusy()}, `{"clientToken":"ct-2","msgParam":"{}"}`, nil, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.path
			if i := bytes.IndexByte([]byte(path), '?'); i >= 0 {
				path = path[:i]
			}
			s.fake.Script(path, tt.script...)
			var body []byte
			if tt.body != "" {
				body = []byte(tt.body)
			}
			resp, ans := s.do(tt.method, tt.path, body, tt.hdr...)
			if got := attempts(t, resp); got != tt.wantAttempts {
				t.Errorf("attempts = %d, want %d (answer %d %s)", got, tt.wantAttempts, resp.StatusCode, ans)
			}
		})
	}
	if d := s.fake.Duplicates(); d != 0 {
		t.Errorf("duplicate sends = %d, want 0", d)
	}
}

func TestChunkedBodyBufferedAndReplayed(t *testing.T) {
	s := newStack(t, nil, idempotentRoute(dingtalktest.PathEcho))
	s.fake.Script(dingtalktest.PathEcho, dingtalktest.SystemBusy())
	want := bytes.Repeat([]byte("chunk "), 5000)
	pr, pw := io.Pipe()
	go func() {
		for i := 0; i < len(want); i += 1000 {
			pw.Write(want[i:min(i+1000, len(want))])
		}
		pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPost, s.proxy.URL+dingtalktest.PathEcho, pr) // no length: chunked
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if attempts(t, resp) != 2 {
		t.Fatalf("attempts = %d, want 2", attempts(t, resp))
	}
	for i, r := range s.fake.Requests(dingtalktest.PathEcho) {
		if !bytes.Equal(r.Body, want) {
			t.Errorf("attempt %d got %d bytes, want %d", i+1, len(r.Body), len(want))
		}
	}
}

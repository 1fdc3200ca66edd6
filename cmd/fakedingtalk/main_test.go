package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestCheckLoopback(t *testing.T) {
	tests := []struct {
		addr    string
		wantErr bool
	}{
		{"127.0.0.1:9999", false},
		{"127.1.2.3:0", false},
		{"[::1]:9999", false},
		{"localhost:9999", false},
		{"LocalHost:1", false},
		{"0.0.0.0:9999", true},
		{":9999", true},
		{"[::]:9999", true},
		{"10.0.0.1:9999", true},
		{"example.com:80", true},
		{"127.0.0.1", true}, // no port
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			t.Parallel()
			err := checkLoopback(tt.addr)
			if (err != nil) != tt.wantErr {
				t.Errorf("checkLoopback(%q) = %v, want error %v", tt.addr, err, tt.wantErr)
			}
		})
	}
}

func TestRun_RefusesBadFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"non-loopback", []string{"-listen", "0.0.0.0:0"}, "not loopback"},
		{"bad chaos", []string{"-listen", "127.0.0.1:0", "-chaos", "boom=0.1"}, `unknown fault "boom"`},
		{"negative qps", []string{"-listen", "127.0.0.1:0", "-qps", "-1"}, "-qps"},
		{"zero ttl", []string{"-listen", "127.0.0.1:0", "-token-ttl", "0s"}, "-token-ttl"},
		{"extra args", []string{"-listen", "127.0.0.1:0", "extra"}, "unexpected arguments"},
		{"negative robot per minute", []string{"-listen", "127.0.0.1:0", "-robot-per-minute", "-1"}, "-robot-per-minute"},
		{"negative robot max body", []string{"-listen", "127.0.0.1:0", "-robot-max-body", "-1"}, "-robot-max-body"},
		{"empty keyword", []string{"-listen", "127.0.0.1:0", "-robot-keywords", "alert,,x"}, "empty keyword"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(t.Context(), tt.args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("run(%q) = %v, want an error containing %q", tt.args, err, tt.wantErr)
			}
		})
	}
}

// lineWriter collects output and reports the first line through ready.
type lineWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	once  sync.Once
	ready chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if line, _, ok := strings.Cut(w.buf.String(), "\n"); ok {
		w.once.Do(func() { w.ready <- line })
	}
	return len(p), nil
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestRun_ServesAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	out := &lineWriter{ready: make(chan string, 1)}
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"-listen", "127.0.0.1:0", "-app-key", "k", "-app-secret", "s", "-qps", "5"}, out, io.Discard)
	}()
	var url string
	select {
	case line := <-out.ready:
		url = line[strings.LastIndex(line, " ")+1:]
	case err := <-errc:
		t.Fatalf("run returned early: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("run printed nothing")
	}

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(url + "/gettoken?appkey=k&appsecret=s")
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Errcode     int    `json:"errcode"`
		AccessToken string `json:"access_token"`
	}
	err = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if err != nil || body.Errcode != 0 || body.AccessToken == "" {
		t.Fatalf("gettoken = %+v, %v; want a token", body, err)
	}

	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("run = %v, want nil after cancel", err)
	}
	if s := out.String(); !strings.Contains(s, "app secret:  s") || !strings.Contains(s, "1 token fetches") {
		t.Errorf("output = %q, want credentials and the final counters", s)
	}
}

func TestRun_HelpDocumentsRobotFlags(t *testing.T) {
	var stderr bytes.Buffer
	if err := run(t.Context(), []string{"-h"}, io.Discard, &stderr); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("run -h = %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{"-robot-secret", "-robot-keywords", "-robot-per-minute", "-robot-max-body", "310000", "460101", "130101"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("-h output lacks %q:\n%s", want, stderr.String())
		}
	}
}

func TestParseKeywords(t *testing.T) {
	got, err := parseKeywords(" alert , 告警")
	if err != nil || !slices.Equal(got, []string{"alert", "告警"}) {
		t.Errorf("parseKeywords = %q, %v; want [alert 告警]", got, err)
	}
	if got, err := parseKeywords("  "); err != nil || got != nil {
		t.Errorf("parseKeywords(blank) = %q, %v; want none", got, err)
	}
}

// TestRun_RobotRules runs the fake with a robot secret, keywords, a minute
// of 2 and a body limit, and checks each answers as DingTalk does.
func TestRun_RobotRules(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	out := &lineWriter{ready: make(chan string, 1)}
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"-listen", "127.0.0.1:0", "-robot-token", "rt", "-robot-secret", "SECdemo",
			"-robot-keywords", "alert,告警", "-robot-per-minute", "2", "-robot-max-body", "200"}, out, io.Discard)
	}()
	var base string
	select {
	case line := <-out.ready:
		base = line[strings.LastIndex(line, " ")+1:]
	case err := <-errc:
		t.Fatalf("run returned early: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("run printed nothing")
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	send := func(query, content string) int {
		t.Helper()
		body := fmt.Sprintf(`{"msgtype":"text","text":{"content":%q}}`, content)
		resp, err := c.Post(base+"/robot/send?access_token=rt"+query, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r struct {
			Errcode int `json:"errcode"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			t.Fatal(err)
		}
		return r.Errcode
	}
	sign := func() string {
		ts, sign := dingtalktest.SignRobot("SECdemo", time.Now())
		return "&timestamp=" + ts + "&sign=" + sign
	}
	got := []int{
		send("", "alert 1"),                             // unsigned
		send(sign(), "cpu high"),                        // no keyword
		send(sign(), "alert "+strings.Repeat("x", 200)), // too long
		send(sign(), "alert 1"),
		send(sign(), "告警 2"),
		send(sign(), "alert 3"), // third in the minute
	}
	if want := []int{310000, 310000, 460101, 0, 0, 130101}; !slices.Equal(got, want) {
		t.Errorf("errcodes = %v, want %v", got, want)
	}

	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("run = %v, want nil after cancel", err)
	}
	s := out.String()
	for _, want := range []string{"robot rules: signed sends", "2 a minute", "robots: 2 messages posted, 3 refused (310000/460101), 1 throttled (130101), 1 blocks"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "SECdemo") {
		t.Errorf("output shows the robot secret:\n%s", s)
	}
}

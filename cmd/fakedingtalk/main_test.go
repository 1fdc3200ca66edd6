package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
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

package resilience

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

// ClientTimeout bounds one client call (every attempt of the SDK loop), more
// than dingproxy's retry.timeout (30 s) so calls it queues can complete.
const ClientTimeout = 35 * time.Second

// sdkAttempts is the common DingTalk SDK retry loop: 3 attempts.
const sdkAttempts = 3

// request is one client call.
type request struct {
	method, path string
	body         []byte
}

// outcome is what one client call ended with.
type outcome struct {
	ok       bool
	fallback bool // answered by dingproxy itself (X-Dingproxy-Fallback)
	attempts int  // upstream attempts the call cost, as the client can count them
	start    time.Time
	latency  time.Duration
	last     string // the last answer's status and the start of its body, or the error
}

// client calls DingTalk: straight (with its own token, fetched once) or
// through dingproxy.
type client struct {
	hc       *http.Client
	base     string
	token    string // set when calling DingTalk directly
	sdkRetry bool   // retry like the popular SDKs
}

// do makes one client call: one attempt, or up to three the SDK way, with
// the SDKs' exponential backoff of 100 ms, then 200 ms.
func (c *client) do(ctx context.Context, r request) outcome {
	start := time.Now()
	tries := 1
	if c.sdkRetry {
		tries = sdkAttempts
	}
	out := outcome{start: start}
	for n := 1; ; n++ {
		a := c.once(ctx, r)
		out.attempts += a.attempts
		out.ok, out.fallback, out.last = a.ok, a.fallback, a.last
		if a.ok || !a.retryable || n >= tries {
			break
		}
		t := time.NewTimer(time.Duration(50<<n) * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			out.latency = time.Since(start)
			return out
		}
	}
	out.latency = time.Since(start)
	return out
}

// answer is one HTTP call's result.
type answer struct {
	ok, fallback bool
	// retryable is what an SDK retry loop thinks: network errors, 5xx,
	// "system busy" and throttle codes, POST included.
	retryable bool
	// attempts is 1 for a direct call, X-Dingproxy-Attempts through dingproxy.
	attempts int
	last     string
}

// once makes one HTTP call.
func (c *client) once(ctx context.Context, r request) answer {
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	url := c.base + r.path
	if c.token != "" && !isAPIPath(r.path) {
		sep := "?"
		if strings.Contains(url, "?") {
			sep = "&"
		}
		url += sep + dingtalk.QueryAccessToken + "=" + c.token
	}
	req, err := http.NewRequestWithContext(ctx, r.method, url, body)
	if err != nil {
		return answer{last: err.Error()}
	}
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" && isAPIPath(r.path) {
		req.Header.Set(dingtalk.HeaderAccessToken, c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return answer{retryable: ctx.Err() == nil, attempts: 1, last: err.Error()}
	}
	defer resp.Body.Close()
	a := answer{attempts: 1}
	if v := resp.Header.Get(proxy.HeaderAttempts); v != "" {
		a.attempts, _ = strconv.Atoi(v)
	}
	a.fallback = resp.Header.Get(proxy.HeaderFallback) != ""
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		a.retryable, a.last = true, err.Error()
		return a
	}
	a.last = resp.Status + " " + string(b[:min(len(b), 120)])
	switch dingtalk.Classify(resp.StatusCode, resp.Header.Get("Content-Type"), b).Class {
	case dingtalk.Success:
		a.ok = !a.fallback
	case dingtalk.ServerError, dingtalk.Throttled:
		a.retryable = true
	}
	return a
}

func isAPIPath(p string) bool {
	return strings.HasPrefix(p, "/v1.0/") || strings.HasPrefix(p, "/v2.0/")
}

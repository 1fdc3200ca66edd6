package token

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"testing"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// fakeTokens hands out tok-1, tok-2 ... (or err), and records what was
// dropped.
type fakeTokens struct {
	n       int
	err     error
	dropped []string
}

func (f *fakeTokens) Token(context.Context) (string, error) {
	if f.err != nil {
		return "", f.err
	}
	f.n++
	return "tok-" + string(rune('0'+f.n)), nil
}

func (f *fakeTokens) Invalidate(tok string) bool {
	f.dropped = append(f.dropped, tok)
	return true
}

// TestInject: the token goes where the facts say, replacing a stand-in,
// on a copy (the request itself is replayed unchanged); a rejected token
// is dropped, whether or not the call is repeated; no token to be had is
// an attempt not sent; a call that takes no app token is left alone.
func TestInject(t *testing.T) {
	var seen []*http.Request
	answer := call.Report{Attempts: 1, Outcome: call.Success}
	bottom := call.HandlerFunc(func(req *http.Request, _ *call.Facts) (*http.Response, call.Report, error) {
		seen = append(seen, req)
		return nil, answer, nil
	})
	src := &fakeTokens{}
	h := Inject(src, nil)(bottom)

	req := &http.Request{URL: &url.URL{Path: "/topapi/v2/user/get", RawQuery: "x=1&access_token="}, Header: http.Header{}}
	h.Do(req, &call.Facts{Inject: dingtalk.PlaceQuery})
	if got := seen[0].URL.RawQuery; got != "x=1&access_token=tok-1" {
		t.Errorf("query = %q, want the stand-in replaced", got)
	}
	if req.URL.RawQuery != "x=1&access_token=" {
		t.Errorf("the request itself changed to %q", req.URL.RawQuery)
	}

	areq := &http.Request{URL: &url.URL{Path: "/v1.0/contact/users/me"}, Header: http.Header{dingtalk.HeaderAccessToken: {""}}}
	answer = call.Report{Attempts: 1, Outcome: call.TokenInvalid}
	h.Do(areq, &call.Facts{Inject: dingtalk.PlaceHeader})
	if got := seen[1].Header.Get(dingtalk.HeaderAccessToken); got != "tok-2" || areq.Header.Get(dingtalk.HeaderAccessToken) != "" {
		t.Errorf("header %q (the request's own %q), want tok-2 on the copy only", got, areq.Header.Get(dingtalk.HeaderAccessToken))
	}
	if len(src.dropped) != 1 || src.dropped[0] != "tok-2" {
		t.Errorf("dropped %v, want the rejected tok-2", src.dropped)
	}

	h.Do(req, &call.Facts{Inject: dingtalk.PlaceNone})
	if seen[2] != req {
		t.Error("a call that takes no app token was changed")
	}

	down := errors.New("token endpoint down")
	src.err = down
	_, rep, err := h.Do(req, &call.Facts{Inject: dingtalk.PlaceQuery})
	var te *Error
	if !errors.As(err, &te) || !errors.Is(err, down) || rep.Attempts != 0 || rep.Reason != call.ReasonTokenUnavailable || len(seen) != 3 {
		t.Errorf("no token: %+v, %v; want unsent, token_unavailable, a *token.Error", rep, err)
	}
}

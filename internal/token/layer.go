package token

import (
	"context"
	"net/http"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Tokens is the app's shared token as the request path uses it: the
// Source.
type Tokens interface {
	Token(ctx context.Context) (string, error)
	Invalidate(tok string) bool
}

// Error is an attempt that could not go for want of a token.
type Error struct{ Err error }

func (e *Error) Error() string { return "token: no access token: " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Inject is the layer that puts the shared token where the call's facts
// say (Facts.Inject), fresh from src on every attempt, and drops it when
// DingTalk answers that it is invalid or expired (only if it is still the
// current one: Source.Invalidate), so that the retry, and every later
// call, gets a new one. An attempt with no token to be had is not sent:
// reason token_unavailable, a *Error.
func Inject(src Tokens, log *zap.Logger) call.Layer {
	return func(next call.Handler) call.Handler {
		return call.HandlerFunc(func(req *http.Request, f *call.Facts) (*http.Response, call.Report, error) {
			if f.Inject == dingtalk.PlaceNone {
				return next.Do(req, f)
			}
			tok, err := src.Token(req.Context())
			if err != nil {
				return call.Fail(call.Refused(call.ReasonTokenUnavailable), &Error{Err: err})
			}
			resp, rep, err := next.Do(withToken(req, f.Inject, tok), f)
			if rep.Outcome == call.TokenInvalid {
				call.Bookkeep(log, "token", func() { src.Invalidate(tok) })
			}
			return resp, rep, err
		})
	}
}

// withToken is a copy of req carrying tok at place, replacing any stand-in
// (an empty value, the placeholder). Only what changes is copied: req
// itself is replayed on every attempt.
func withToken(req *http.Request, place dingtalk.Placement, tok string) *http.Request {
	r := new(http.Request)
	*r = *req
	switch place {
	case dingtalk.PlaceHeader:
		r.Header = req.Header.Clone()
		r.Header.Set(dingtalk.HeaderAccessToken, tok)
	case dingtalk.PlaceQuery:
		u := *req.URL
		u.RawQuery = dingtalk.WithQueryToken(u.RawQuery, tok)
		r.URL = &u
	}
	return r
}

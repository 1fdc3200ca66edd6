// Package proxy is dingproxy's HTTP front: an http.Handler that refuses what
// must never be forwarded (CONNECT, absolute-form request lines), routes each
// request to one of DingTalk's two hosts, buffers small bodies so attempts can
// be replayed, answers clients' own token calls from the shared cache, decides
// whether a request is idempotent and where its token goes, and hands it to
// an httputil.ReverseProxy whose Transport is the attempt loop.
//
// It does not retry, classify answers, or fetch tokens itself: package retry,
// package dingtalk and package token do. Every answer it writes itself is
// DingTalk-shaped, so any SDK can read it.
package proxy

// Package deferral keeps the sends that cannot go now and delivers them
// later: the Layer, in the request path, keeps a live send on a route with
// defer when the proxy would otherwise answer with an error of its own
// before DingTalk executed it, and answers at once that it was kept; the
// Courier delivers what was kept, in order per queue, through the same
// path below the layer (quota, breaker, attempts, pacing, token), taking
// only turns that live calls leave free.
//
// What a kept send comes to is decided from DingTalk's answer alone:
// delivered on a success; dead on an answer that says it will never
// succeed, or past its due time; unknown, and never sent again, when it
// may have executed; queued again when DingTalk refused it unexecuted for
// now (dingtalk.Result.RefusedForNow) or nothing was sent.
package deferral

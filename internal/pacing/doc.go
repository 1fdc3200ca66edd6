// Package pacing keeps calls under DingTalk's rate limits instead of bouncing
// off them: a limit per API path (per_api_qps, DingTalk's 20 calls per
// second per API per app) under one for all calls (global_qps, under the
// egress IP's 10,000 per 20 s), each an exact sliding window: at most 90 % of
// the limit in any one second, bursts allowed, as DingTalk counts. A call
// books its turn before it is sent;
// a turn that would come after the call's deadline is refused at once, so the
// caller can answer "paced" instead of sending into a sure rejection.
//
// It also adapts: a throttle answer cuts that path's rate to 70 % at once and
// blocks the path for DingTalk's penalty (1 s, or until the end a 90002
// answer names); successes raise the rate again step by step, never above
// the configured one. Paths idle for a minute are forgotten, so memory does
// not grow with distinct paths.
//
// It does not classify answers or retry: the attempt loop tells it what
// DingTalk answered and asks it for turns.
package pacing

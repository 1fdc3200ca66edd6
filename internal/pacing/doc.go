// Package pacing keeps calls under DingTalk's rate limits instead of bouncing
// off them: a limit per API path (per_api_qps, DingTalk's 20 calls per
// second per API per app) under one for all calls (global_qps, under the
// egress IP's 10,000 per 20 s), each an exact sliding window: at most 90 % of
// the limit in any one second, bursts allowed, as DingTalk counts. A call
// books its turn before it is sent;
// a turn that would come after the call's deadline is refused at once, so the
// caller can answer "paced" instead of sending into a sure rejection.
//
// It also learns: the configured rate is a ceiling, and a throttle answer
// teaches an API the limit DingTalk really allows it (another replica or
// service of the same app, an undocumented limit): its rate becomes 0.9 of
// what it delivered, at least 0.2 calls/s, its calls evenly spaced, and it
// climbs back to just under that measure and then probes past it slowly
// along a CUBIC curve while calls succeed (rate.go). The API is
// blocked for DingTalk's penalty (1 s, or until the end a 90002 answer
// names); a per-minute limit pauses it until the minute turns and sets a
// per-minute budget. Custom robots are paced one by one (RobotPrefix), 20 a
// minute, and blocked for DingTalk's 10 minutes when it throttles one. Idle
// paths and robots are forgotten, so memory does not grow with distinct
// ones.
//
// Layer is pacing in the request path, below the attempt loop: each attempt
// waits for its turn there, and DingTalk's answer to it is fed back. It
// does not classify answers or retry. The fleet's pacer decorates Pacer
// with the same rule (Window) and the same curve (Learned), kept in Redis.
package pacing

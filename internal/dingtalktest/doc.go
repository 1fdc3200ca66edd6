// Package dingtalktest is a real HTTP fake of DingTalk's server API, shared by
// tests, the demo (cmd/fakedingtalk) and benchmarks. Production code never
// imports it.
//
// One [Server] answers in the shapes of both DingTalk hosts:
//
//   - Paths under /v1.0/ and /v2.0/ behave like api.dingtalk.com: the token
//     travels in the x-acs-dingtalk-access-token header and errors are an HTTP
//     status with a JSON body {"code","message","requestid"}.
//   - Every other path behaves like oapi.dingtalk.com: the token travels in the
//     access_token query parameter and errors are HTTP 200 with
//     {"errcode":N,"errmsg":"..."}. Paths under /topapi/ wrap auth and throttle
//     errors in the errcode 88 gateway shape, whose sub_code is a string;
//     legacy paths use top-level codes.
//
// Tokens behave as DingTalk documents for internal apps: within a token's
// lifetime both token endpoints (/gettoken and /v1.0/oauth2/accessToken) return
// the same token with its remaining lifetime; after [Server.ExpireTokens] or
// expiry a new token is issued and the old one is rejected.
//
// Faults are injected per path with [Server.Script], at random with
// [Server.SetChaos] (deterministic for a given [Options.Seed] when requests are
// sequential), and by a per-path QPS limiter with DingTalk's one-second penalty
// ([Server.SetQPSLimit]). Each request is evaluated in this order: secret-leak
// check, token endpoints, script, QPS limit, chaos, auth, handler.
//
// Besides DingTalk's own errors, faults model an upstream that answers badly,
// for hardening clients and proxies: an exact status and body ([Body]), a huge
// body ([Huge]), corrupt gzip ([BadGzip]), a body cut short ([CloseMidBody]),
// a body that never ends ([EndlessChunked]) and 1xx responses before the
// answer ([Informational]). Those that look like a success execute the
// request, as [ResetAfterExec] does.
//
// The custom robot webhook (/robot/send) checks its own access_token and,
// each opt-in through [Options], DingTalk's robot rules: a signing secret
// (timestamp and sign in the query, see [SignRobot]) and keywords, both
// answered 310000 when not met; a body limit (460101); and the limit of
// [Options.RobotPerMinute] sends in any minute, past which the robot is
// answered 130101 and blocked for 10 minutes. [Server.Robot] and
// [Server.Robots] count what each robot saw.
//
// [Server.StopListening] starts an outage in which connections are refused
// (ECONNREFUSED); [Server.ResumeListening] ends it on the same address.
//
// Counters let tests assert what DingTalk would have seen: hits and recorded
// requests per path, executions, duplicate executions of non-idempotent sends
// (DingTalk has no idempotency key for them, except the custom robot's
// msgUuid), executions per distinct message ([Server.Deliveries],
// [Server.DeliveryCounts]), throttle rejections, token fetches and
// app-secret leaks.
//
// Error-code values come from package dingtalk, the single source of DingTalk's
// wire facts.
package dingtalktest

// Package dingtalk holds DingTalk's wire facts and nothing else: the hosts'
// token placements, the token endpoints, the error shapes of both upstreams
// (oapi's errcode in HTTP 200 JSON, api's JSON code with an HTTP status), which
// code means what for a retrying proxy, and which requests DingTalk treats as
// idempotent (POST reads, idempotency keys).
//
// It does no I/O, keeps no state and imports only the standard library, so every
// other package (the proxy, the retry loop, the token source and the fake
// server used by tests) takes its DingTalk knowledge from this one place.
package dingtalk

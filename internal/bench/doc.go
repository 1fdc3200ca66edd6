// Package bench is dingproxy's one benchmark engine, of which the demo
// (internal/demo), the resilience benchmark (internal/resilience) and the
// load tool (internal/loadtest) are views; what they run (workloads, faults,
// clients, targets) is data, the rows of one scenario table
// (internal/scenario), which knows how to run a row on this engine. The
// engine itself knows no workload. It has three parts:
//
//   - one client model: a [Client] is a [Mode] (its name in the tables), a
//     [Via] (how its calls reach the fake DingTalk: [Straight] with a token
//     of its own, [ThroughProxy], one dingproxy on its built-in defaults, or
//     a [Fleet] of either) and whether it retries as the popular DingTalk
//     SDKs do. [Open] readies it against a fake and returns the [Caller]
//     that makes its calls.
//   - one open-loop scheduler: [Schedule] starts call i at begin + i/rate
//     whatever became of the calls before it, so a slow answer never delays
//     the next arrival; [Run] puts a [Load] through it for one client
//     against a fresh fake and returns every call's [Outcome] with the
//     fake's counts.
//   - one table printer: [Table], with [Ratio], [Percentile] and the
//     cell formats ([Ms], [Dur]).
//
// A fleet is a [Via] too: [Fleet] opens another Via N times (N dingproxies
// alone, each with [StartProxy], or N plain clients of one app) and returns
// all their URLs in [Endpoint].Bases; the [Caller] spreads calls over them
// by call number. A path that carries an access_token of its own (a custom
// robot's webhook) keeps it, and the fake can be given a per-robot limit
// ([Load].Fake).
//
// Everything runs on loopback with no credentials. It is a tool for people
// and for tests of the README's promises; the proxy never imports it.
package bench

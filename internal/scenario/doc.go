// Package scenario is the one table of what dingproxy's demo, resilience
// benchmark and load tool run: each row ([Scenario]) is a name, a group, a
// workload made of the shared request builders ([UserGet], [AsyncSend],
// [Alert], ...), the faults the fake DingTalk brings and when, the clients
// that run it (fleets of them, dingproxy's configuration), and the targets
// dingproxy must keep in it. A row's description ([Scenario.Describe]) and
// its targets' words are made from its fields, so a number is written once.
//
// [Run] runs a row for one client on the benchmark engine (internal/bench)
// against a fresh fake and returns a [Row] of figures; [Check] judges the
// figures against the targets. The views pick their rows: internal/demo
// the demo group, internal/resilience the faults, pacing, fleet, and quota
// and cache groups, internal/loadtest the load group.
//
// The table is a package of its own, not part of internal/bench, because
// it is data on top of the engine: the engine knows clients, schedules and
// tables and stays free of workloads, fault plans, Redis and targets; the
// three views import the table and none of them imports another.
package scenario

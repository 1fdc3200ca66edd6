// Package demo runs dingproxy's self-contained demonstration: the fake
// DingTalk with injected faults, dingproxy in front of it, and a bounded load
// of reads and sends sent three ways (a plain client, a client with the retry
// loop popular DingTalk SDKs use, and through dingproxy), then a table that
// puts the three side by side; then the same for an outage of one API.
// Both phases are rows of the scenario table (internal/scenario: the demo
// and demo-outage scenarios), which Options and OutageOptions change for
// one run. Everything stays on loopback and needs no credentials.
//
// It is a tool for people and for a test of the README's promise; it is not
// part of the proxy and the proxy never imports it.
package demo

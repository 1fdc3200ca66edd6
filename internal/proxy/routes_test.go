package proxy

import (
	"fmt"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// TestRouteTable: configured routes are theirs; a new API takes a free
// slot for a trial; an answer that shows no API (no such API, a refused
// token) gives an untried slot back, one that shows the API keeps it for
// good, and a ban page, a gateway's 5xx or no answer leave it on trial;
// slots are bounded, and a full table gives an idle route's slot to a new
// API and the overflow route to the rest.
func TestRouteTable(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	tb := newRouteTable(3, map[string]*call.RoutePolicy{"/configured": {}})
	ok := dingtalk.Result{Class: dingtalk.Success, Reason: dingtalk.ReasonSuccess}
	unknown := dingtalk.Result{Class: dingtalk.Business, Reason: dingtalk.ReasonUnknownAPI}
	if r := tb.name("/configured", now); r != "/configured" || tb.settle(r, unknown) {
		t.Fatalf("configured: %q, or given back", r)
	}
	for i := range 1000 {
		junk := fmt.Sprintf("/junk/%d", i)
		if r := tb.name(junk, now); r != junk {
			t.Fatalf("junk %d: %q, want a trial slot", i, r)
		}
		res := unknown
		if i%2 == 1 {
			res = dingtalk.Result{Class: dingtalk.TokenInvalid, Reason: dingtalk.ReasonTokenInvalid}
		}
		if !tb.settle(junk, res) {
			t.Fatalf("junk %d answered %s kept its slot", i, res.Reason)
		}
	}
	if tb.len() != 1 {
		t.Fatalf("%d routes after 1,000 unknown paths, want the configured 1", tb.len())
	}
	a := tb.name("/topapi/a", now)
	b := tb.name("/topapi/b", now)
	if a != "/topapi/a" || b != "/topapi/b" || tb.settle(a, ok) {
		t.Fatalf("new APIs: %q %q", a, b)
	}
	for _, res := range []dingtalk.Result{{Class: dingtalk.IPBan, Reason: dingtalk.ReasonIPBan}, {Class: dingtalk.ServerError, Reason: dingtalk.ReasonHTTP5xx}, {}} {
		if tb.settle(b, res) {
			t.Fatalf("%q given back on %q, which shows nothing", b, res.Reason)
		}
	}
	if tb.settle(a, unknown) {
		t.Fatal(`a known API given back on one "no such API"`)
	}
	// Full: the rest go on the overflow route, until a slot is idle.
	if r := tb.name("/topapi/c", now.Add(routeIdle/2)); r != Overflow {
		t.Fatalf("a full table gave /topapi/c %q", r)
	}
	later := now.Add(routeIdle + time.Minute)
	tb.name("/topapi/b", later) // b is in use, a is idle
	if r := tb.name("/topapi/c", later); r != "/topapi/c" {
		t.Fatalf("/topapi/c: %q, want the idle slot", r)
	}
	if r := tb.name("/topapi/a", later); r != Overflow {
		t.Errorf("the idle /topapi/a: %q, want its slot gone to /topapi/c", r)
	}
	if tb.len() != 3 {
		t.Errorf("%d routes, want max 3", tb.len())
	}
}

package deferral

import (
	"context"
	"testing"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// TestKeepableNeverWhatMayHaveExecuted: a send whose last attempt was
// refused before it went is kept, unless an attempt before it may have
// executed; a 5xx or a break after the request was written never is.
func TestKeepableNeverWhatMayHaveExecuted(t *testing.T) {
	f := &call.Facts{Inject: dingtalk.PlaceQuery}
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		rep  call.Report
		want bool
	}{
		{"refused before any attempt", call.Report{Outcome: call.NotSent, Reason: call.ReasonPaced}, true},
		{"every attempt unexecuted", call.Report{Attempts: 3, Outcome: call.NotSent, Reason: call.ReasonDialError}, true},
		{"a retry refused after one that may have executed", call.Report{Attempts: 1, Outcome: call.NotSent, Reason: call.ReasonClosed, MayHaveExecuted: true}, false},
		{"a 5xx", call.Report{Attempts: 1, Outcome: call.ServerError, MayHaveExecuted: true}, false},
		{"broke after the request was written", call.Report{Attempts: 1, Outcome: call.AfterSend, MayHaveExecuted: true}, false},
		{"the month's quota", call.Report{Outcome: call.NotSent, Reason: dingtalk.ReasonQuota}, false},
	} {
		if got := Keepable(ctx, f, tt.rep, nil); got != tt.want {
			t.Errorf("%s: Keepable = %v, want %v", tt.name, got, tt.want)
		}
	}
}

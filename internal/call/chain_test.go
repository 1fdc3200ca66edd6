package call_test

import (
	"errors"
	"net/http"
	"testing"

	"github.com/dingproxy/dingproxy/internal/call"
)

// tag is a layer that records its name on the way down and up.
func tag(name string, trace *[]string) call.Layer {
	return func(next call.Handler) call.Handler {
		return call.HandlerFunc(func(req *http.Request, f *call.Facts) (*http.Response, call.Report, error) {
			*trace = append(*trace, name+">")
			resp, rep, err := next.Do(req, f)
			*trace = append(*trace, "<"+name)
			return resp, rep, err
		})
	}
}

// TestChainRunsTopToBottom: the first layer is the outermost, the bottom
// runs last, and the report comes back up through every layer.
func TestChainRunsTopToBottom(t *testing.T) {
	var trace []string
	bottom := call.HandlerFunc(func(*http.Request, *call.Facts) (*http.Response, call.Report, error) {
		trace = append(trace, "send")
		return nil, call.Report{Attempts: 1, Outcome: call.Success}, nil
	})
	h := call.Chain(tag("a", &trace), tag("b", &trace), tag("c", &trace))(bottom)
	_, rep, err := h.Do(&http.Request{}, &call.Facts{})
	want := []string{"a>", "b>", "c>", "send", "<c", "<b", "<a"}
	if err != nil || rep.Attempts != 1 || len(trace) != len(want) {
		t.Fatalf("trace %v, report %+v, err %v; want %v", trace, rep, err, want)
	}
	for i := range want {
		if trace[i] != want[i] {
			t.Fatalf("trace %v, want %v", trace, want)
		}
	}
}

type gateFunc func(*call.Facts) error

func (g gateFunc) Closed(f *call.Facts) error { return g(f) }

// TestRecheck: a closed gate ends the attempt unsent with its error, and
// an open one lets it through; Gates answer with the first closed one.
func TestRecheck(t *testing.T) {
	errA, errB := errors.New("a closed"), errors.New("b closed")
	sent := 0
	bottom := call.HandlerFunc(func(*http.Request, *call.Facts) (*http.Response, call.Report, error) {
		sent++
		return nil, call.Report{Attempts: 1}, nil
	})
	open := gateFunc(func(*call.Facts) error { return nil })
	closedA := gateFunc(func(*call.Facts) error { return errA })
	closedB := gateFunc(func(*call.Facts) error { return errB })

	_, rep, err := call.Recheck(call.Gates{open, closedA, closedB})(bottom).Do(&http.Request{}, &call.Facts{})
	var ce *call.Error
	if !errors.As(err, &ce) || !errors.Is(err, errA) || rep.Attempts != 0 || rep.Outcome != call.NotSent || rep.Reason != call.ReasonClosed || sent != 0 {
		t.Fatalf("closed: %+v, %v, %d sent; want not sent, reason closed, the first closed gate's error", rep, err, sent)
	}
	if _, rep, err = call.Recheck(call.Gates{open, open})(bottom).Do(&http.Request{}, &call.Facts{}); err != nil || rep.Attempts != 1 || sent != 1 {
		t.Fatalf("open: %+v, %v, %d sent; want it sent", rep, err, sent)
	}
}

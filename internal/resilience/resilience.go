// Package resilience is the resilience benchmark: the scenarios of the
// faults, pacing, fleet, quota and cache, and deferred groups of the
// scenario table (internal/scenario), each run against the fake DingTalk
// by each of its clients (a plain client, a client with the common SDK
// retry loop, and through dingproxy on its built-in defaults; in the fleet
// group, four dingproxies alone and four sharing through Redis; in the
// deferred group, dingproxy deferring sends, in its kill scenarios as
// processes of their own that are killed), with a fresh fake and fresh
// dingproxies for each client. A program that runs the kill scenarios
// calls scenario.ChildMain first. It prints one table of what each
// client got and what each cost DingTalk, and a second of the scenarios'
// targets and whether dingproxy met them.
//
// The clients of a scenario run side by side, each against a fake of its
// own (nothing is shared but the machine's two cores, which the loads leave
// mostly idle), so the whole benchmark stays under 3 minutes;
// Options.OneAtATime runs them one after another instead.
package resilience

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/redistest"
	"github.com/dingproxy/dingproxy/internal/scenario"
)

// Groups are the benchmark's groups of scenarios, in run order.
var Groups = []scenario.Group{scenario.GroupFaults, scenario.GroupPacing, scenario.GroupFleet, scenario.GroupQuotaCache, scenario.GroupDeferred}

// sideBySide are the groups whose scenarios run side by side: their runs
// mostly wait on DingTalk's clock (a robot's minute) for deferred sends,
// and leave the cores idle.
var sideBySide = []scenario.Group{scenario.GroupDeferred}

// Scenarios lists the benchmark's scenarios in run order.
var Scenarios = scenario.Names(scenario.Of(Groups...))

// Options shape a run.
type Options struct {
	// Scale multiplies every scenario's duration (and its timed faults);
	// rates stay. Default 1.
	Scale float64
	// Only lists the scenarios to run, and Groups the groups; default
	// all of Scenarios. A scenario runs if either names it.
	Only   []string
	Groups []scenario.Group
	// Modes lists the clients, each run in the scenarios that have it;
	// default scenario.AllModes.
	Modes []bench.Mode
	// Seed seeds the fake's fault draws; default 1.
	Seed int64
	// OneAtATime runs a scenario's clients one after another instead of
	// side by side (about 4 minutes in all instead of 2).
	OneAtATime bool
	// Progress, if set, is called after each scenario and client.
	Progress func(scenario.Row)
	// Redis is the server the shared proxies use; nil: Run starts one for
	// the fleet group (and skips its scenarios, telling Skipped, when
	// there is no redis-server).
	Redis *redistest.Server
	// Skipped, if set, hears of a scenario not run, and why.
	Skipped func(scenario, why string)

	// onCall and onTick, if set, see every call's outcome and every token
	// revocation (tests only).
	onCall func(name string, m bench.Mode, o bench.Outcome)
	onTick func(name string, m bench.Mode, from, to time.Time)
	// launched is the redis-server Run started, if it did.
	launched *redistest.Server
}

func (o *Options) defaults() error {
	if o.Scale <= 0 {
		o.Scale = 1
	}
	for _, n := range o.Only {
		if !slices.Contains(Scenarios, n) {
			return fmt.Errorf("resilience: unknown scenario %q (want one of %s)", n, strings.Join(Scenarios, ", "))
		}
	}
	for _, g := range o.Groups {
		if !slices.Contains(Groups, g) {
			return fmt.Errorf("resilience: unknown group %q (want one of %s)", g, GroupNames())
		}
	}
	if len(o.Only) == 0 && len(o.Groups) == 0 {
		o.Groups = Groups
	}
	if len(o.Modes) == 0 {
		o.Modes = scenario.AllModes
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	return nil
}

// GroupNames are the groups, as the -group flag takes them.
func GroupNames() string {
	var out []string
	for _, g := range Groups {
		out = append(out, fmt.Sprintf("%q", g))
	}
	return strings.Join(out, ", ")
}

// Chosen are the scenarios o runs, in table order.
func Chosen(o Options) ([]scenario.Scenario, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	return o.chosen(), nil
}

// chosen are the scenarios o runs, once defaulted.
func (o *Options) chosen() []scenario.Scenario {
	var out []scenario.Scenario
	for _, s := range scenario.Of(Groups...) {
		if slices.Contains(o.Only, s.Name) || slices.Contains(o.Groups, s.Group) {
			out = append(out, s)
		}
	}
	return out
}

// Run runs the chosen scenarios in table order, each for every mode it
// has with a fresh fake (and fresh dingproxies); the rows come in the
// order of Modes. A scenario's clients run side by side unless
// o.OneAtATime, and so do the scenarios of a group that waits
// (sideBySide). It stops early when ctx ends, returning the rows it has.
func Run(ctx context.Context, o Options) ([]scenario.Row, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	defer o.closeRedis()
	var out []scenario.Row
	var mu sync.Mutex // serializes Progress
	chosen := o.chosen()
	for len(chosen) > 0 {
		n := 1
		if !o.OneAtATime && slices.Contains(sideBySide, chosen[0].Group) {
			for n < len(chosen) && chosen[n].Group == chosen[0].Group {
				n++
			}
		}
		batch := chosen[:n]
		chosen = chosen[n:]
		rows := make([][]scenario.Row, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, sc := range batch {
			wg.Go(func() { rows[i], errs[i] = o.runScenario(ctx, sc, &mu) })
		}
		wg.Wait()
		for i := range batch {
			out = append(out, rows[i]...)
		}
		for _, err := range errs {
			if err != nil {
				return out, err
			}
		}
	}
	return out, nil
}

// runScenario runs sc for each of o's modes it has, and returns their
// rows in the order of Modes.
func (o *Options) runScenario(ctx context.Context, sc scenario.Scenario, mu *sync.Mutex) ([]scenario.Row, error) {
	var modes []bench.Mode
	for _, m := range o.Modes {
		if slices.Contains(sc.Clients, m) {
			modes = append(modes, m)
		}
	}
	if !o.sharedReady(sc, modes) {
		return nil, nil
	}
	rows := make([]scenario.Row, len(modes))
	errs := make([]error, len(modes))
	ran := make([]bool, len(modes))
	one := func(i int) {
		rows[i], errs[i] = scenario.Run(ctx, sc, modes[i], o.runOptions(sc.Name, modes[i]))
		ran[i] = true
		if errs[i] == nil && o.Progress != nil {
			mu.Lock()
			o.Progress(rows[i])
			mu.Unlock()
		}
	}
	if o.OneAtATime {
		for i := range modes {
			if one(i); errs[i] != nil {
				break
			}
		}
	} else {
		var wg sync.WaitGroup
		for i := range modes {
			wg.Go(func() { one(i) })
		}
		wg.Wait()
	}
	pairAlone(modes, rows, errs, ran)
	var out []scenario.Row
	var err error
	for i, m := range modes {
		if ran[i] && errs[i] == nil {
			out = append(out, rows[i])
		} else if err == nil {
			err = fmt.Errorf("resilience: %s, %s: %w", sc.Name, m, errs[i])
		}
	}
	return out, err
}

// runOptions are one client's run options in scenario name.
func (o *Options) runOptions(name string, m bench.Mode) scenario.RunOptions {
	ro := scenario.RunOptions{Scale: o.Scale, Seed: o.Seed, Redis: o.Redis}
	if f := o.onCall; f != nil {
		ro.OnCall = func(oc bench.Outcome) { f(name, m, oc) }
	}
	if f := o.onTick; f != nil {
		ro.OnTick = func(from, to time.Time) { f(name, m, from, to) }
	}
	return ro
}

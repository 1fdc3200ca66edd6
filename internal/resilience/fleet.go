package resilience

import (
	"slices"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/redistest"
	"github.com/dingproxy/dingproxy/internal/scenario"
)

// sharedReady readies what the shared proxies among modes need
// (scenario.Shared): a redis-server, started once for the run when
// o.Redis is nil. It says false, telling Skipped, when there is none to
// start.
func (o *Options) sharedReady(sc scenario.Scenario, modes []bench.Mode) bool {
	shared := slices.ContainsFunc(modes, func(m bench.Mode) bool { return slices.Contains(scenario.Shared, m) })
	if !shared || o.Redis != nil {
		return true
	}
	srv, err := redistest.Launch()
	if err != nil {
		if o.Skipped != nil {
			o.Skipped(sc.Name, err.Error())
		}
		return false
	}
	o.Redis, o.launched = srv, srv
	return true
}

// closeRedis stops the redis-server the run started, if it did.
func (o *Options) closeRedis() {
	if o.launched != nil {
		o.launched.Close()
		o.launched = nil
	}
}

// pairAlone gives the shared proxies' row the alone ones', for the targets
// that compare the two.
func pairAlone(modes []bench.Mode, rows []scenario.Row, errs []error, ran []bool) {
	i, j := slices.Index(modes, bench.Proxy), slices.Index(modes, scenario.ProxyShared)
	if i >= 0 && j >= 0 && ran[i] && errs[i] == nil {
		alone := rows[i]
		rows[j].Alone = &alone
	}
}

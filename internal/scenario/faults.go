package scenario

import (
	"errors"
	"time"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// Faults are the trouble a scenario brings: what the fake DingTalk does
// from the start, and what happens at given times into the load. Times
// are multiplied by the run's scale.
type Faults struct {
	// Chaos is random faults from the start, on Chaos.Paths (every API if
	// none).
	Chaos dingtalktest.Chaos
	// QPSLimit is DingTalk's per-API limit, with its 1 s penalty (0: none).
	QPSLimit int
	// RobotPerMinute is DingTalk's per-robot limit, then a block (0: none).
	RobotPerMinute int
	// MonthlyQuota is the organisation's monthly quota of metered calls,
	// then 90020 (0: none).
	MonthlyQuota int
	// Outage, if set, is APIs that answer an error status to every call.
	Outage *Outage
	// RevokeTokensEvery, if set, revokes every token that often.
	RevokeTokensEvery time.Duration
	// Ban, if set, is DingTalk banning the egress IP.
	Ban *Ban
	// RedisDown, if set, is the fleet's Redis shut down, then back empty.
	RedisDown *RedisDown
	// Refuse, if set, is DingTalk refusing connections (its listener
	// closed) for that long from the load's start (from the fake's setup,
	// just before it), then listening again.
	Refuse time.Duration
	// Kill, if set, is dingproxy's process killed with SIGKILL after the
	// last answer (and started again).
	Kill *Kill
}

// Outage is APIs that answer Status to every call, then recover.
type Outage struct {
	Paths  []string // path prefixes; none: every API
	Status int
	// For is how long the outage lasts; 0: the whole run.
	For time.Duration
}

// Ban is DingTalk's IP ban: from At, every answer is the ban, asking the
// caller to wait Wait seconds.
type Ban struct {
	At   time.Duration
	Wait int
}

// RedisDown is the fleet's Redis shut down (SHUTDOWN NOSAVE) at At and
// started again, empty, at Back.
type RedisDown struct{ At, Back time.Duration }

func (f Faults) validate() error {
	switch {
	case f.Outage != nil && len(f.Chaos.Faults) > 0:
		return errors.New("an outage and random faults at once")
	case f.Outage != nil && f.Outage.Status == 0:
		return errors.New("an outage without a status")
	case f.Ban != nil && (f.Outage != nil || len(f.Chaos.Faults) > 0):
		return errors.New("a ban and other faults at once")
	case f.RedisDown != nil && f.RedisDown.Back <= f.RedisDown.At:
		return errors.New("redis back before it went down")
	case f.Refuse < 0:
		return errors.New("a refusal of negative length")
	case f.Kill != nil && f.Kill.After < 0:
		return errors.New("a kill before the last answer")
	}
	return nil
}

// fake is the fake's options for the faults it holds from its start.
func (f Faults) fake() dingtalktest.Options {
	return dingtalktest.Options{RobotPerMinute: f.RobotPerMinute, MonthlyQuota: f.MonthlyQuota}
}

// outageChaos is the outage as the fake's chaos.
func (o *Outage) chaos() dingtalktest.Chaos {
	return dingtalktest.Chaos{Paths: o.Paths, Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(o.Status), P: 1}}}
}

// setup brings the trouble that holds from the start, once the client is
// ready.
func (f Faults) setup(s *dingtalktest.Server) {
	if len(f.Chaos.Faults) > 0 {
		s.SetChaos(f.Chaos)
	}
	if f.Outage != nil {
		s.SetChaos(f.Outage.chaos())
	}
	if f.QPSLimit > 0 {
		s.SetQPSLimit(f.QPSLimit)
	}
}

// ban is the ban as the fake's chaos.
func (b *Ban) chaos() dingtalktest.Chaos {
	return dingtalktest.Chaos{Faults: []dingtalktest.Weighted{{Fault: dingtalktest.IPBanJSON(b.Wait), P: 1}}}
}

// Tuning is dingproxy's configuration in a scenario, beyond its built-in
// defaults; a zero field keeps the default.
type Tuning struct {
	// PerAPIQPS and GlobalQPS are pacing.per_api_qps and global_qps.
	PerAPIQPS, GlobalQPS float64
	// OpenTimeout is breaker.open_timeout.
	OpenTimeout time.Duration
	// MaxAttempts is retry.max_attempts.
	MaxAttempts int
	// CachePath, with CacheTTL, is a route with a read cache.
	CachePath string
	CacheTTL  time.Duration
	// Merge is defer.merge on the robot's route, for the client that
	// defers (ProxyDeferred).
	Merge bool
}

// apply sets t in c.
func (t Tuning) apply(c *config.Config) {
	if t.PerAPIQPS > 0 {
		c.Pacing.PerAPIQPS = t.PerAPIQPS
	}
	if t.GlobalQPS > 0 {
		c.Pacing.GlobalQPS = t.GlobalQPS
	}
	if t.OpenTimeout > 0 {
		c.Breaker.OpenTimeout = t.OpenTimeout
	}
	if t.MaxAttempts > 0 {
		c.Retry.MaxAttempts = t.MaxAttempts
	}
	if t.CachePath != "" {
		c.Routes = append(c.Routes, config.Route{Path: t.CachePath, Cache: t.CacheTTL})
	}
}

// Package quota spends the organisation's monthly API quota wisely.
// DingTalk meters most server API calls per organisation per calendar month
// (China time) and, past the quota, answers 90020 (api: 403
// Forbidden.AccessDenied.ApiCountLimitForOrg) until the month turns or more
// is bought. A Meter counts the metered calls this proxy sends in the month
// (retries included: DingTalk meters them too), learns the organisation's
// usage and quota from a 90020 message, stops a route that answered 90020
// until the month turns (probing it once an hour, so a quota bought
// mid-month is noticed), stops every metered route when the message says
// the organisation's usage is at its quota (one probe an hour for them
// all), and keeps this app to quota.monthly_budget.
//
// DingTalk's word wins over the list of metered APIs: a route that answered
// 90020 is stopped whatever the list says of it. The list decides only what
// is counted before DingTalk has spoken.
//
// It knows nothing of HTTP: the proxy asks Admit before a call, reports
// every attempt sent (Sent) and DingTalk's answers (Answered), and turns a
// refusal (*Error) into its answer.
package quota

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// ProbeEvery is how often a route stopped by a 90020 lets one call through
// to see whether the quota came back (bought mid-month).
const ProbeEvery = time.Hour

// Organisation names the organisation-wide stop where a route would go
// (the observer's notes, the fleet's records): no route is "*".
const Organisation = "*"

// WarnAt is the share of quota.monthly_budget past which the meter warns.
const WarnAt = 0.8

// Settings are the configured values.
type Settings struct {
	// Budget is how many metered calls this app may send in a month; 0: no
	// cap of its own.
	Budget int64
	// Location is where the month turns (quota.timezone); nil: China time.
	Location *time.Location
}

// Error is a metered call refused before it was sent.
type Error struct {
	Route string
	// Budget: this app's quota.monthly_budget is spent; else DingTalk
	// answered 90020 on Route this month.
	Budget bool
	// Organisation: DingTalk said the organisation's usage is at its
	// quota; every metered route is stopped, not only Route.
	Organisation bool
	// RetryAfter is when trying again may help: the next probe of a stopped
	// route, or the month's turn for the budget.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Budget {
		return fmt.Sprintf("quota: this app's monthly budget (quota.monthly_budget) is spent; it renews in %s", e.RetryAfter.Round(time.Second))
	}
	if e.Organisation {
		return fmt.Sprintf("quota: %s: the organisation's monthly API quota is spent (DingTalk said its usage is at the quota); every metered API is stopped; next try in %s",
			e.Route, e.RetryAfter.Round(time.Second))
	}
	return fmt.Sprintf("quota: %s: the organisation's monthly API quota is spent (DingTalk answered 90020); next try in %s",
		e.Route, e.RetryAfter.Round(time.Second))
}

// Observer is told of what the meter decides, outside its lock.
type Observer interface {
	// QuotaWarned: once a month, when the month's count passes WarnAt of
	// the budget.
	QuotaWarned(sent, budget int64)
	// QuotaStopped: a route stopped for the month (DingTalk answered 90020
	// there, here or on another proxy of the fleet), or resumed; st is the
	// month as the meter knows it then. route is Organisation for the
	// organisation-wide stop.
	QuotaStopped(route string, stopped bool, st State)
	// QuotaSent: an attempt on a metered route was sent, and counted.
	QuotaSent(route string)
}

// Meter counts and guards one month at a time. It is safe for concurrent
// use.
type Meter struct {
	obs      Observer
	settings atomic.Pointer[Settings]

	mu      sync.Mutex
	month   string         // "2026-12" in the settings' location
	turn    time.Time      // when it ends
	loc     *time.Location // the location month and turn were computed in
	sent    int64          // metered calls this proxy sent this month
	used    int64          // the organisation's usage as DingTalk said, -1 unknown
	limit   int64          // the organisation's quota as DingTalk said, -1 unknown
	warned  bool
	stopped map[string]*stop
	// org is the organisation-wide stop, nil while none is in force: every
	// metered route (the list's, and those DingTalk answered 90020) waits
	// for its one probe an hour.
	org *stop
	// anyStop says whether a stop is in force (set as m.mu is released): a
	// call not counted skips the lock while none is.
	anyStop atomic.Bool
	// claim, when set, is asked before the organisation's hourly probe
	// goes (outside m.mu): the fleet lets one proxy probe for all.
	claim atomic.Pointer[func() bool]
	// told are the stops and resumptions to tell obs once m.mu is released
	// (it may ask the meter).
	told []stopNote
}

type stopNote struct {
	route   string
	stopped bool
}

type stop struct {
	nextProbe time.Time
	probing   bool   // a probe is out
	route     string // the organisation's: the route its probe went on
}

// China is DingTalk's time zone, where its months turn.
var China = time.FixedZone("CST", 8*3600)

// New returns a Meter under s; obs (may be nil) hears of warnings, stops
// and resumptions.
func New(s Settings, obs Observer) *Meter {
	m := &Meter{obs: obs, used: -1, limit: -1, stopped: make(map[string]*stop)}
	m.Update(s)
	return m
}

// Update installs new settings (a reload).
func (m *Meter) Update(s Settings) {
	if s.Location == nil {
		s.Location = China
	}
	m.settings.Store(&s)
}

// rollLocked starts a new month when the month turned (or the time zone
// changed); m.mu must be held. Between turns it costs one comparison.
func (m *Meter) rollLocked(now time.Time) {
	loc := m.settings.Load().Location
	if now.Before(m.turn) && loc == m.loc {
		return
	}
	t := now.In(loc)
	first := time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, loc)
	m.turn, m.loc = first.AddDate(0, 1, 0), loc
	month := first.Format("2006-01")
	if month == m.month {
		return
	}
	m.month, m.sent, m.used, m.limit, m.warned = month, 0, -1, -1, false
	m.liftLocked()
}

// liftLocked lifts every stop: the month turned, or the organisation's
// probe got through. m.mu must be held.
func (m *Meter) liftLocked() {
	if m.org != nil {
		m.org = nil
		m.told = append(m.told, stopNote{Organisation, false})
	}
	for r := range m.stopped {
		delete(m.stopped, r)
		m.told = append(m.told, stopNote{r, false})
	}
}

// unlock releases m.mu, then tells obs of the stops and resumptions noted
// meanwhile.
func (m *Meter) unlock() {
	told := m.told
	m.told = nil
	m.anyStop.Store(len(m.stopped) > 0 || m.org != nil)
	m.mu.Unlock()
	if m.obs != nil && len(told) > 0 {
		st := m.State()
		for _, t := range told {
			m.obs.QuotaStopped(t.route, t.stopped, st)
		}
	}
}

// Admit says whether a call on route may be sent now: nil, or an *Error
// when the route answered 90020 this month (but for one probe an hour), the
// organisation's quota is spent and the call is metered (one probe an hour
// for them all), or the app's budget is spent. A call the list calls
// unmetered on a route DingTalk never refused always may.
func (m *Meter) Admit(route string, metered bool) error {
	return m.check(route, metered, true)
}

// Refused is Admit without taking the hour's probe (a retry, or a call that
// waited for its turn, asks this): the *Error Admit would give, or nil; the
// probe's own retries go.
func (m *Meter) Refused(route string, metered bool) error {
	return m.check(route, metered, false)
}

func (m *Meter) check(route string, metered, takeProbe bool) error {
	if !metered && !m.anyStop.Load() {
		return nil // not counted, and no route stopped by DingTalk's word
	}
	now := time.Now()
	m.mu.Lock()
	m.rollLocked(now)
	if metered {
		if err := m.spentLocked(route, m.sent, now); err != nil {
			m.unlock()
			return err
		}
	}
	st := m.stopped[route]
	if o := m.org; o != nil && (metered || st != nil) {
		probe := takeProbe && !o.probing && !now.Before(o.nextProbe)
		if probe {
			o.probing, o.route = true, route // this call is the hour's probe
			o.nextProbe = now.Add(ProbeEvery)
		}
		mine := !takeProbe && o.probing && o.route == route // the probe's own retries
		retry := max(o.nextProbe.Sub(now), time.Second)
		m.unlock()
		switch {
		case probe && m.claimed():
			return nil
		case probe: // another proxy of the fleet probes this hour
			m.mu.Lock()
			if m.org == o {
				o.probing = false
			}
			m.unlock()
		case mine:
			return nil
		}
		return &Error{Route: route, Organisation: true, RetryAfter: retry}
	}
	defer m.unlock()
	switch {
	case st == nil:
		return nil
	case takeProbe && !st.probing && !now.Before(st.nextProbe):
		st.probing = true // this call is the hour's probe
		st.nextProbe = now.Add(ProbeEvery)
		return nil
	case !takeProbe && st.probing:
		return nil
	}
	return &Error{Route: route, RetryAfter: max(st.nextProbe.Sub(now), time.Second)}
}

// claimed says whether the organisation's probe may go: yes, unless the
// fleet's claim says another proxy has it.
func (m *Meter) claimed() bool {
	c := m.claim.Load()
	return c == nil || (*c)()
}

// ClaimProbe sets what is asked before the organisation's hourly probe
// goes: true lets it go; false counts it as taken elsewhere this hour.
func (m *Meter) ClaimProbe(c func() bool) { m.claim.Store(&c) }

// spentLocked is the budget's answer for a month's count: an *Error when
// count has reached quota.monthly_budget, else nil; m.mu must be held.
func (m *Meter) spentLocked(route string, count int64, now time.Time) error {
	if b := m.settings.Load().Budget; b > 0 && count >= b {
		return &Error{Route: route, Budget: true, RetryAfter: m.turn.Sub(now)}
	}
	return nil
}

// Spent is the budget's answer for a call on route given the month's count
// as the fleet knows it (count, which may be more than this proxy sent): an
// *Error once it has reached quota.monthly_budget, else nil. Past WarnAt of
// the budget it warns, once a month.
func (m *Meter) Spent(route string, count int64) error {
	now := time.Now()
	m.mu.Lock()
	m.rollLocked(now)
	count = max(count, m.sent)
	err := m.spentLocked(route, count, now)
	warn := m.warnLocked(count)
	m.unlock()
	if warn != nil {
		warn()
	}
	return err
}

// Month is the month being counted ("2026-12" in quota.timezone).
func (m *Meter) Month() string {
	m.mu.Lock()
	defer m.unlock()
	m.rollLocked(time.Now())
	return m.month
}

// Sent counts one attempt sent on route (DingTalk meters retries too).
func (m *Meter) Sent(route string, metered bool) {
	if !metered {
		return
	}
	now := time.Now()
	m.mu.Lock()
	m.rollLocked(now)
	m.sent++
	warn := m.warnLocked(m.sent)
	m.unlock()
	if warn != nil {
		warn()
	}
	if m.obs != nil {
		m.obs.QuotaSent(route)
	}
}

// warnLocked returns the warning to give once count passes WarnAt of the
// budget (once a month), or nil.
func (m *Meter) warnLocked(count int64) func() {
	b := m.settings.Load().Budget
	if b <= 0 || m.warned || float64(count) < WarnAt*float64(b) || m.obs == nil {
		return nil
	}
	m.warned = true
	obs := m.obs
	return func() { obs.QuotaWarned(count, b) }
}

// Answered tells the meter how DingTalk answered a call on route: a quota
// answer (90020) stops the route for the month and teaches the
// organisation's figures, and when those say the usage is at or past the
// quota it stops every metered route too; any other answer DingTalk
// processed on a stopped route (the probe, or a call in flight) resumes it,
// and one to the organisation's probe lifts every stop. It reports whether
// the answer stopped the route (it was not stopped before).
func (m *Meter) Answered(route string, r dingtalk.Result) bool {
	now := time.Now()
	m.mu.Lock()
	m.rollLocked(now)
	var changed, stopped bool
	switch {
	case r.Reason == dingtalk.ReasonQuota:
		if r.QuotaUsed >= 0 {
			m.used = max(m.used, r.QuotaUsed)
		}
		if r.QuotaLimit >= 0 {
			m.limit = r.QuotaLimit
		}
		m.orgAnsweredLocked(route, r, now)
		if route == call.OverflowRoute {
			break // it holds APIs of every kind: a stop there would stop them all
		}
		st := m.stopped[route]
		if st == nil {
			changed, stopped = true, true
			st = &stop{}
			m.stopped[route] = st
		}
		st.probing, st.nextProbe = false, now.Add(ProbeEvery)
	case r.Class == dingtalk.Success || r.Class == dingtalk.Business:
		if o := m.org; o != nil && o.probing && o.route == route {
			m.liftLocked() // the organisation's quota came back
			break
		}
		if _, ok := m.stopped[route]; ok {
			delete(m.stopped, route)
			changed = true
		}
	default: // a probe that met a transient failure: the next hour's
		if st := m.stopped[route]; st != nil && st.probing {
			st.probing = false
		}
		if o := m.org; o != nil && o.probing && o.route == route {
			o.probing = false
		}
	}
	if changed {
		m.told = append(m.told, stopNote{route, stopped})
	}
	m.unlock()
	return changed && stopped
}

// orgAnsweredLocked learns from a 90020 on route: the organisation stops
// when the message says its usage is at or past its quota, and a probe
// that met 90020 waits for the next hour. m.mu must be held.
func (m *Meter) orgAnsweredLocked(route string, r dingtalk.Result, now time.Time) {
	o := m.org
	if r.QuotaUsed >= 0 && r.QuotaLimit >= 0 && r.QuotaUsed >= r.QuotaLimit {
		if o == nil {
			o = &stop{}
			m.org = o
			m.told = append(m.told, stopNote{Organisation, true})
		}
		o.probing, o.nextProbe = false, now.Add(ProbeEvery)
		return
	}
	if o != nil && o.probing && o.route == route {
		o.probing, o.nextProbe = false, now.Add(ProbeEvery)
	}
}

// MonthEnd is when the current month turns.
func (m *Meter) MonthEnd() time.Time {
	m.mu.Lock()
	defer m.unlock()
	m.rollLocked(time.Now())
	return m.turn
}

// State is what the meter knows of the month, for metrics.
type State struct {
	Month string
	// Sent is this proxy's metered calls this month (the fleet's, as the
	// fleet's meter reports it).
	Sent int64
	// Used and Limit are the organisation's usage and quota as DingTalk
	// last said them, -1 unknown.
	Used, Limit int64
	// Budget is quota.monthly_budget (0: none).
	Budget int64
	// Stopped is how many routes are stopped for the month.
	Stopped int
	// Organisation: every metered route is stopped for the month, as
	// DingTalk said the organisation's usage is at its quota.
	Organisation bool
}

// BudgetSpent says whether quota.monthly_budget is set and the month's
// count has reached it.
func (s State) BudgetSpent() bool { return s.Budget > 0 && s.Sent >= s.Budget }

// State reports the month so far.
func (m *Meter) State() State {
	now := time.Now()
	m.mu.Lock()
	defer m.unlock()
	m.rollLocked(now)
	return State{Month: m.month, Sent: m.sent, Used: m.used, Limit: m.limit,
		Budget: m.settings.Load().Budget, Stopped: len(m.stopped), Organisation: m.org != nil}
}

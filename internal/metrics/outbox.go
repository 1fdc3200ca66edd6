package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// OutboxStates are the dingproxy_outbox_messages state values: the sends
// the outbox holds that are still waiting or need a person.
var OutboxStates = []string{"queued", "dead", "unknown"}

// OutboxResults are the dingproxy_outbox_sends_total result values.
var OutboxResults = []string{"delivered", "dead", "unknown"}

// OutboxRoute is what the outbox holds for one route now.
type OutboxRoute struct {
	Route                 string
	Queued, Dead, Unknown int
	// OldestSeconds is the oldest queued send's age, 0 with none queued.
	OldestSeconds float64
}

// outboxCollector reads the outbox's counts at scrape time: the store
// keeps them, so they are never out of step with it.
type outboxCollector struct {
	from     atomic.Pointer[func() []OutboxRoute]
	messages *prometheus.Desc
	oldest   *prometheus.Desc
}

func newOutboxCollector() *outboxCollector {
	return &outboxCollector{
		messages: prometheus.NewDesc(namespace+"_outbox_messages",
			"Deferred sends the outbox holds, by route and state: queued (waiting for delivery), dead (given up: past max_age, or an answer that says it will never succeed), unknown (it may have executed; never sent again).",
			[]string{"route", "state"}, nil),
		oldest: prometheus.NewDesc(namespace+"_outbox_oldest_seconds",
			"Age of the oldest queued deferred send, by route; 0 with none queued.",
			[]string{"route"}, nil),
	}
}

func (c *outboxCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.messages
	ch <- c.oldest
}

func (c *outboxCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.from.Load()
	if f == nil {
		return
	}
	for _, r := range (*f)() {
		for i, n := range []int{r.Queued, r.Dead, r.Unknown} {
			ch <- prometheus.MustNewConstMetric(c.messages, prometheus.GaugeValue, float64(n), r.Route, OutboxStates[i])
		}
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, r.OldestSeconds, r.Route)
	}
}

// OutboxFrom makes dingproxy_outbox_messages and
// dingproxy_outbox_oldest_seconds read f at scrape time (routes with
// defer, and any route the outbox still holds sends of).
func (m *Metrics) OutboxFrom(f func() []OutboxRoute) { m.outbox.from.Store(&f) }

// InitOutbox creates route's dingproxy_outbox_sends_total series at zero.
func (m *Metrics) InitOutbox(route string) {
	for _, r := range OutboxResults {
		m.OutboxSends.WithLabelValues(route, r)
	}
}

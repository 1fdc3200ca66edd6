package dingtalktest

import (
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// Executions counted per message, on send paths (the robot webhook, work
// notices and the other non-idempotent sends), so that a test can assert
// exactly how many distinct messages DingTalk executed and that none was
// executed twice.

// Bounds on what Deliveries keeps.
const (
	// maxDeliveries is how many distinct messages are tracked per path;
	// later ones are not.
	maxDeliveries = 1 << 20
	// maxDeliveryBodies is how many body bytes are kept in all; past it a
	// Delivery's Body is nil.
	maxDeliveryBodies = 64 << 20
)

// A Delivery is one distinct message executed on a send path.
type Delivery struct {
	// Key names the message: "msgUuid:<id>" for a robot message that has a
	// msgUuid (DingTalk's idempotency key for robots, so it is executed at
	// most once), otherwise "sha256:<hex>" of its body.
	Key string
	// Robot is the access token of the robot the message was posted to;
	// "" on other paths. The same body posted to two robots is two messages.
	Robot string
	// Executions is how many times DingTalk executed the message: more than
	// one is a message delivered twice.
	Executions int
	// Body is the body as first executed, or nil once 64 MiB of bodies are
	// kept.
	Body []byte
	// First is when it was first executed, on Options.Now.
	First time.Time
}

// deliveries is one path's messages, in order of first execution.
type deliveries struct {
	order []*Delivery
	index map[string]*Delivery // by Robot + "\x00" + Key
}

func (s *Server) deliverLocked(path string, body []byte, sum [sha256.Size]byte, robot, msgUUID string) {
	key := "sha256:" + hex.EncodeToString(sum[:])
	if msgUUID != "" {
		key = "msgUuid:" + msgUUID
	}
	ds := s.c.deliveries[path]
	if ds == nil {
		ds = &deliveries{index: make(map[string]*Delivery)}
		s.c.deliveries[path] = ds
	}
	id := robot + "\x00" + key
	if d := ds.index[id]; d != nil {
		d.Executions++
		return
	}
	if len(ds.order) >= maxDeliveries {
		return
	}
	d := &Delivery{Key: key, Robot: robot, Executions: 1, First: s.opts.Now()}
	if s.c.deliveryBytes+len(body) <= maxDeliveryBodies {
		d.Body = append([]byte(nil), body...)
		s.c.deliveryBytes += len(body)
	}
	ds.index[id] = d
	ds.order = append(ds.order, d)
}

// Deliveries is every distinct message executed on the send path path since
// the last ResetCounters, in the order of their first execution, with how
// many times each was executed. Only send paths count messages: the robot
// webhook (one message per robot and msgUuid, or per robot and body), the
// work notice (asyncsend_v2) and the other sends, one message per body.
// Reads are counted by Executions only. At most 2^20 messages per path are
// tracked.
func (s *Server) Deliveries(path string) []Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	ds := s.c.deliveries[path]
	if ds == nil {
		return nil
	}
	out := make([]Delivery, len(ds.order))
	for i, d := range ds.order {
		out[i] = *d
		out[i].Body = append([]byte(nil), d.Body...)
	}
	return out
}

// DeliveryCounts sums Deliveries(path): distinct is the number of distinct
// messages executed at least once, twice the number executed more than once.
// "All 60 delivered, none twice" is DeliveryCounts(path) == (60, 0).
func (s *Server) DeliveryCounts(path string) (distinct, twice int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ds := s.c.deliveries[path]
	if ds == nil {
		return 0, 0
	}
	for _, d := range ds.order {
		if d.Executions > 1 {
			twice++
		}
	}
	return len(ds.order), twice
}

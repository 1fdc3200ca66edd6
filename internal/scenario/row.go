package scenario

import (
	"slices"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
)

// Row is one client's figures in one scenario.
type Row struct {
	Scenario string
	Mode     bench.Mode
	// Calls is how many client calls were made, OK how many succeeded
	// (a fallback answered by dingproxy is not a success); the same for
	// the reads and the sends among them.
	Calls, OK        int
	Reads, ReadsOK   int
	Sends, SendsOK   int
	Fallbacks        int // calls dingproxy answered itself
	Duplicates       int // the fake's count of sends executed twice
	UpstreamAttempts int // what the fake received, token calls excluded
	// CallAttempts is the sum of what each call counted: its own
	// attempts, or X-Dingproxy-Attempts through dingproxy.
	CallAttempts int
	// Throttled is how many upstream attempts the fake rejected for its
	// QPS limit.
	Throttled int
	// Outage: the scenario has an outage. CallsDuring and AttemptsDuring
	// count the calls started while it lasted and the attempts those
	// calls counted (so calls still in flight at the recovery are not
	// misattributed); P50During is their median latency. Recovered: the
	// API came back within the run; Recovery is the time from then to the
	// first success (-1: none).
	Outage                      bool
	CallsDuring, AttemptsDuring int
	P50During                   time.Duration
	Recovered                   bool
	Recovery                    time.Duration
	// The fake's attempts and throttles after the scenario's warm-up (the
	// first Warmup of load), when HasAfter.
	Warmup                        time.Duration
	AfterAttempts, AfterThrottled int
	HasAfter                      bool
	// Limit is the fake's QPS limit on the one API a scenario calls (0: none
	// or several); Accepted is the successful calls per second after the
	// warm-up, counted by when each ended, over the whole seconds of the
	// clock (the fake counts its limit in them) until the load's end, when
	// HasAccepted.
	Limit       int
	Accepted    float64
	HasAccepted bool
	// Shares is each replica's share of the successful calls (a fleet).
	Shares []float64
	// RobotThrottled is how many robot sends the fake answered with its
	// robot throttle (and a block).
	RobotThrottled int
	// Deliver is how many of the first calls a robot scenario can deliver
	// (the rest must wait for the robot's minute); Delivered is how many
	// of them succeeded, Paced how many of the rest were answered paced
	// (429, X-Dingproxy-Fallback: paced); the AtOnce counts are those
	// answered within AtOnce.
	Deliver, Delivered, Paced, DeliveredAtOnce, PacedAtOnce int
	// TokenFetches is how many tokens the fake issued.
	TokenFetches int
	// QuotaRejected is how many calls DingTalk answered 90020; QuotaAnswered
	// how many dingproxy answered quota itself, QuotaP99 their p99.
	QuotaRejected, QuotaAnswered int
	QuotaP99                     time.Duration
	// CacheHits is how many calls were answered from the read cache.
	CacheHits int
	// BanCalls is how many calls reached DingTalk once it banned the IP,
	// when HasBan.
	BanCalls int
	HasBan   bool
	// ShareAgain is how long after Redis came back every proxy listened to
	// the fleet again, when HasShareAgain.
	ShareAgain    time.Duration
	HasShareAgain bool
	// Alone is the same scenario's row for the proxies alone, on a shared
	// row (for the targets that compare the two).
	Alone *Row
	// Deliveries, in a scenario that counts them (DeliverWithin), when
	// HasDeliveries: Messages is how many distinct messages were sent,
	// each once; MessagesDelivered how many of them DingTalk executed,
	// MessagesTwice how many more than once (a merged robot message counts
	// for each of its parts); Kept how many answers said the send was kept
	// for later (X-Dingproxy-Deferred). LastArrival is when the last
	// message delivered first arrived, and RefusedUntil when DingTalk
	// listened again after refusing connections, both from the load's
	// start.
	HasDeliveries                              bool
	Messages, MessagesDelivered, MessagesTwice int
	Kept                                       int
	LastArrival, RefusedUntil                  time.Duration
	// Kill, in a scenario that kills dingproxy's process (Faults.Kill),
	// when HasKill: KilledAt is when, from the load's start; KilledHolder
	// says the process killed held the fleet courier's lease, and
	// KilledRefused that DingTalk refused connections then; Restart is
	// how long from the kill the process took to serve again (0: not
	// started again).
	HasKill                     bool
	KilledAt, Restart           time.Duration
	KilledHolder, KilledRefused bool
	// The kept sends' states, read from dingproxy's admin endpoint
	// (GET /outbox/<id>) once the run is over, when HasStates (dingproxy
	// in processes of its own): Unknown is how many ended unknown (on the
	// wire at a kill, never sent again), Unsettled how many were neither
	// delivered nor unknown (still queued, given up, or not read).
	HasStates          bool
	Unknown, Unsettled int
	// P50 and P99 are the calls' latencies.
	P50, P99 time.Duration
	// Elapsed is the wall time from the first call to the last answer.
	Elapsed time.Duration
}

// AtOnce bounds an answer given "at once" (delivered, or answered paced),
// far under a robot's next free turn (tens of seconds).
const AtOnce = time.Second

// Success is the share of calls that succeeded.
func (r Row) Success() float64 { return bench.Ratio(r.OK, r.Calls) }

// ReadSuccess is the share of reads that succeeded.
func (r Row) ReadSuccess() float64 { return bench.Ratio(r.ReadsOK, r.Reads) }

// SendSuccess is the share of sends that succeeded.
func (r Row) SendSuccess() float64 { return bench.Ratio(r.SendsOK, r.Sends) }

// AttemptsPerCall is what each client call cost DingTalk: in an outage,
// the attempts counted by the calls started during it, per such call;
// otherwise the fake's upstream attempts per call.
func (r Row) AttemptsPerCall() float64 {
	if r.Outage {
		return bench.Ratio(r.AttemptsDuring, r.CallsDuring)
	}
	return bench.Ratio(r.UpstreamAttempts, r.Calls)
}

// ThrottledPer100 is throttle rejections per 100 upstream attempts.
func (r Row) ThrottledPer100() float64 { return 100 * bench.Ratio(r.Throttled, r.UpstreamAttempts) }

// ThrottledPer100After is the same after the warm-up.
func (r Row) ThrottledPer100After() float64 {
	return 100 * bench.Ratio(r.AfterThrottled, r.AfterAttempts)
}

// AcceptedOfLimit is the accepted rate after the warm-up as a share of the
// limit.
func (r Row) AcceptedOfLimit() float64 {
	if r.Limit == 0 {
		return 0
	}
	return r.Accepted / float64(r.Limit)
}

// LastDelivery is the time to the last message delivered: from the
// load's start, or from when DingTalk listened again after refusing
// connections.
func (r Row) LastDelivery() time.Duration { return r.LastArrival - r.RefusedUntil }

// LeastShare is the smallest replica's share of the successful calls.
func (r Row) LeastShare() float64 {
	if len(r.Shares) == 0 {
		return 0
	}
	return slices.Min(r.Shares)
}

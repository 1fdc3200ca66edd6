// Package outbox keeps deferred sends on local disk (alone mode): a send
// that cannot go to DingTalk now is kept, durably, until it is delivered,
// dead or unknown.
//
// The store is one bbolt file, outbox.db, under the outbox directory. A
// Put returns only once the send is on disk (fsync'd); concurrent Puts share
// one fsync (group commit, see commit.go). The parts of a send that may
// hold a token (query, headers, body, DingTalk's answer) are sealed with
// AES-256-GCM under a key derived from the app secret, and every record is
// checked when read back: one that does not parse, does not open or holds
// a value out of bounds is dropped and reported, never trusted. Queued
// sends may hold Options.MaxBytes in all, each route half of it and each
// queue a quarter;
// finished sends are kept for a while and then pruned (see prune.go).
package outbox

import (
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// State of a kept send.
type State string

const (
	Queued    State = "queued"
	Delivered State = "delivered"
	Dead      State = "dead"
	Unknown   State = "unknown"
)

// Send is one kept send.
type Send struct {
	ID       string      // set by Put: unique, and in arrival order when compared as strings
	Queue    string      // the delivery order key: the route, or a robot's pacing key
	Route    string      // the route (for counts and metrics)
	Method   string      //
	Path     string      //
	Query    string      // the raw query, byte for byte (it may hold a token)
	Header   http.Header // the end-to-end request headers kept (they may hold a token)
	Body     []byte      //
	Kept     time.Time   // when it was kept (Put sets it when zero)
	Due      time.Time   // past it the send is dead (max_age, or a signed robot send's hour)
	State    State       //
	Attempts int         // attempts sent to DingTalk so far
	Reason   string      // why dead or unknown, in words (cut to 1 KiB)
	Status   int         // DingTalk's HTTP status once answered
	Answer   []byte      // DingTalk's answer body once answered, at most 64 KiB kept
	Updated  time.Time   // set by the store on every change
	// Facts are what the proxy decided about the call when it was kept,
	// opaque to the store (sealed; at most 4 KiB).
	Facts []byte
	// Sending is set on a queued send by Begin, durably, before an attempt
	// goes: a send still so marked when the store opens was being sent
	// when the process stopped, so it may have executed. Open makes it
	// Unknown (never sent again). Update clears it.
	Sending bool
}

var (
	ErrFull     = errors.New("outbox: full") // the store, or the queue's share, would pass its bound
	ErrNotFound = errors.New("outbox: no such send")
	// ErrOtherSecret: the store was sealed under another app secret (or
	// app key): it is refused, and left as it is, not misread.
	ErrOtherSecret = errors.New("outbox: the store was sealed under another app secret or app key")
	// ErrInUse: another process holds the store (another dingproxy with
	// the same outbox.dir).
	ErrInUse = errors.New("outbox: the store is in use by another process")
	// ErrInvalid: Put was given a send that cannot be kept as it is (a
	// field missing or past its bound); the error says which.
	ErrInvalid = errors.New("outbox: invalid send")
	// ErrNotQueued: Update of a send that is no longer queued (delivered,
	// dead or unknown): its outcome is recorded once.
	ErrNotQueued = errors.New("outbox: the send is no longer queued")
	// ErrNotDead: Retry of a send that is not dead or unknown.
	ErrNotDead = errors.New("outbox: only a dead or unknown send can be retried")
	// ErrSending: Delete of a send its courier has marked as being sent:
	// it may reach DingTalk whatever the store says, so it is forgotten
	// only once its outcome is recorded.
	ErrSending = errors.New("outbox: the send is being sent")
	// ErrClosed: the store is closed.
	ErrClosed = errors.New("outbox: closed")
)

// Why a kept record was dropped when read back, as Observer.Dropped is told
// (a bounded vocabulary, fit for a metric label).
const (
	DropUnreadable = "unreadable" // it does not parse: a damaged record
	DropSealed     = "sealed"     // it does not open: altered, or moved under another ID
	DropBounds     = "bounds"     // it holds a value out of bounds (a size, a state, a time)
	DropFile       = "file"       // the store file itself was damaged, and moved aside
)

// Observer is told of what the store drops (for metrics).
type Observer interface {
	// Dropped is told of one kept record dropped, or of a damaged store
	// file moved aside (DropFile), with why (one of the Drop* words).
	Dropped(why string)
}

// Defaults of Options.
const (
	DefaultMaxBytes      = 256 << 20
	DefaultKeepDelivered = 24 * time.Hour
	DefaultKeepDead      = 7 * 24 * time.Hour
	DefaultMaxFinished   = 100_000
	DefaultLockTimeout   = time.Second
)

// Options configure a Store.
type Options struct {
	Dir       string // outbox.dir: created if missing; the store's file lives in it
	MaxBytes  int64  // outbox.max_bytes: the bytes queued sends may hold in all; each route at most half of it, each queue a quarter (0: DefaultMaxBytes)
	AppKey    string // with AppSecret, keys the sealing (HKDF-SHA256, as the fleet's token); the send's ID is associated data
	AppSecret string // empty (pass-through mode): a random key kept in Dir/outbox.key (0600) is used instead
	Logger    *zap.Logger
	Observer  Observer // optional: told of what is dropped or corrupt (for metrics)

	// KeepDelivered is how long a delivered send stays readable by Get
	// after its delivery (0: DefaultKeepDelivered).
	KeepDelivered time.Duration
	// KeepDead is how long a dead or unknown send stays, for Get and Retry
	// (0: DefaultKeepDead).
	KeepDead time.Duration
	// MaxFinished caps the delivered, dead and unknown sends kept at once
	// (0: DefaultMaxFinished); they also hold at most MaxBytes in all.
	MaxFinished int
	// LockTimeout is how long Open waits for another process to let go of
	// the store (0: DefaultLockTimeout).
	LockTimeout time.Duration
}

// RouteStats are one route's counts.
type RouteStats struct {
	Queued, Delivered, Dead, Unknown int
	Oldest                           time.Duration // the oldest queued send's age (0 with none queued)
	QueuedBytes                      int64         // what its queued sends are charged against MaxBytes
}

// Stats are the store's counts.
type Stats struct {
	Routes        map[string]RouteStats
	QueuedBytes   int64 // charged against MaxBytes by queued sends (each its stored size, at least 1 KiB)
	FinishedBytes int64 // held by delivered, dead and unknown sends (pruned past MaxBytes)
	MaxBytes      int64
	FileBytes     int64 // the size of outbox.db
}

package fleet

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// The shared outbox's canary: a value sealed under the key the fleet's
// sends are sealed with (from the app key and secret), at
// <prefix>:{<app key>}:outbox:canary. A proxy uses the fleet's outbox only
// once the canary opens under its own key: a proxy under another app
// secret (a pod misconfigured, a secret rotated in a rolling update) would
// otherwise take every send it cannot open for a value that is not the
// fleet's, and drop it. Refused, it leaves the fleet's outbox alone: it
// takes no lease, reads, drops, changes or delivers none of its sends,
// and keeps and delivers its own deferred sends from its local store, as
// while Redis is down; it says so once in an error line (naming
// app.secret), counts each check that refuses
// (dingproxy_fleet_errors_total{op="outbox"}), and checks again every
// canaryRetry, so that it joins once the canary opens.
//
// The canary is written by the first proxy that finds none, and only if
// the outbox holds no record (tombstones aside) or at least one of those
// sampled opens under its key (an outbox kept by a version without the
// canary): otherwise it refuses and writes nothing. A value that is not a
// canary at all (another type at the key, a string that is not the size
// of a sealed canary) is treated as none. A sealed canary that does not
// open is another key's: refused, unless records are there and every one
// sampled opens under this proxy's key (a value planted in Redis cannot
// cut the fleet off its own sends). Every write of a proxy that is not
// the holder's (keep a send, drop a value that is not the fleet's, take or
// renew the lease) checks in its script that the canary is still the one
// this proxy opened; the holder's writes are fenced by the lease, which
// is only renewed under that canary. A canary that changed is checked
// again at once.

const (
	canaryRetry  = 2 * time.Second // a check that did not find the canary opening is tried again after this
	canarySample = 8               // records opened, at most, to tell whose an outbox without a canary is
)

// canaryReadScript reads the canary and a sample of the records: KEYS
// canary, records; ARGV the most records. Returns {the canary key's type,
// its value (empty unless a string), {id, record, ...}} (tombstones left
// out).
var canaryReadScript = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1]).ok
local v = ''
if t == 'string' then v = redis.call('GET', KEYS[1]) end
local recs = {}
if redis.call('TYPE', KEYS[2]).ok == 'hash' then
  local n = tonumber(ARGV[1])
  local cursor = '0'
  for i = 1, 64 do
    local r = redis.call('HSCAN', KEYS[2], cursor, 'COUNT', n)
    cursor = r[1]
    for j = 1, #r[2], 2 do
      if #recs < 2 * n and r[2][j + 1] ~= 'x' then
        table.insert(recs, r[2][j])
        table.insert(recs, r[2][j + 1])
      end
    end
    if cursor == '0' or #recs >= 2 * n then break end
  end
end
return {t, v, recs}
`)

// canaryWriteScript writes the canary if the key still holds what was read:
// KEYS canary; ARGV the new canary, the type read, the value read. Returns
// the value at the key afterwards (empty for none or another type).
var canaryWriteScript = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1]).ok
local same = t == ARGV[2]
if same and t == 'string' then same = redis.call('GET', KEYS[1]) == ARGV[3] end
if same then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[1], ARGV[1])
end
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return '' end
return redis.call('GET', KEYS[1])
`)

// canaryValue is the canary this proxy found opening, checking it first
// if it has not (at most every canaryRetry); "" while it does not open or
// is not known (Redis down): the fleet's outbox is then left alone.
func (x *Outbox) canaryValue() string {
	x.canMu.Lock()
	defer x.canMu.Unlock()
	if x.canVal != "" || !x.f.Up() || !x.canAt.IsZero() && time.Since(x.canAt) < canaryRetry {
		return x.canVal
	}
	x.canAt = time.Now()
	v, why := x.checkCanary()
	switch {
	case v != "":
		if x.refused {
			x.log.Info("outbox: this proxy's app.secret opens the fleet's outbox in Redis now: shared again")
		}
		x.canVal, x.refused = v, false
	case why != "":
		x.f.failed(OpOutbox)
		if !x.refused {
			x.log.Error("outbox: the fleet's outbox in Redis is sealed under another app.secret (or app.key) than this proxy's: "+
				"this proxy leaves it alone (no lease, no send of it read, delivered, changed or dropped) and keeps and delivers "+
				"its own deferred sends from outbox.dir; give it the fleet's app.secret",
				zap.String("key", x.kCanary), zap.String("found", why))
		}
		x.refused = true
	}
	return x.canVal
}

// canaryChanged forgets the canary v, found changed by a script: the next
// canaryValue checks it again at once.
func (x *Outbox) canaryChanged(v string) {
	x.canMu.Lock()
	defer x.canMu.Unlock()
	if x.canVal == v {
		x.canVal, x.canAt = "", time.Time{}
	}
}

// Refused says whether this proxy found the fleet's outbox sealed under
// another key, and so leaves it alone.
func (x *Outbox) Refused() bool {
	x.canMu.Lock()
	defer x.canMu.Unlock()
	return x.refused
}

// checkCanary reads the canary and writes it where there is none (see
// above). It returns the canary that opens, or why the outbox is refused
// (both "" when Redis did not answer).
func (x *Outbox) checkCanary() (string, string) {
	var res []any
	err := x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
		res, err = canaryReadScript.Run(ctx, x.f.rdb, []string{x.kCanary, x.kRec}, canarySample).Slice()
		return err
	})
	if err != nil || len(res) != 3 {
		return "", ""
	}
	typ, _ := res[0].(string)
	cur, _ := res[1].(string)
	recs, _ := res[2].([]any)
	if typ == "string" && x.seal.CanaryOpens([]byte(cur)) {
		return cur, ""
	}
	opened, failed := 0, 0
	for i := 0; i+1 < len(recs); i += 2 {
		id, _ := recs[i].(string)
		v, _ := recs[i+1].(string)
		if _, err := x.seal.Open(id, []byte(v)); err == nil {
			opened++
		} else {
			failed++
		}
	}
	sealed := typ == "string" && len(cur) == len(x.seal.Canary())
	var why string
	switch {
	case sealed && (opened == 0 || failed > 0):
		why = fmt.Sprintf("a canary that does not open under this proxy's key; %d of %d records sampled open", opened, opened+failed)
	case !sealed && opened == 0 && failed > 0:
		why = fmt.Sprintf("no canary, and none of %d records sampled opens under this proxy's key", failed)
	}
	if why != "" {
		return "", why
	}
	var now string
	err = x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
		now, err = canaryWriteScript.Run(ctx, x.f.rdb, []string{x.kCanary}, x.seal.Canary(), typ, cur).Text()
		return err
	})
	if err != nil {
		return "", ""
	}
	if !x.seal.CanaryOpens([]byte(now)) {
		// Another proxy wrote one meanwhile, under another key.
		return "", "a canary written meanwhile that does not open under this proxy's key"
	}
	if typ != "none" {
		x.dropped("a canary that was not the fleet's was replaced")
	} else {
		x.log.Info("outbox: the fleet's outbox canary is written", zap.String("key", x.kCanary))
	}
	return now, ""
}

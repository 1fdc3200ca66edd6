package fleet

import (
	"context"
	"errors"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// Waiting says whether queue holds a send not yet finished, here (kept
// while Redis was down) or in the fleet's outbox: its queued bytes in
// Redis are above zero. While Redis does not answer, or the fleet's outbox
// is sealed under another key than this proxy's, only the local store is
// asked: a live send then goes as it can, the fleet's order given up
// as while Redis is down.
func (x *Outbox) Waiting(queue string) bool {
	if x.local.Waiting(queue) {
		return true
	}
	if !x.f.Up() || x.canaryValue() == "" {
		return false // the fleet's outbox is not this proxy's (see the canary)
	}
	var n int64
	err := x.f.do(context.Background(), OpOutbox, func(ctx context.Context) error {
		v, err := x.f.rdb.HGet(ctx, x.kBytes, "q:"+Digest(queue)).Result()
		if errors.Is(err, redis.Nil) {
			return nil
		}
		if err != nil {
			return err
		}
		if n, err = strconv.ParseInt(v, 10, 64); err != nil {
			// Not the fleet's: rebuilt by the holder; the queue may hold
			// sends, so the live one is kept behind them.
			n = 1
		}
		return nil
	})
	return err == nil && n > 0
}

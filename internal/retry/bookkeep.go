package retry

import (
	"fmt"

	"go.uber.org/zap"
)

// Bookkeep runs f, bookkeeping done after an attempt was sent (metrics,
// logs, pacing and breaker feedback), so that a failure in it can never
// turn DingTalk's answer into an error of the proxy's own: a panic in f is
// recovered and logged at error level, and the caller goes on as if f had
// returned. what names the bookkeeping in the log line.
func Bookkeep(log *zap.Logger, what string, f func()) {
	defer func() {
		if v := recover(); v != nil {
			if log != nil {
				// The value is formatted with %T only: a panic value may
				// quote request data (a path, a label) that a log must not.
				log.Error("bookkeeping failed; the answer goes out regardless",
					zap.String("what", what), zap.String("panic_type", fmt.Sprintf("%T", v)), zap.StackSkip("stack", 2))
			}
		}
	}()
	f()
}

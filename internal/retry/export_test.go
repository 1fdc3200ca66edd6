package retry

// SetTestHookBeforeForward sets a hook run as the loop is about to hand an
// answer on; nil clears it.
func SetTestHookBeforeForward(f func()) { testHookBeforeForward = f }

package app

// SetTestHookAttempted makes f run first whenever a's observer is told of
// an attempt (set it before a is used): a stand-in for a bug in the
// bookkeeping after an attempt.
func SetTestHookAttempted(a *App, f func()) { a.obs.testHookAttempted = f }

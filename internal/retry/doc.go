// Package retry is dingproxy's attempt loop: an http.RoundTripper that sends a
// request, reads what DingTalk answered (its errcode hides in HTTP 200 bodies),
// and decides by SPEC's retry table whether another attempt is safe and useful;
// plus the pieces that loop needs: full-jitter backoff with DingTalk's 1 s
// throttle penalty and Retry-After as floors, and a retry budget.
//
// It does not route, fetch tokens, pace or break circuits: the token arrives
// through the Prepare hook on every attempt, and a rejected one leaves through
// OnTokenInvalid. What a request is (its route, whether it is idempotent, its
// buffered body) is decided by the caller and carried in a Call on the
// request's context.
package retry

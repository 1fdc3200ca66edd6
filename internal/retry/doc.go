// Package retry is dingproxy's attempt loop: the layer that runs a call's
// attempts through the layers below it, reads what DingTalk answered (its
// errcode hides in HTTP 200 bodies), and decides by the retry table
// (Retryable, README "Retry") whether another attempt is safe and useful;
// plus the pieces that loop needs: full-jitter backoff with Retry-After as
// a floor, a retry budget, and the bottom of the request path (Send): one
// attempt on the wire through http.Transport, its body replayed, its answer
// classified.
//
// It does not route, fetch tokens, pace or break circuits: those are layers
// of their own (internal/app's chain.go composes them). The loop asks them
// only through small interfaces fixed when it is built: a Gate (is the
// call's route still open?) and Turns (when could a retry go?). What a call
// is comes decided in its call.Facts; what an attempt came to comes back as
// a call.Report.
package retry

package app

import (
	"net/http"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/deferral"
	"github.com/dingproxy/dingproxy/internal/pacing"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/quota"
	"github.com/dingproxy/dingproxy/internal/retry"
	"github.com/dingproxy/dingproxy/internal/token"
)

// requestPath composes the request path, top to bottom: the one place
// where the order of the policies is decided. Each layer runs the ones
// below it; the proxy's handler (the door) decides a call's facts once and
// hands it to the top, and turns the layers' typed errors into answers.
//
//	read cache → deferral → quota admission → breaker → attempt loop
//	  → (each attempt) pacing → gates → quota count → token → send
//
// It also returns the path below the deferral layer, which the courier
// delivers kept sends through: the same quota, breaker, attempts, pacing
// and token as a live call.
func requestPath(cfg *config.Config, p parts, keep *deferral.Layer, tokens *token.Source, send http.RoundTripper, obs *observer, log *zap.Logger) (path, below call.Handler, loop *retry.Loop) {
	// Asked before each attempt and each retry: is the call still welcome?
	gates := call.Gates{quota.Gate(p.meter), breaker.Gate(p.guard)}
	pace := pacing.NewLayer(p.turns, obs, log.Named("pacing"))
	loop = retry.NewLoop(RetryPolicy(cfg), retry.Options{
		Budget:   retry.NewBudget(cfg.Retry.Budget.Ratio, cfg.Retry.Budget.MinPerSecond),
		Gate:     gates, // a route that closed meanwhile is not retried
		Turns:    pace,  // nor is a call whose next turn comes past its deadline
		Observer: obs,
		Logger:   log.Named("retry"),
	})
	reads := proxy.NewReadCache(cfg.App.Key, p.store, obs, log.Named("cache"))
	inject := token.Inject(tokenLayerSource(tokens), log)
	below = call.Chain(
		quota.Admit(p.meter),        // a call past the month's quota is refused at once
		breaker.Layer(p.guard, log), // an open route gets its fallback; each call's outcome counts once
		loop.Layer,                  // attempts and backoff under the budget; only what is safe is repeated
		pace.Wrap,                   // each attempt waits for its turn under DingTalk's limits
		call.Recheck(gates),         // a route that closed while the attempt waited is not called
		quota.Count(p.meter, log),   // every attempt sent counts against the month; a 90020 stops the route
		inject,                      // the shared token, fresh on every attempt
	)(loop.Send(send)) // one attempt on the wire, its answer classified
	path = call.Chain(
		reads.Layer,     // a repeat of a cached read is answered from memory
		keepLayer(keep), // a send that cannot go now is kept, and answered at once
	)(below)
	return path, below, loop
}

// keepLayer is the deferral layer, or no layer when no route defers.
func keepLayer(keep *deferral.Layer) call.Layer {
	if keep == nil {
		return func(next call.Handler) call.Handler { return next }
	}
	return keep.Wrap
}

// tokenLayerSource is tokens as the token layer takes it: nil (pass-through
// mode, where no call asks for injection) stays a nil interface.
func tokenLayerSource(tokens *token.Source) token.Tokens {
	if tokens == nil {
		return nil
	}
	return tokens
}

package app

import (
	"context"
	"log"
	"net"
	"net/http"

	"github.com/dingproxy/dingproxy/internal/proxy"
)

// Start starts the background work: the fleet's link (before the token's
// first fetch, which reads Redis), the outbox's courier, then the token
// refresher.
func (a *App) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	a.stop = cancel
	a.parts.link.Start()
	if a.kept != nil {
		a.kept.run(ctx, &a.wg)
	}
	if a.tokens != nil {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.tokens.Run(ctx)
		}()
	}
}

// SetReady says whether the proxy accepts requests, for /readyz.
func (a *App) SetReady(ok bool) { a.ready.Store(ok) }

// CloseIdleConnections drops the idle connections to DingTalk.
func (a *App) CloseIdleConnections() { a.base.CloseIdleConnections() }

// Close stops the background work and drops idle upstream connections.
func (a *App) Close() {
	if a.stop != nil {
		a.stop()
	}
	a.wg.Wait()
	if a.kept != nil {
		a.kept.close(a.log) // what is queued stays on disk for the next start
	}
	if a.tokens != nil {
		a.tokens.Close()
	}
	a.parts.link.Close()
	a.base.CloseIdleConnections()
}

// Handler is the proxy, behind max_inflight: a request beyond it is
// answered 503 at once rather than queued.
func (a *App) Handler() http.Handler {
	rejected := a.metrics.Requests.WithLabelValues(proxy.RouteRejected, "503")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := a.inflight.Add(1)
		defer a.inflight.Add(-1)
		if limit := a.maxInflight.Load(); n > limit {
			proxy.Overloaded(w, r, limit)
			rejected.Inc()
			return
		}
		a.proxy.ServeHTTP(w, r)
	})
}

// Server is an http.Server for Handler under the server section's limits on
// clients (as configured at New: they change only with a restart).
// errLog, if not nil, gets net/http's own errors. Serve it on a Listener.
func (a *App) Server(errLog *log.Logger) *http.Server {
	c := a.Config().Server // its restart-only keys keep their values at New
	return &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: c.ReadHeaderTimeout,
		IdleTimeout:       c.IdleTimeout,
		// net/http allows 4096 bytes more than this for the request line.
		MaxHeaderBytes: c.MaxHeaderBytes,
		ErrorLog:       errLog,
		ConnContext:    proxy.ConnContext,
	}
}

// Listener wraps ln for Server: its connections tell a plain chunked
// request (kept alive) from one that also carried a Content-Length (its
// connection is closed after the answer, against request smuggling). On
// another listener every chunked request closes its connection.
func (a *App) Listener(ln net.Listener) net.Listener { return proxy.Listener(ln) }

// Inflight is how many requests the handler is serving now.
func (a *App) Inflight() int64 { return a.inflight.Load() }

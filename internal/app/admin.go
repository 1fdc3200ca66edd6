package app

import (
	"encoding/json"
	"net/http"
	"time"
)

// AdminHandler serves /healthz, /readyz, /metrics and the outbox's
// endpoints (/outbox, /outbox/<id>).
func (a *App) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.Handle("GET /metrics", a.metrics.Handler())
	a.handleOutbox(mux)
	return mux
}

// readyz reports readiness and the token state. It never fails because
// DingTalk is down: one dependency's outage must not empty the Service.
func (a *App) readyz(w http.ResponseWriter, r *http.Request) {
	type tokenState struct {
		Mode             string  `json:"mode"`
		Held             bool    `json:"held"`
		ExpiresInSeconds float64 `json:"expires_in_seconds,omitempty"`
		// From is where the held token came from: "dingtalk" (fetched here)
		// or "redis" (another proxy of the fleet fetched it).
		From      string `json:"from,omitempty"`
		LastError string `json:"last_error,omitempty"`
	}
	type fleetState struct {
		Mode    string `json:"mode"` // "alone" or "shared"
		RedisUp *bool  `json:"redis_up,omitempty"`
	}
	out := struct {
		Ready bool       `json:"ready"`
		Token tokenState `json:"token"`
		Fleet fleetState `json:"fleet"`
	}{Ready: a.ready.Load(), Token: tokenState{Mode: "pass-through"}}
	out.Fleet.Mode, out.Fleet.RedisUp = a.parts.link.Mode()
	if a.tokens != nil {
		st := a.tokens.State()
		out.Token = tokenState{Mode: "injecting", Held: st.Held, LastError: st.LastError}
		if st.Held {
			out.Token.ExpiresInSeconds = time.Until(st.ExpiresAt).Truncate(time.Second).Seconds()
			out.Token.From = "dingtalk"
			if a.parts.link.TokenFromRedis() {
				out.Token.From = "redis"
			}
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if !out.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(out)
}

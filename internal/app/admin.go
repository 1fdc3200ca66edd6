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
	// quotaState says which of the monthly quota's stops are in force.
	type quotaState struct {
		Month string `json:"month"`
		// Stops in force: "organisation" (every metered path), "budget"
		// (quota.monthly_budget spent), "path" (PathsStopped paths).
		Stops        []string `json:"stops"`
		PathsStopped int      `json:"paths_stopped"`
	}
	type fleetState struct {
		Mode    string `json:"mode"` // "alone" or "shared"
		RedisUp *bool  `json:"redis_up,omitempty"`
	}
	out := struct {
		Ready bool       `json:"ready"`
		Token tokenState `json:"token"`
		Fleet fleetState `json:"fleet"`
		Quota quotaState `json:"quota"`
	}{Ready: a.ready.Load(), Token: tokenState{Mode: "pass-through"}}
	qs := a.parts.meter.State()
	out.Quota = quotaState{Month: qs.Month, Stops: []string{}, PathsStopped: qs.Stopped}
	if qs.Organisation {
		out.Quota.Stops = append(out.Quota.Stops, "organisation")
	}
	if qs.BudgetSpent() {
		out.Quota.Stops = append(out.Quota.Stops, "budget")
	}
	if qs.Stopped > 0 {
		out.Quota.Stops = append(out.Quota.Stops, "path")
	}
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

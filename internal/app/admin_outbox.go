package app

import (
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/deferral"
	"github.com/dingproxy/dingproxy/internal/outbox"
)

// The outbox's admin endpoints (README, "Deferred sends"). They show what
// a kept send is and came to, never its query, headers or body: those may
// hold a robot's token or a client's.

// outboxRouteJSON is one route's counts in GET /outbox.
type outboxRouteJSON struct {
	Route         string  `json:"route"`
	Queued        int     `json:"queued"`
	Delivered     int     `json:"delivered"`
	Dead          int     `json:"dead"`
	Unknown       int     `json:"unknown"`
	OldestSeconds float64 `json:"oldest_seconds"`
}

// sendJSON is one kept send in GET /outbox/<id>.
type sendJSON struct {
	ID       string          `json:"id"`
	Route    string          `json:"route"`
	Method   string          `json:"method"`
	Path     string          `json:"path"`
	State    outbox.State    `json:"state"`
	Attempts int             `json:"attempts"`
	Kept     time.Time       `json:"kept"`
	Due      time.Time       `json:"due"`
	Updated  time.Time       `json:"updated"`
	Reason   string          `json:"reason,omitempty"`
	Status   int             `json:"status,omitempty"`
	Answer   json.RawMessage `json:"answer,omitempty"`
	// AnswerText holds an answer that is not JSON, as text.
	AnswerText string `json:"answer_text,omitempty"`
}

func (a *App) handleOutbox(mux *http.ServeMux) {
	mux.HandleFunc("GET /outbox", a.outboxList)
	mux.HandleFunc("GET /outbox/{id}", a.outboxGet)
	mux.HandleFunc("POST /outbox/{id}/retry", a.outboxRetry)
	mux.HandleFunc("DELETE /outbox/{id}", a.outboxDelete)
}

func (a *App) outboxList(w http.ResponseWriter, r *http.Request) {
	st, ok := a.outboxOr404(w)
	if !ok {
		return
	}
	stats := st.Stats()
	out := struct {
		MaxBytes    int64             `json:"max_bytes"`
		QueuedBytes int64             `json:"queued_bytes"`
		FileBytes   int64             `json:"file_bytes"`
		Routes      []outboxRouteJSON `json:"routes"`
	}{MaxBytes: stats.MaxBytes, QueuedBytes: stats.QueuedBytes, FileBytes: stats.FileBytes, Routes: []outboxRouteJSON{}}
	for route, rs := range stats.Routes {
		out.Routes = append(out.Routes, outboxRouteJSON{Route: route, Queued: rs.Queued, Delivered: rs.Delivered,
			Dead: rs.Dead, Unknown: rs.Unknown, OldestSeconds: rs.Oldest.Seconds()})
	}
	sort.Slice(out.Routes, func(i, j int) bool { return out.Routes[i].Route < out.Routes[j].Route })
	writeJSON(w, http.StatusOK, out)
}

func (a *App) outboxGet(w http.ResponseWriter, r *http.Request) {
	st, ok := a.outboxOr404(w)
	if !ok {
		return
	}
	sd, err := st.Get(r.PathValue("id"))
	if err != nil {
		a.outboxError(w, err)
		return
	}
	out := sendJSON{ID: sd.ID, Route: sd.Route, Method: sd.Method, Path: sd.Path, State: sd.State, Attempts: sd.Attempts,
		Kept: sd.Kept.UTC(), Due: sd.Due.UTC(), Updated: sd.Updated.UTC(), Reason: sd.Reason, Status: sd.Status}
	if len(sd.Answer) > 0 {
		if json.Valid(sd.Answer) {
			out.Answer = sd.Answer
		} else {
			out.AnswerText = string(sd.Answer)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *App) outboxRetry(w http.ResponseWriter, r *http.Request) {
	st, ok := a.outboxOr404(w)
	if !ok {
		return
	}
	id := r.PathValue("id")
	if err := st.Retry(id); err != nil {
		a.outboxError(w, err)
		return
	}
	a.log.Info("outbox: a send was put back in its queue by hand", zap.String("id", id))
	a.wakeCourier()
	writeJSON(w, http.StatusOK, map[string]string{"id": id, "state": string(outbox.Queued)})
}

func (a *App) outboxDelete(w http.ResponseWriter, r *http.Request) {
	st, ok := a.outboxOr404(w)
	if !ok {
		return
	}
	id := r.PathValue("id")
	if err := st.Delete(id); err != nil {
		a.outboxError(w, err)
		return
	}
	a.log.Info("outbox: a send was deleted by hand", zap.String("id", id))
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "deleted": true})
}

// outboxOr404 is the store, or a 404 when no route defers.
func (a *App) outboxOr404(w http.ResponseWriter) (deferral.Outbox, bool) {
	if a.kept == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no route has defer: the outbox is not open"})
		return nil, false
	}
	return a.kept.store, true
}

// outboxError answers a store error: the words say what to do, and name
// no part of any send.
func (a *App) outboxError(w http.ResponseWriter, err error) {
	status, msg := http.StatusInternalServerError, "the outbox could not be read or written; see the proxy's log"
	switch {
	case errors.Is(err, outbox.ErrNotFound):
		status, msg = http.StatusNotFound, "no such send (never kept, deleted, or pruned after it finished)"
	case errors.Is(err, outbox.ErrNotDead):
		status, msg = http.StatusConflict, "only a dead or unknown send can be retried; this one is queued or delivered"
	case errors.Is(err, outbox.ErrSending):
		status, msg = http.StatusConflict, "the send is being sent and its outcome is not known yet: try again once it is delivered, dead or unknown"
	case errors.Is(err, outbox.ErrFull):
		status, msg = http.StatusInsufficientStorage, "the outbox (or the send's route or queue share) is full: retry after the queue drains"
	default:
		a.log.Warn("outbox admin", zap.Error(err))
	}
	writeJSON(w, status, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

package deferral

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// keptFacts are the facts the door decided for a send, kept with it so that
// its delivery is the same call: the proxy does not decide them again
// (the route table and the client's token may have changed since).
type keptFacts struct {
	API        string             `json:"api"`
	Route      string             `json:"route"`
	Upstream   dingtalk.Upstream  `json:"up"`
	Metered    bool               `json:"metered,omitempty"`
	Idempotent bool               `json:"idem,omitempty"`
	Inject     dingtalk.Placement `json:"inject,omitempty"`
}

// maxFactName bounds the API and route names read back.
const maxFactName = 1024

func encodeFacts(f *call.Facts) []byte {
	b, _ := json.Marshal(keptFacts{API: f.API, Route: f.Route, Upstream: f.Upstream, Metered: f.Metered, Idempotent: f.Idempotent, Inject: f.Inject})
	return b
}

// decodeFacts reads kept facts back, checked: a value out of bounds is an
// error, never trusted.
func decodeFacts(b []byte, id string, body []byte) (*call.Facts, error) {
	var k keptFacts
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("deferral: kept facts do not parse: %w", err)
	}
	switch {
	case k.API == "" || len(k.API) > maxFactName || !utf8.ValidString(k.API):
		return nil, fmt.Errorf("deferral: kept facts: bad api")
	case k.Route == "" || len(k.Route) > maxFactName || !utf8.ValidString(k.Route) || strings.ContainsAny(k.Route, "\x00\n"):
		return nil, fmt.Errorf("deferral: kept facts: bad route")
	case k.Upstream != dingtalk.OAPI && k.Upstream != dingtalk.API:
		return nil, fmt.Errorf("deferral: kept facts: bad upstream %d", k.Upstream)
	case k.Inject > dingtalk.PlaceHeader:
		return nil, fmt.Errorf("deferral: kept facts: bad token placement %d", k.Inject)
	}
	return &call.Facts{
		API:        k.API,
		Route:      k.Route,
		Upstream:   k.Upstream,
		Metered:    k.Metered,
		AppCall:    k.Inject != dingtalk.PlaceNone, // a send is never a token call
		Idempotent: k.Idempotent,
		Inject:     k.Inject,
		Body:       body,
		Replayable: true,
		Kept:       id,
	}, nil
}

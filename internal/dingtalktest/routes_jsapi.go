package dingtalktest

import (
	"net/http"
)

// JSAPI ticket paths: calls that live beside the token endpoints but use
// the app token (an H5 micro-app signs its pages with the ticket).
const (
	PathJsapiTickets   = "/v1.0/oauth2/jsapiTickets" // POST, x-acs-dingtalk-access-token
	PathGetJsapiTicket = "/get_jsapi_ticket"         // GET ?access_token=
)

func init() {
	routes[PathJsapiTickets] = route{h: jsapiTickets}
	routes[PathGetJsapiTicket] = route{h: getJsapiTicket}
}

func jsapiTickets(s *Server, w http.ResponseWriter, r *http.Request, _ []byte, exec func()) {
	exec()
	s.answerOK(w, r.URL.Path, map[string]any{"jsapiTicket": "ticket-" + s.randomHex(8), "expireIn": 7200})
}

func getJsapiTicket(s *Server, w http.ResponseWriter, r *http.Request, _ []byte, exec func()) {
	exec()
	s.answerOK(w, r.URL.Path, map[string]any{"ticket": "ticket-" + s.randomHex(8), "expires_in": 7200})
}

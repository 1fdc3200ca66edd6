package dingtalk

import (
	"bytes"
	"net/http"
	"strings"
)

// Upstream names one of DingTalk's two hosts.
type Upstream uint8

const (
	// OAPI is oapi.dingtalk.com: token in the query, errors as errcode in HTTP 200.
	OAPI Upstream = iota
	// API is api.dingtalk.com: token in a header, errors as JSON code + status.
	API
)

func (u Upstream) String() string {
	if u == API {
		return "api"
	}
	return "oapi"
}

// UpstreamFor routes a request path: /v1.0/ and /v2.0/ go to the api host.
func UpstreamFor(path string) Upstream {
	if strings.HasPrefix(path, "/v1.0/") || strings.HasPrefix(path, "/v2.0/") {
		return API
	}
	return OAPI
}

// readEndpoints is the catalogue of DingTalk reads that use POST. Repeating
// them is harmless.
var readEndpoints = map[string]struct{}{
	"/topapi/v2/user/get":                              {},
	"/topapi/v2/user/list":                             {},
	"/topapi/v2/user/count":                            {},
	"/topapi/v2/user/getbymobile":                      {},
	"/topapi/user/getbyunionid":                        {},
	"/topapi/user/listid":                              {},
	"/topapi/user/listsimple":                          {},
	"/topapi/user/listadmin":                           {},
	"/topapi/v2/department/get":                        {},
	"/topapi/v2/department/listsub":                    {},
	"/topapi/v2/department/listsubid":                  {},
	"/topapi/v2/department/listparentbyuser":           {},
	"/topapi/v2/department/listparentbydept":           {},
	"/topapi/processinstance/get":                      {},
	"/topapi/processinstance/listids":                  {},
	"/topapi/message/corpconversation/getsendprogress": {},
	"/topapi/message/corpconversation/getsendresult":   {},
	"/topapi/attendance/getleavestatus":                {},
	"/topapi/attendance/getupdatedata":                 {},
	"/topapi/smartwork/hrm/employee/queryonjob":        {},
	"/topapi/smartwork/hrm/employee/v2/list":           {},
	"/attendance/list":                                 {},
	"/attendance/listRecord":                           {},
	"/v1.0/contact/users/search":                       {},
	"/v1.0/contact/departments/search":                 {},
	"/v1.0/robot/oToMessages/readStatus":               {},
	"/v1.0/workflow/processInstances/query":            {},
	"/v1.0/attendance/groups/memberUsers/list":         {},
	"/v1.0/attendance/approvals/records/query":         {},
}

// IsReadEndpoint reports whether path is a DingTalk read that uses POST.
func IsReadEndpoint(path string) bool {
	_, ok := readEndpoints[path]
	return ok
}

var (
	keyClientToken = []byte(`"clientToken"`)
	keyMsgUUID     = []byte(`"msgUuid"`)
)

// HasIdempotencyKey reports whether the request carries one of DingTalk's own
// idempotency keys, with which DingTalk itself drops a repeat: an
// x-client-token header, a top-level clientToken field, or msgUuid in a
// /robot/send body. Empty values do not count.
func HasIdempotencyKey(path string, h http.Header, body []byte) bool {
	if h.Get(HeaderClientToken) != "" {
		return true
	}
	key := keyClientToken
	if path == PathRobotSend {
		key = keyMsgUUID
	}
	if !bytes.Contains(body, key) {
		return false
	}
	return topLevelString(body, key[1:len(key)-1]) != ""
}

// topLevelString returns the value of a top-level string member of a JSON
// object, or "" when there is none.
func topLevelString(b []byte, name []byte) string {
	it, ok := newMembers(b)
	for ok {
		var key, val []byte
		var isString bool
		key, val, isString, ok = it.next()
		if ok && isString && bytes.Equal(key, name) {
			return string(val)
		}
	}
	return ""
}

// Placement is where a request carries the app's access token.
type Placement uint8

const (
	// PlaceNone: the token is not injected (robot webhooks, token calls, a
	// client's own token, pass-through mode).
	PlaceNone Placement = iota
	// PlaceQuery: the access_token query parameter (oapi).
	PlaceQuery
	// PlaceHeader: the x-acs-dingtalk-access-token header (api).
	PlaceHeader
)

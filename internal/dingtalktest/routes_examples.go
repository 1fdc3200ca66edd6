package dingtalktest

import "net/http"

// UnknownUserID is the one unionId the fake does not know: GET
// PathContactUsers+UnknownUserID answers HTTP 404
// {"code":"UserNotFound","message":...,"requestid":...}, a business error
// (dingproxy neither retries it nor counts it against the breaker). Every
// other id is a known user. The examples use it to show how an SDK reports
// DingTalk's own errors through dingproxy.
const UnknownUserID = "unknown-user"

// codeUserNotFound is the fake's api code for an unknown user.
const codeUserNotFound = "UserNotFound"

const msgUserNotFound = "用户不存在"

// An exact path wins over lookupRoute's PathContactUsers prefix.
func init() {
	routes[PathContactUsers+UnknownUserID] = route{h: contactUserUnknown}
}

// contactUserUnknown rejects the request without executing it.
func contactUserUnknown(s *Server, w http.ResponseWriter, _ *http.Request, _ []byte, _ func()) {
	s.apiError(w, http.StatusNotFound, codeUserNotFound, msgUserNotFound)
}

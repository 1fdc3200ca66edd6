package dingtalktest

import (
	"net/http"
	"testing"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

func TestContactUser_UnknownIDIsNotFound(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	tok := fetchToken(t, c, s)

	res := call(t, c, s, http.MethodGet, PathContactUsers+UnknownUserID, tok, nil)
	if res.status != http.StatusNotFound {
		t.Fatalf("status = %d, want 404 (%s)", res.status, res.raw)
	}
	checkFields(t, res, map[string]any{"code": codeUserNotFound, "message": msgUserNotFound})
	if id, _ := res.json["requestid"].(string); id == "" || res.header.Get("x-acs-request-id") != id {
		t.Errorf("requestid = %q, x-acs-request-id = %q: want the same, non-empty", id, res.header.Get("x-acs-request-id"))
	}
	if got := s.Executions(PathContactUsers + UnknownUserID); got != 0 {
		t.Errorf("Executions = %d for an unknown user, want 0", got)
	}

	// Auth still comes first: no token is a missing-token error, not 404.
	res = call(t, c, s, http.MethodGet, PathContactUsers+UnknownUserID, "", nil)
	if res.status != http.StatusBadRequest {
		t.Errorf("no token: status = %d, want 400 (%s)", res.status, res.raw)
	}
	checkFields(t, res, map[string]any{"code": dingtalk.CodeMissingToken})

	// Any other id is a known user, including ones that merely start with it.
	for _, id := range []string{"u1", UnknownUserID + "2"} {
		res = call(t, c, s, http.MethodGet, PathContactUsers+id, tok, nil)
		if res.status != http.StatusOK {
			t.Errorf("%s: status = %d, want 200 (%s)", id, res.status, res.raw)
		}
		checkFields(t, res, map[string]any{"userId": id, "unionId": "union-" + id})
	}
}

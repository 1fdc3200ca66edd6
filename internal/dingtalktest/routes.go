package dingtalktest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// A routeFunc answers an authenticated request; it calls exec exactly when
// the request is executed (not when it rejects the parameters).
type routeFunc func(s *Server, w http.ResponseWriter, r *http.Request, body []byte, exec func())

type route struct {
	h    routeFunc
	send bool // non-idempotent: executions are duplicate-counted
}

// Paths the fake serves besides the token endpoints and the robot webhook.
const (
	PathUserGet        = "/topapi/v2/user/get"
	PathDeptListSub    = "/topapi/v2/department/listsub"
	PathDeptList       = "/department/list"
	PathAttendanceList = "/attendance/list"
	PathContactUsers   = "/v1.0/contact/users/" // + {id}
	PathAsyncSend      = "/topapi/message/corpconversation/asyncsend_v2"
	PathChatSend       = "/chat/send"
	PathProcessCreate  = "/topapi/processinstance/create"
	PathRobotBatchSend = "/v1.0/robot/oToMessages/batchSend"
	PathRobotGroupSend = "/v1.0/robot/groupMessages/send"
	PathEcho           = "/echo"
	PathAPIEcho        = "/v1.0/echo"
)

var routes = map[string]route{
	PathUserGet:        {h: userGet},
	PathDeptListSub:    {h: deptListSub},
	PathDeptList:       {h: deptList},
	PathAttendanceList: {h: attendanceList},
	PathAsyncSend:      {h: asyncSend, send: true},
	PathChatSend:       {h: chatSend, send: true},
	PathProcessCreate:  {h: processCreate, send: true},
	PathRobotBatchSend: {h: robotBatchSend, send: true},
	PathRobotGroupSend: {h: robotGroupSend, send: true},
	PathEcho:           {h: echo},
	PathAPIEcho:        {h: echo},
}

func lookupRoute(path string) (routeFunc, bool) {
	if rt, ok := routes[path]; ok {
		return rt.h, rt.send
	}
	if id, ok := strings.CutPrefix(path, PathContactUsers); ok && id != "" && !strings.Contains(id, "/") {
		return contactUser, false
	}
	return nil, false
}

func (s *Server) nextID() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextTask++
	return s.nextTask
}

func userGet(s *Server, w http.ResponseWriter, r *http.Request, body []byte, exec func()) {
	var req struct {
		UserID string `json:"userid"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.UserID == "" {
		s.oapiError(w, r.URL.Path, dingtalk.ErrcodeBadParameter, "缺少参数 userid")
		return
	}
	exec()
	s.answerOK(w, r.URL.Path, map[string]any{"result": map[string]any{
		"userid":       req.UserID,
		"unionid":      "union-" + req.UserID,
		"name":         "User " + req.UserID,
		"dept_id_list": []int{1},
		"active":       true,
	}})
}

func deptListSub(s *Server, w http.ResponseWriter, r *http.Request, body []byte, exec func()) {
	req := struct {
		DeptID int64 `json:"dept_id"`
	}{DeptID: 1}
	if len(body) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			s.oapiError(w, r.URL.Path, dingtalk.ErrcodeBadParameter, "参数错误 dept_id")
			return
		}
	}
	exec()
	var result []map[string]any
	for i := int64(1); i <= 2; i++ {
		id := req.DeptID*100 + i
		result = append(result, map[string]any{
			"dept_id":   id,
			"name":      "Dept " + strconv.FormatInt(id, 10),
			"parent_id": req.DeptID,
		})
	}
	s.answerOK(w, r.URL.Path, map[string]any{"result": result})
}

func deptList(s *Server, w http.ResponseWriter, r *http.Request, _ []byte, exec func()) {
	parent := int64(1)
	if v := r.URL.Query().Get("id"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			s.oapiError(w, r.URL.Path, dingtalk.ErrcodeBadParameter, "参数错误 id")
			return
		}
		parent = n
	}
	exec()
	var depts []map[string]any
	for i := int64(1); i <= 2; i++ {
		id := parent*100 + i
		depts = append(depts, map[string]any{
			"id":       id,
			"name":     "Dept " + strconv.FormatInt(id, 10),
			"parentid": parent,
		})
	}
	s.answerOK(w, r.URL.Path, map[string]any{"department": depts})
}

func attendanceList(s *Server, w http.ResponseWriter, r *http.Request, body []byte, exec func()) {
	var req struct {
		UserIDs []string `json:"userIdList"`
	}
	if len(body) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			s.oapiError(w, r.URL.Path, dingtalk.ErrcodeBadParameter, "参数错误")
			return
		}
	}
	exec()
	records := []map[string]any{}
	for _, u := range req.UserIDs {
		records = append(records, map[string]any{
			"userId":     u,
			"checkType":  "OnDuty",
			"timeResult": "Normal",
		})
	}
	s.answerOK(w, r.URL.Path, map[string]any{"hasMore": false, "recordresult": records})
}

func contactUser(s *Server, w http.ResponseWriter, r *http.Request, _ []byte, exec func()) {
	id := strings.TrimPrefix(r.URL.Path, PathContactUsers)
	exec()
	s.answerOK(w, r.URL.Path, map[string]any{"userId": id, "unionId": "union-" + id, "name": "User " + id})
}

func asyncSend(s *Server, w http.ResponseWriter, r *http.Request, _ []byte, exec func()) {
	exec()
	s.answerOK(w, r.URL.Path, map[string]any{"task_id": s.nextID()})
}

func chatSend(s *Server, w http.ResponseWriter, r *http.Request, _ []byte, exec func()) {
	exec()
	s.answerOK(w, r.URL.Path, map[string]any{"messageId": "msg" + strconv.FormatInt(s.nextID(), 36)})
}

func processCreate(s *Server, w http.ResponseWriter, r *http.Request, _ []byte, exec func()) {
	exec()
	s.answerOK(w, r.URL.Path, map[string]any{"process_instance_id": "pi-" + strconv.FormatInt(s.nextID(), 10)})
}

func robotBatchSend(s *Server, w http.ResponseWriter, r *http.Request, _ []byte, exec func()) {
	exec()
	s.answerOK(w, r.URL.Path, map[string]any{
		"processQueryKey":           "pqk-" + strconv.FormatInt(s.nextID(), 10),
		"invalidStaffIdList":        []string{},
		"flowControlledStaffIdList": []string{},
	})
}

func robotGroupSend(s *Server, w http.ResponseWriter, r *http.Request, _ []byte, exec func()) {
	exec()
	s.answerOK(w, r.URL.Path, map[string]any{"processQueryKey": "pqk-" + strconv.FormatInt(s.nextID(), 10)})
}

// echo reports the body's SHA-256 and length, so tests can prove a body
// arrived byte for byte.
func echo(s *Server, w http.ResponseWriter, r *http.Request, body []byte, exec func()) {
	exec()
	sum := sha256.Sum256(body)
	s.answerOK(w, r.URL.Path, map[string]any{"sha256": hex.EncodeToString(sum[:]), "length": len(body)})
}

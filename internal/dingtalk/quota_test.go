package dingtalk

import (
	"net/http"
	"testing"
)

// A 90020 answer, in either host's shape, says the organisation's usage and
// quota; an answer that does not say gives -1.
func TestQuotaAnswer(t *testing.T) {
	for _, tt := range []struct {
		name        string
		status      int
		body        string
		used, limit int64
	}{
		{"oapi, DingTalk's help page", 200, `{"errcode":90020,"errmsg":"您的企业本月api调用量已超过限制,调用量:10001次,额度:10000次,请登录开发者后台-资源管理-查看用量明细"}`, 10001, 10000},
		{"oapi, full-width colons", 200, `{"errcode":90020,"errmsg":"调用量：5003次，额度：5000次"}`, 5003, 5000},
		{"oapi, escaped", 200, `{"errcode":90020,"errmsg":"\u8c03\u7528\u91cf:51\u6b21,\u989d\u5ea6:50\u6b21"}`, 51, 50},
		{"oapi, figures unsaid", 200, `{"errcode":90020,"errmsg":"quota exceeded"}`, -1, -1},
		{"api", 403, `{"code":"Forbidden.AccessDenied.ApiCountLimitForOrg","message":"您的企业本月api调用量已超过限制,调用量:7次,额度:5次","requestid":"x"}`, 7, 5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := Classify(tt.status, "application/json", []byte(tt.body))
			if r.Reason != ReasonQuota || r.QuotaUsed != tt.used || r.QuotaLimit != tt.limit {
				t.Errorf("Classify = %s, used %d, limit %d; want quota, %d, %d", r.Reason, r.QuotaUsed, r.QuotaLimit, tt.used, tt.limit)
			}
		})
	}
	if r := Classify(http.StatusOK, "application/json", []byte(`{"errcode":0}`)); r.Reason != ReasonSuccess {
		t.Errorf("success classified %s", r.Reason)
	}
}

// Token, SSO and contacts APIs are not metered; every other route is taken
// as metered, known or not.
func TestMetered(t *testing.T) {
	for path, want := range map[string]bool{
		"/gettoken":                                     false,
		"/v1.0/oauth2/accessToken":                      false,
		"/sso/getuserinfo":                              false,
		"/topapi/v2/user/get":                           false,
		"/topapi/v2/department/listsub":                 false,
		"/department/list":                              false,
		"/v1.0/contact/users/u1":                        false,
		"/attendance/list":                              true,
		"/topapi/message/corpconversation/asyncsend_v2": true,
		"/topapi/processinstance/get":                   true,
		"/v1.0/robot/oToMessages/batchSend":             true,
		"/never/seen":                                   true,
	} {
		if got := Describe(path).Metered; got != want {
			t.Errorf("Describe(%q).Metered = %v, want %v", path, got, want)
		}
	}
}

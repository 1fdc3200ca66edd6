package dingtalk

import "time"

// Header and query names used on the wire.
const (
	// HeaderAccessToken carries the token on the api upstream (/v1.0/, /v2.0/).
	HeaderAccessToken = "x-acs-dingtalk-access-token"
	// QueryAccessToken carries the token on the oapi upstream.
	QueryAccessToken = "access_token"
	// HeaderClientToken is the idempotency key of calendar and similar api calls.
	HeaderClientToken = "x-client-token"
)

// Token endpoints.
const (
	// PathOAuth2Token is the new token endpoint on the api host:
	// POST {"appKey","appSecret"} -> {"accessToken","expireIn"}.
	PathOAuth2Token = "/v1.0/oauth2/accessToken"
	// PathGetToken is the old token endpoint on the oapi host:
	// GET ?appkey=&appsecret= -> {"errcode":0,"access_token","expires_in"}.
	PathGetToken = "/gettoken"
	// PathRobotSend is the custom robot webhook; its access_token is the robot's own.
	PathRobotSend = "/robot/send"
	// DefaultTokenTTL is used when DingTalk gives no or a non-positive lifetime.
	DefaultTokenTTL = 7200 // seconds
)

// oapi errcodes (HTTP 200 JSON "errcode").
const (
	ErrcodeOK            = 0
	ErrcodeSystemBusy    = -1    // 系统繁忙: transient, execution state unknown
	ErrcodeGateway       = 88    // topapi gateway wrapper; see sub_code
	ErrcodeTokenInvalid  = 40014 // 不合法的access_token
	ErrcodeTokenExpired  = 42001 // access_token超时
	ErrcodeSecretOrToken = 40001 // Secret错误，或者access_token无效
	ErrcodeTokenMissing  = 41001 // access_token missing: a proxy bug, never a refresh trigger
	ErrcodeTokenBlank    = 40000 // as 88 sub_code: "access_token is blank"
	ErrcodeBadParameter  = 40035 // 缺少参数 / bad parameter
	ErrcodeBadAppKey     = 40096 // 不合法的appKey或appSecret (token fetch)
	ErrcodeBadAppKey2    = 40089 // 不合法的corpid或corpsecret (token fetch)
	ErrcodeNoPermission  = 60011 // 没有调用该接口的权限
	ErrcodeNoSuchUser    = 60121 // 找不到该用户
	ErrcodeQPSAppAPI     = 90018 // per app per API QPS limit, 1 s penalty
	ErrcodeQPSAPI        = 90002 // global per-API QPS limit; errmsg carries the penalty end
	ErrcodeQPSSuiteAPI   = 90019 // ISV per app per corp per API QPS limit
	ErrcodeMonthlyQuota  = 90020 // monthly API quota exhausted: not transient
	ErrcodeRobotNoToken  = 300005
	ErrcodeUnknownPath   = 404   // 请求的URI地址不存在: the gateway knows no such path
	ErrcodeInvalidMethod = 22    // Invalid method: no such topapi method
	ErrcodeQPMAppAPI     = 90006 // per app per API per minute (1,500/min in an older doc)
	ErrcodeQPMCorpAPI    = 90005 // per corp per API per minute
	// A custom robot past 20 messages a minute is blocked for 10 minutes:
	// 130101 as seen, 410100 as documented, 660026 as probed.
	ErrcodeRobotTooFast    = 130101
	ErrcodeRobotTooFastDoc = 410100
	ErrcodeRobotTooMany    = 660026
	// A custom robot's security settings refused the message, unexecuted:
	// a signature that does not match or whose timestamp is over an hour
	// old, or no configured keyword in it. The same message never passes.
	ErrcodeRobotSecurity = 310000
	// A custom robot's message over 20,000 bytes (RobotMaxBody).
	ErrcodeRobotTooLong = 460101
)

// RobotMaxBody is the largest body a custom robot takes: past it DingTalk
// answers 460101 "message too long".
const RobotMaxBody = 20000

// RobotSignWindow is how long a signed robot message is good for from its
// own timestamp: past it DingTalk answers 310000, and only the robot's
// secret (which the proxy never has) can sign it again.
const RobotSignWindow = time.Hour

// api error codes (JSON "code" with an HTTP status).
const (
	CodeInvalidAuthentication = "InvalidAuthentication"
	CodeMissingToken          = "AuthenticationFailed.MissingParameter"
	CodeQPSLimitPrefix        = "Forbidden.AccessDenied.QpsLimit"
	CodeQPMLimitPrefix        = "Forbidden.AccessDenied.QpmLimit"
	CodeQPSLimitAppAPI        = "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"
	CodeMonthlyQuota          = "Forbidden.AccessDenied.ApiCountLimitForOrg"
	CodeNoPermission          = "Forbidden.AccessDenied.AccessTokenPermissionDenied"
	CodeSystemBusy            = "system.busy"
	CodeSystemBusyAlt         = "systemBusy"
	CodeInvalidClient         = "invalidClientIdOrSecret"
	CodeInvalidParameter      = "invalidParameter"
	CodeUnknownError          = "unknownError"
	// CodeNotFound and CodeInvalidActionNotFound, on a 404, are the
	// gateway's "no such API".
	CodeNotFound              = "NotFound"
	CodeInvalidActionNotFound = "InvalidAction.NotFound"
)

// IPBanStatus is the "status" of the JSON answer to an egress IP over its limit:
// {"status":1111,"wait":5,"source":"x5","punish":"deny","uuid":"..."}.
const IPBanStatus = 1111

// IPBanDuration is how long DingTalk bans an egress IP past 10,000 calls in 20 s.
const IPBanDuration = 5 * 60 // seconds

// ThrottlePenalty is DingTalk's documented block after a QPS throttle answer.
const ThrottlePenalty = 1 // second

// RobotBlock is how long DingTalk blocks a custom robot past its limit.
const RobotBlock = 10 * 60 // seconds

// RobotPerMinute is a custom robot's documented limit, over any
// RobotWindow.
const RobotPerMinute = 20

// RobotWindow is the span a custom robot's limit is counted over.
const RobotWindow = time.Minute

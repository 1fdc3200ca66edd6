// Command example points the official DingTalk Go SDK
// (github.com/alibabacloud-go/dingtalk) at dingproxy instead of
// api.dingtalk.com and makes five calls, one line each. It exits 1 if any
// answer is not the expected one. Tokens are never printed, only their length.
//
// Environment (defaults match bin/fakedingtalk):
//
//	DINGPROXY_PORT            dingproxy's port on 127.0.0.1 (8080)
//	DINGTALK_APP_KEY          app key dingproxy is configured with (demo-app-key)
//	DINGTALK_APP_SECRET       its secret (demo-app-secret)
//	DINGTALK_ROBOT_CODE       the robot that sends the one-to-one message (demo-robot)
//	DINGTALK_USER_ID          a unionId DingTalk knows (manager7)
//	DINGTALK_UNKNOWN_USER_ID  a unionId it does not (unknown-user)
package main

import (
	"errors"
	"fmt"
	"os"

	openapi "github.com/alibabacloud-go/darabonba-openapi/v2/client"
	contact "github.com/alibabacloud-go/dingtalk/contact_1_0"
	oauth2 "github.com/alibabacloud-go/dingtalk/oauth2_1_0"
	robot "github.com/alibabacloud-go/dingtalk/robot_1_0"
	"github.com/alibabacloud-go/tea/tea"
)

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

var (
	port          = env("DINGPROXY_PORT", "8080")
	appKey        = env("DINGTALK_APP_KEY", "demo-app-key")
	appSecret     = env("DINGTALK_APP_SECRET", "demo-app-secret")
	robotCode     = env("DINGTALK_ROBOT_CODE", "demo-robot")
	userID        = env("DINGTALK_USER_ID", "manager7")
	unknownUserID = env("DINGTALK_UNKNOWN_USER_ID", "unknown-user")
)

// config is the one change an application makes: plain HTTP to the sidecar.
func config() *openapi.Config {
	return &openapi.Config{
		Protocol: tea.String("http"),
		Endpoint: tea.String("127.0.0.1:" + port),
		RegionId: tea.String("central"),
		// The whole call, in ms (none by default): above dingproxy's default
		// retry.timeout (30s), so the SDK does not give up while the proxy
		// retries. (ConnectTimeout is left unset: tea v1.2.2 reads it in seconds.)
		ReadTimeout: tea.Int(35000),
	}
}

func main() {
	oauthClient, err := oauth2.NewClient(config())
	must(err)
	contactClient, err := contact.NewClient(config())
	must(err)
	robotClient, err := robot.NewClient(config())
	must(err)

	failed := 0
	// step runs fn, which reports whether the answer is the expected one and
	// what it got; an error fn returns is a failure.
	step := func(label, call string, fn func() (bool, string, error)) {
		ok, got, err := fn()
		if err != nil {
			ok, got = false, "unexpected "+describe(err)
		}
		mark := "ok  "
		if !ok {
			mark = "FAIL"
			failed++
		}
		fmt.Printf("%s %s: %s -> %s\n", mark, label, call, got)
	}

	// getUser expecting the SDK's typed error.
	expectError := func(id, wantCode string, wantStatus int) (bool, string, error) {
		res, err := contactClient.GetUser(tea.String(id))
		if err == nil {
			return false, fmt.Sprintf("HTTP %d and no error", tea.Int32Value(res.StatusCode)), nil
		}
		var sdkErr *tea.SDKError
		if !errors.As(err, &sdkErr) {
			return false, "", err
		}
		got := describe(err)
		ok := tea.StringValue(sdkErr.Code) == wantCode && tea.IntValue(sdkErr.StatusCode) == wantStatus
		if !ok {
			got += fmt.Sprintf(" (want code %s, statusCode %d)", wantCode, wantStatus)
		}
		return ok, got, nil
	}

	// (a) The SDK's own token call, with the configured key and secret:
	// dingproxy answers it from its cache (X-Dingproxy-Attempts: 0).
	step("token call", "POST /v1.0/oauth2/accessToken", func() (bool, string, error) {
		res, err := oauthClient.GetAccessToken(&oauth2.GetAccessTokenRequest{
			AppKey:    tea.String(appKey),
			AppSecret: tea.String(appSecret),
		})
		if err != nil {
			return false, "", err
		}
		tok := tea.StringValue(res.Body.AccessToken)
		expireIn := tea.Int64Value(res.Body.ExpireIn)
		n := attempts(res.Headers)
		ok := tea.Int32Value(res.StatusCode) == 200 && tok != "" && expireIn > 0 && n == "0"
		return ok, fmt.Sprintf("token of %d chars, expireIn %d, X-Dingproxy-Attempts %s", len(tok), expireIn, n), nil
	})

	// (b) A call with no x-acs-dingtalk-access-token header: dingproxy
	// injects its cached app token.
	step("token-less call", "GET /v1.0/contact/users/"+userID, func() (bool, string, error) {
		res, err := contactClient.GetUser(tea.String(userID))
		if err != nil {
			return false, "", err
		}
		status, unionID, n := tea.Int32Value(res.StatusCode), tea.StringValue(res.Body.UnionId), attempts(res.Headers)
		ok := status == 200 && unionID != "" && n != "" && n != "0"
		return ok, fmt.Sprintf("HTTP %d, unionId %s, X-Dingproxy-Attempts %s", status, unionID, n), nil
	})

	// (c) DingTalk's own business error reaches the SDK as its typed error.
	step("business error", "GET /v1.0/contact/users/"+unknownUserID, func() (bool, string, error) {
		return expectError(unknownUserID, "UserNotFound", 404)
	})

	// (d) dingproxy's own refusal (an encoded slash in the path), in the api
	// host's error shape, so the SDK reads its code as it reads DingTalk's.
	// The SDK puts the id into the path as it is, unescaped.
	step("proxy error", "GET /v1.0/contact/users/a%2Fb", func() (bool, string, error) {
		return expectError("a%2Fb", "dingproxy.BadRequest", 400)
	})

	// (e) A robot's one-to-one message through the SDK: a non-idempotent
	// send, with the app token injected by dingproxy and sent once.
	step("robot", "POST /v1.0/robot/oToMessages/batchSend", func() (bool, string, error) {
		res, err := robotClient.BatchSendOTO(&robot.BatchSendOTORequest{
			RobotCode: tea.String(robotCode),
			UserIds:   []*string{tea.String(userID)},
			MsgKey:    tea.String("sampleText"),
			MsgParam:  tea.String(`{"content":"hello from dingproxy examples/go"}`),
		})
		if err != nil {
			return false, "", err
		}
		status, key, n := tea.Int32Value(res.StatusCode), tea.StringValue(res.Body.ProcessQueryKey), attempts(res.Headers)
		ok := status == 200 && key != "" && n == "1"
		return ok, fmt.Sprintf("HTTP %d, processQueryKey %s, X-Dingproxy-Attempts %s", status, key, n), nil
	})

	if failed > 0 {
		fmt.Printf("%d of 5 steps failed\n", failed)
		os.Exit(1)
	}
}

func attempts(h map[string]*string) string {
	return tea.StringValue(h["x-dingproxy-attempts"])
}

func describe(err error) string {
	var sdkErr *tea.SDKError
	if errors.As(err, &sdkErr) && sdkErr.StatusCode != nil {
		return fmt.Sprintf("SDK error code %s, statusCode %d", tea.StringValue(sdkErr.Code), tea.IntValue(sdkErr.StatusCode))
	}
	return "error " + err.Error()
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

//go:build tools

// This file keeps github.com/alibabacloud-go/dingtalk in go.mod: main.go only
// reads its source, located with go list -m.
package main

import _ "github.com/alibabacloud-go/dingtalk/oauth2_1_0"

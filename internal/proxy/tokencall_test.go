package proxy

import "testing"

// TestCredentialsMatchNeedsSecret: with no secret configured, no caller
// matches, even one that shows none either.
func TestCredentialsMatchNeedsSecret(t *testing.T) {
	px := &Proxy{opts: Options{AppKey: "k"}}
	if px.credentialsMatch("k", "") {
		t.Error("empty secret matched an empty configured secret")
	}
	px.opts.AppSecret = "s"
	if !px.credentialsMatch("k", "s") || px.credentialsMatch("k", "S") || px.credentialsMatch("K", "s") || px.credentialsMatch("k", "s ") {
		t.Error("credentialsMatch is not exact")
	}
}

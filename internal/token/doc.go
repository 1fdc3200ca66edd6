// Package token keeps the one access token every proxied call shares: it
// fetches it from DingTalk (POST /v1.0/oauth2/accessToken or GET /gettoken),
// caches it, refreshes it in the background before it expires, lets only one
// fetch run at a time however many callers wait, never fetches from DingTalk
// more often than once a second (a token taken from the fleet, which another
// proxy fetched, is not such a fetch: a stale one is replaced at once), and
// drops a token DingTalk rejected only if it is still the current one.
//
// It does not decide where a token goes in a request or which answers mean a
// token was rejected: the proxy and package dingtalk do. Its errors never
// carry the app secret: a failed GET /gettoken's *url.Error has the query
// redacted before it leaves the package.
package token

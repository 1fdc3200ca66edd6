// Package call is the vocabulary of dingproxy's request path: what a call
// is (Facts, decided once at the door and never changed), what comes back
// from it (Report, a value), and the one small interface every policy
// layer has (Handler, Layer, Chain). The chain itself is composed in one
// place, internal/app's chain.go, which reads top to bottom.
//
// It holds no policy of its own and imports no other package of dingproxy
// but internal/dingtalk, the DingTalk model the Facts are described in.
package call

// Package app builds dingproxy from a validated configuration: this proxy's
// own stateful parts and, when a fleet is configured, their shared
// decorations (parts.go); the request path through them, in one chain that
// reads top to bottom (chain.go); the observer that turns what the layers
// tell into metrics and logs (observe.go); the proxy handler, the server
// and the admin endpoints; and reload, which builds every policy value anew
// and swaps it in. The binary, the demo and the end-to-end tests all build
// the proxy through it, so what is tested is what runs.
//
// It does not parse flags, read files or handle signals: cmd/dingproxy does.
package app

// Package app wires dingproxy together from a validated configuration: the
// upstream transport, the shared token source, the attempt loop, the proxy
// handler and the admin endpoints. The binary, the demo and the end-to-end
// tests all build the proxy through it, so what is tested is what runs.
//
// It does not parse flags, read files or handle signals: cmd/dingproxy does.
package app

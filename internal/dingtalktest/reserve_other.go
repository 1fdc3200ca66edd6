//go:build !unix

package dingtalktest

import (
	"errors"
	"net"
)

// reservation is not available here: between listening periods the port is
// free, and ResumeListening listens on the address anew.
type reservation struct{}

func reserve(net.Addr) (*reservation, error) {
	return nil, errors.New("dingtalktest: no port reservation on this platform")
}

func (*reservation) listen() (net.Listener, error) {
	return nil, errors.New("dingtalktest: no reservation")
}

func (*reservation) close() error { return nil }

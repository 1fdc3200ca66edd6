//go:build unix

package dingtalktest

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
)

// TestOutage_HoldsThePort: during an outage the port stays bound, so a
// socket without SO_REUSEADDR (as the kernel picks ephemeral ports) cannot
// have it; after Close it can.
func TestOutage_HoldsThePort(t *testing.T) {
	s := New(Options{})
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, err := net.ResolveTCPAddr("tcp", strings.TrimPrefix(s.URL(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	bind := func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer syscall.Close(fd)
		sa := &syscall.SockaddrInet4{Port: a.Port}
		copy(sa.Addr[:], a.IP.To4())
		return syscall.Bind(fd, sa)
	}
	if err := s.StopListening(); err != nil {
		t.Fatal(err)
	}
	if err := bind(); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("bind during the outage: %v, want EADDRINUSE", err)
	}
	s.Close()
	if err := bind(); err != nil {
		t.Errorf("bind after Close: %v, want the port free", err)
	}
}

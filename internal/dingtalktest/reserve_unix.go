//go:build unix

package dingtalktest

import (
	"errors"
	"net"
	"os"
	"syscall"
)

// A reservation holds a TCP port between listening periods: a socket bound
// to the address but not listening. Connections to it are refused, and no
// other socket can take the port meanwhile.
type reservation struct {
	fd int // -1 once handed over or closed
}

// reserve binds a new socket to addr, a *net.TCPAddr, with SO_REUSEADDR as
// Go's listeners have, so the connections of the closed listener in
// TIME_WAIT do not stop it.
func reserve(addr net.Addr) (*reservation, error) {
	a, ok := addr.(*net.TCPAddr)
	if !ok {
		return nil, errors.New("dingtalktest: reserve: not a TCP address")
	}
	family := syscall.AF_INET
	var sa syscall.Sockaddr
	if ip4 := a.IP.To4(); ip4 != nil {
		sa4 := &syscall.SockaddrInet4{Port: a.Port}
		copy(sa4.Addr[:], ip4)
		sa = sa4
	} else {
		family = syscall.AF_INET6
		sa6 := &syscall.SockaddrInet6{Port: a.Port}
		copy(sa6.Addr[:], a.IP.To16())
		sa = sa6
	}
	syscall.ForkLock.RLock()
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		_ = syscall.Close(fd)
		return nil, os.NewSyscallError("setsockopt", err)
	}
	if err := syscall.Bind(fd, sa); err != nil {
		_ = syscall.Close(fd)
		return nil, os.NewSyscallError("bind", err)
	}
	return &reservation{fd: fd}, nil
}

// listen makes the reserved socket listen and hands it over as a
// net.Listener; the reservation is used up either way.
func (r *reservation) listen() (net.Listener, error) {
	fd := r.fd
	r.fd = -1
	if err := syscall.Listen(fd, syscall.SOMAXCONN); err != nil {
		_ = syscall.Close(fd)
		return nil, os.NewSyscallError("listen", err)
	}
	f := os.NewFile(uintptr(fd), "dingtalktest")
	defer f.Close() // FileListener holds its own copy
	return net.FileListener(f)
}

func (r *reservation) close() error {
	if r.fd < 0 {
		return nil
	}
	fd := r.fd
	r.fd = -1
	return syscall.Close(fd)
}

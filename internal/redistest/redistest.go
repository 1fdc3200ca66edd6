// Package redistest runs a real redis-server for tests: the Debian binary on
// the PATH, on a free loopback port, with no persistence, stopped when the
// test ends. There is no fake Redis: the fleet is tested against the engine
// it runs on.
//
// Without redis-server on the PATH a test that needs it is skipped, saying
// why in one line; with CI=true it fails instead (CI installs the server,
// and a skipped fleet test there would pass for the wrong reason).
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Server is one redis-server process on 127.0.0.1.
type Server struct {
	bin  string
	dir  string
	port int

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Available says whether redis-server is on the PATH, and where.
func Available() (string, bool) {
	bin, err := exec.LookPath("redis-server")
	return bin, err == nil
}

// Start runs a redis-server for t, or skips t (fails it with CI=true) when
// there is none. It is stopped when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, ok := Available(); !ok {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server not on the PATH: CI must install it (apt-get install -y redis-server)")
		}
		t.Skip("redis-server not on the PATH: skipping the Redis tests (apt-get install -y redis-server)")
	}
	s, err := Launch()
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Launch runs a redis-server outside a test (the benchmarks' command):
// Close stops it.
func Launch() (*Server, error) {
	bin, ok := Available()
	if !ok {
		return nil, errors.New("redis-server not on the PATH (apt-get install -y redis-server)")
	}
	dir, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin, dir: dir}
	for range 5 { // a free port can be taken between finding and binding it
		if s.port, err = freePort(); err != nil {
			continue
		}
		if err = s.start(); err == nil {
			return s, nil
		}
	}
	os.RemoveAll(dir)
	return nil, err
}

// Close stops the server and removes its directory.
func (s *Server) Close() {
	s.Kill()
	os.RemoveAll(s.dir)
}

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is the server's redis:// URL, database 0.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

func (s *Server) start() error {
	cmd := exec.Command(s.bin,
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
		"--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
		// DEBUG SLEEP (a Redis that stalls) and DEBUG POPULATE (a big
		// keyspace) for the hostile-Redis tests, from loopback only.
		"--enable-debug-command", "local")
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := ping(s.Addr()); err == nil {
			break
		}
		select {
		case err := <-exited:
			return fmt.Errorf("redis-server on port %d exited: %v", s.port, err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("redis-server on port %d not answering PING after 10s", s.port)
		}
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	go func() { // reap it, whoever stops it
		err := <-exited
		_ = err
		s.mu.Lock()
		if s.cmd == cmd {
			s.cmd = nil
		}
		s.mu.Unlock()
	}()
	return nil
}

// Kill stops the server at once (SIGKILL), losing everything it held, as a
// crashed or restarted Redis does. It is safe to call twice.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	// Wait for the port to close, so a restart can bind it.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ping(s.Addr()) == nil {
		time.Sleep(5 * time.Millisecond)
	}
}

// Shutdown asks the server to stop with SHUTDOWN NOSAVE, and waits until it
// is gone.
func (s *Server) Shutdown() {
	_ = command(s.Addr(), "SHUTDOWN", "NOSAVE") // the server closes the connection: no reply
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ping(s.Addr()) == nil {
		time.Sleep(5 * time.Millisecond)
	}
	s.Kill()
}

// Pause stops the server's process (SIGSTOP) without closing anything: a
// Redis that hangs. Resume lets it go on.
func (s *Server) Pause() error { return s.signal(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig os.Signal) error {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		return errors.New("redistest: the server is not running")
	}
	return cmd.Process.Signal(sig)
}

// Restart starts the server again on the same port, empty.
func (s *Server) Restart() error {
	s.Kill()
	var err error
	for range 50 { // the port may linger a moment
		if err = s.start(); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("redistest: restart: %w", err)
}

// Do runs one command on the server and returns its reply line, for tests
// that look at what the fleet stored (KEYS, GET, TTL).
func (s *Server) Do(args ...string) (string, error) {
	return roundTrip(s.Addr(), args...)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func ping(addr string) error {
	r, err := roundTrip(addr, "PING")
	if err != nil {
		return err
	}
	if r != "PONG" {
		return fmt.Errorf("PING answered %q", r)
	}
	return nil
}

func command(addr string, args ...string) error {
	_, err := roundTrip(addr, args...)
	return err
}

// roundTrip sends one RESP command and reads its reply (readReply).
func roundTrip(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	return readReply(bufio.NewReader(c))
}

// readReply reads one RESP reply: a simple string, integer or bulk string
// as its value, an array as its elements joined by spaces, nil as "".
func readReply(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "-"):
		return "", fmt.Errorf("redis: %s", line[1:])
	case line == "$-1" || line == "*-1":
		return "", nil
	case strings.HasPrefix(line, "$"):
		v, err := r.ReadString('\n')
		return strings.TrimRight(v, "\r\n"), err
	case strings.HasPrefix(line, "*"):
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", fmt.Errorf("redis: bad array header %q", line)
		}
		parts := make([]string, 0, n)
		for range n {
			v, err := readReply(r)
			if err != nil {
				return "", err
			}
			parts = append(parts, v)
		}
		return strings.Join(parts, " "), nil
	}
	return strings.TrimLeft(line, "+:"), nil
}

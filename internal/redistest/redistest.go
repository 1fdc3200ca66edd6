// Package redistest runs a real redis-server for tests: the Debian binary on
// the PATH, on a free loopback port, with no persistence, stopped when the
// test ends. There is no fake Redis: the fleet is tested against the engine
// it runs on.
//
// With REDISTEST_CLUSTER=1 in the environment, Start runs a Redis Cluster
// of three masters instead (cluster.go): the same tests, unchanged, run
// against a cluster, as a managed Redis in cluster mode serves the fleet.
// (The variable does not start with DINGPROXY_: the proxy refuses unknown
// variables of its own prefix.)
//
// Without redis-server on the PATH a test that needs it is skipped, saying
// why in one line; with CI=true it fails instead (CI installs the server,
// and a skipped fleet test there would pass for the wrong reason).
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClusterEnv is the environment variable that makes Start run a cluster.
const ClusterEnv = "REDISTEST_CLUSTER"

// Server is one redis-server process on 127.0.0.1, or a cluster of three
// (LaunchCluster) whose methods act on every node.
type Server struct {
	dir   string
	nodes []*node // one; three masters in a cluster
}

// node is one redis-server process.
type node struct {
	bin  string
	dir  string
	port int
	bus  int // the cluster bus port; 0: not in a cluster

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Available says whether redis-server is on the PATH, and where.
func Available() (string, bool) {
	bin, err := exec.LookPath("redis-server")
	return bin, err == nil
}

// ClusterMode says whether Start runs a cluster (REDISTEST_CLUSTER=1).
func ClusterMode() bool { return os.Getenv(ClusterEnv) == "1" }

// Start runs a redis-server for t (a cluster of three with
// REDISTEST_CLUSTER=1), or skips t (fails it with CI=true) when there is
// none. It is stopped when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, ok := Available(); !ok {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server not on the PATH: CI must install it (apt-get install -y redis-server)")
		}
		t.Skip("redis-server not on the PATH: skipping the Redis tests (apt-get install -y redis-server)")
	}
	launch := Launch
	if ClusterMode() {
		launch = LaunchCluster
	}
	s, err := launch()
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(s.Close)
	if s.Cluster() {
		t.Logf("redistest: a Redis Cluster of %d masters at %s", len(s.nodes), strings.Join(s.Addrs(), " "))
	}
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
	n := &node{bin: bin, dir: dir}
	for range 5 { // a free port can be taken between finding and binding it
		if n.port, err = freePort(); err != nil {
			continue
		}
		if err = n.start(); err == nil {
			return &Server{dir: dir, nodes: []*node{n}}, nil
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

// Cluster says whether s is a cluster.
func (s *Server) Cluster() bool { return len(s.nodes) > 1 }

// Addr is host:port (a cluster's first node).
func (s *Server) Addr() string { return s.nodes[0].addr() }

// Addrs are every node's host:port.
func (s *Server) Addrs() []string {
	out := make([]string, len(s.nodes))
	for i, n := range s.nodes {
		out[i] = n.addr()
	}
	return out
}

// URL is the server's redis:// URL, database 0; a cluster's names its
// first node and the others as addr= parameters (fleet.redis_url's cluster
// form).
func (s *Server) URL() string {
	if !s.Cluster() {
		return "redis://" + s.Addr() + "/0"
	}
	u := "redis://" + s.Addr()
	for i, a := range s.Addrs()[1:] {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		u += sep + "addr=" + a
	}
	return u
}

// Client is a go-redis client of s, for tests that read what the fleet
// stored with go-redis (a cluster client for a cluster).
func (s *Server) Client() redis.UniversalClient {
	return redis.NewUniversalClient(&redis.UniversalOptions{Addrs: s.Addrs(), IsClusterMode: s.Cluster()})
}

func (n *node) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(n.port)) }

func (n *node) start() error {
	args := []string{
		"--port", strconv.Itoa(n.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", n.dir,
		"--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
		// DEBUG SLEEP (a Redis that stalls) and DEBUG POPULATE (a big
		// keyspace) for the hostile-Redis tests, from loopback only.
		"--enable-debug-command", "local"}
	if n.bus != 0 {
		args = append(args, clusterArgs(n.bus)...)
	}
	cmd := exec.Command(n.bin, args...)
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := ping(n.addr()); err == nil {
			break
		}
		select {
		case err := <-exited:
			return fmt.Errorf("redis-server on port %d exited: %v", n.port, err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("redis-server on port %d not answering PING after 10s", n.port)
		}
	}
	n.mu.Lock()
	n.cmd = cmd
	n.mu.Unlock()
	go func() { // reap it, whoever stops it
		err := <-exited
		_ = err
		n.mu.Lock()
		if n.cmd == cmd {
			n.cmd = nil
		}
		n.mu.Unlock()
	}()
	return nil
}

// Kill stops the server (every node) at once (SIGKILL), losing everything
// it held, as a crashed or restarted Redis does. It is safe to call twice.
func (s *Server) Kill() {
	for _, n := range s.nodes {
		n.kill()
	}
}

func (n *node) kill() {
	n.mu.Lock()
	cmd := n.cmd
	n.cmd = nil
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	// Wait for the port to close, so a restart can bind it.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ping(n.addr()) == nil {
		time.Sleep(5 * time.Millisecond)
	}
}

// Shutdown asks the server (every node) to stop with SHUTDOWN NOSAVE, and
// waits until it is gone.
func (s *Server) Shutdown() {
	for _, n := range s.nodes {
		_ = command(n.addr(), "SHUTDOWN", "NOSAVE") // the server closes the connection: no reply
	}
	for _, n := range s.nodes {
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) && ping(n.addr()) == nil {
			time.Sleep(5 * time.Millisecond)
		}
	}
	s.Kill()
}

// Pause stops the server's process (every node's; SIGSTOP) without closing
// anything: a Redis that hangs. Resume lets it go on.
func (s *Server) Pause() error { return s.signal(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig os.Signal) error {
	var first error
	for _, n := range s.nodes {
		n.mu.Lock()
		cmd := n.cmd
		n.mu.Unlock()
		var err error
		if cmd == nil {
			err = errors.New("redistest: the server is not running")
		} else {
			err = cmd.Process.Signal(sig)
		}
		if first == nil {
			first = err
		}
	}
	return first
}

// Restart starts the server again on the same port, empty. A cluster's
// nodes keep their cluster configuration (the slots stay assigned):
// Restart returns once the cluster serves again.
func (s *Server) Restart() error {
	s.Kill()
	for _, n := range s.nodes {
		var err error
		for range 50 { // the port may linger a moment
			if err = n.start(); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("redistest: restart: %w", err)
		}
	}
	if s.Cluster() {
		if err := s.clusterOK(); err != nil {
			return fmt.Errorf("redistest: restart: %w", err)
		}
	}
	return nil
}

// Do runs one command on the server and returns its reply, for tests that
// look at what the fleet stored (KEYS, GET, TTL). On a cluster, a command
// on a key runs on the node that holds it, and one on the whole server
// (KEYS, DBSIZE, FLUSHALL, PUBSUB NUMSUB, CONFIG SET, DEBUG SLEEP...) on
// every node, its replies joined (clusterDo).
func (s *Server) Do(args ...string) (string, error) {
	if s.Cluster() {
		return s.clusterDo(args...)
	}
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
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", fmt.Errorf("redis: bad bulk header %q", line)
		}
		v := make([]byte, n+2) // and its CRLF
		if _, err := io.ReadFull(r, v); err != nil {
			return "", err
		}
		return string(v[:n]), nil
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

package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clusterSize is the number of masters a cluster has (no replicas).
const clusterSize = 3

// clusterArgs make a node of a cluster whose bus listens on bus. The node
// timeout is long: the nodes are paused and restarted together, and none
// is ever to be failed over (there are no replicas).
func clusterArgs(bus int) []string {
	return []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
		"--cluster-port", strconv.Itoa(bus), "--cluster-node-timeout", "60000"}
}

// LaunchCluster runs a Redis Cluster of three masters on loopback, each
// with its own port and bus port, their slots assigned by redis-cli
// --cluster create; it returns once every node says cluster_state:ok.
// Close stops it.
func LaunchCluster() (*Server, error) {
	bin, ok := Available()
	if !ok {
		return nil, errors.New("redis-server not on the PATH (apt-get install -y redis-server)")
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, errors.New("redis-cli not on the PATH (apt-get install -y redis-tools)")
	}
	dir, err := os.MkdirTemp("", "redistest-cluster-")
	if err != nil {
		return nil, err
	}
	for range 5 { // a free port (or bus port) can be taken between finding and binding it
		var s *Server
		if s, err = startCluster(bin, dir); err != nil {
			continue
		}
		if err = s.create(cli); err == nil {
			return s, nil
		}
		s.Kill()
	}
	os.RemoveAll(dir)
	return nil, err
}

// startCluster starts the nodes, each in its own directory under dir (for
// its nodes.conf), empty.
func startCluster(bin, dir string) (*Server, error) {
	ports, err := freePorts(2 * clusterSize)
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir}
	for i := range clusterSize {
		d := filepath.Join(dir, strconv.Itoa(i))
		if err := os.RemoveAll(d); err != nil {
			return nil, err
		}
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
		n := &node{bin: bin, dir: d, port: ports[2*i], bus: ports[2*i+1]}
		if err := n.start(); err != nil {
			s.Kill()
			return nil, err
		}
		s.nodes = append(s.nodes, n)
	}
	return s, nil
}

// create assigns the slots to the nodes and joins them, then waits for the
// cluster to serve.
func (s *Server) create(cli string) error {
	args := []string{"--cluster", "create"}
	args = append(args, s.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("redis-cli --cluster create: %v: %s", err, lastLine(out))
	}
	return s.clusterOK()
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// clusterOK waits until every node says cluster_state:ok and knows every
// slot assigned. (A master says ok two seconds after it starts at the
// soonest, when the nodes agree.)
func (s *Server) clusterOK() error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		bad := ""
		for _, n := range s.nodes {
			info, err := roundTrip(n.addr(), "CLUSTER", "INFO")
			if err != nil {
				bad = err.Error()
				break
			}
			if !strings.Contains(info, "cluster_state:ok\r\n") || !strings.Contains(info, "cluster_slots_ok:16384\r\n") ||
				!strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(len(s.nodes))+"\r\n") {
				bad = n.addr() + " not ok yet"
				break
			}
		}
		if bad == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster not ok after 20s: %s", bad)
		}
		time.Sleep(20 * time.Millisecond) // polled: the cluster's own timers decide
	}
}

// freePorts returns n distinct free loopback ports, each held until all
// are found.
func freePorts(n int) ([]int, error) {
	var ports []int
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		held = append(held, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// everyNode are the commands on the whole server, not on a key: a cluster
// runs them on every node.
var everyNode = map[string]bool{
	"KEYS": true, "DBSIZE": true, "FLUSHALL": true, "FLUSHDB": true, "INFO": true,
	"CLIENT": true, "CONFIG": true, "DEBUG": true, "PUBSUB": true, "SCRIPT": true,
	"FUNCTION": true,
}

// clusterDo runs a command on a cluster: on every node for everyNode's
// (their replies joined), DEBUG POPULATE on the node that holds its keys'
// slot, CONFIG SET of a port (tls-port) on the first node only, any other
// on the first node, following MOVED to the node that holds the key.
func (s *Server) clusterDo(args ...string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("redistest: no command")
	}
	name := strings.ToUpper(args[0])
	sub := ""
	if len(args) > 1 {
		sub = strings.ToUpper(args[1])
	}
	switch {
	case name == "DEBUG" && sub == "POPULATE":
		prefix := "key"
		if len(args) > 3 {
			prefix = args[3]
		}
		addr, err := s.owner(prefix + ":0")
		if err != nil {
			return "", err
		}
		return roundTrip(addr, args...)
	case name == "CONFIG" && sub == "SET" && setsPort(args[2:]):
		// The nodes cannot share a port: the first node listens on it.
		return roundTrip(s.Addr(), args...)
	case everyNode[name]:
		return s.onEveryNode(name, sub, args)
	}
	return s.follow(s.Addr(), args)
}

// setsPort says whether CONFIG SET's parameter-value pairs set a port
// (port, tls-port...).
func setsPort(pairs []string) bool {
	for i := 0; i < len(pairs); i += 2 {
		if p := strings.ToLower(pairs[i]); p == "port" || strings.HasSuffix(p, "-port") {
			return true
		}
	}
	return false
}

// follow runs args at addr, following MOVED replies.
func (s *Server) follow(addr string, args []string) (string, error) {
	for range 5 {
		r, err := roundTrip(addr, args...)
		if to, ok := moved(err); ok {
			addr = to
			continue
		}
		return r, err
	}
	return "", errors.New("redistest: too many MOVED replies")
}

// moved reads a -MOVED slot host:port reply.
func moved(err error) (string, bool) {
	if err == nil {
		return "", false
	}
	f := strings.Fields(strings.TrimPrefix(err.Error(), "redis: "))
	if len(f) == 3 && f[0] == "MOVED" {
		return f[2], true
	}
	return "", false
}

// owner is the address of the node that holds key's slot.
func (s *Server) owner(key string) (string, error) {
	_, err := roundTrip(s.Addr(), "TYPE", key)
	if to, ok := moved(err); ok {
		return to, nil
	}
	return s.Addr(), err
}

// onEveryNode runs args on every node at once (DEBUG SLEEP stalls them
// together) and joins the replies: counts added up (DBSIZE, PUBSUB NUMSUB
// per channel and NUMPAT), lists joined (KEYS, PUBSUB CHANNELS), and one
// reply when every node gave the same (OK).
func (s *Server) onEveryNode(name, sub string, args []string) (string, error) {
	replies := make([]string, len(s.nodes))
	errs := make([]error, len(s.nodes))
	var wg sync.WaitGroup
	for i, n := range s.nodes {
		wg.Go(func() { replies[i], errs[i] = roundTrip(n.addr(), args...) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	switch {
	case name == "DBSIZE" || name == "PUBSUB" && sub == "NUMPAT":
		sum := 0
		for _, r := range replies {
			v, err := strconv.Atoi(r)
			if err != nil {
				return "", fmt.Errorf("redistest: %s answered %q", name, r)
			}
			sum += v
		}
		return strconv.Itoa(sum), nil
	case name == "PUBSUB" && sub == "NUMSUB":
		var order []string
		counts := map[string]int{}
		for _, r := range replies {
			f := strings.Fields(r)
			for j := 0; j+1 < len(f); j += 2 {
				v, err := strconv.Atoi(f[j+1])
				if err != nil {
					return "", fmt.Errorf("redistest: PUBSUB NUMSUB answered %q", r)
				}
				if _, ok := counts[f[j]]; !ok {
					order = append(order, f[j])
				}
				counts[f[j]] += v
			}
		}
		out := make([]string, 0, 2*len(order))
		for _, ch := range order {
			out = append(out, ch, strconv.Itoa(counts[ch]))
		}
		return strings.Join(out, " "), nil
	}
	same := true
	for _, r := range replies[1:] {
		same = same && r == replies[0]
	}
	if same {
		return replies[0], nil
	}
	var parts []string
	for _, r := range replies {
		if r != "" {
			parts = append(parts, r)
		}
	}
	return strings.Join(parts, " "), nil
}

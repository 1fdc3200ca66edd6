package redistest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// startClusterFor is LaunchCluster for t, whatever REDISTEST_CLUSTER says.
func startClusterFor(t *testing.T) *Server {
	t.Helper()
	_, server := Available()
	_, err := exec.LookPath("redis-cli")
	if !server || err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server or redis-cli not on the PATH: CI must install them (apt-get install -y redis-server)")
		}
		t.Skip("redis-server or redis-cli not on the PATH (apt-get install -y redis-server)")
	}
	s, err := LaunchCluster()
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// keysOnEveryNode returns n keys and the nodes (addresses) that hold them,
// at least one key on each node.
func keysOnEveryNode(t *testing.T, s *Server, n int) []string {
	t.Helper()
	keys := make([]string, n)
	held := map[string]bool{}
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
		addr, err := s.owner(keys[i])
		if err != nil {
			t.Fatal(err)
		}
		held[addr] = true
	}
	if len(held) != clusterSize {
		t.Fatalf("%d keys on %d nodes, want all %d", n, len(held), clusterSize)
	}
	return keys
}

// The cluster's three masters split the slots; Do sends a keyed command
// to the key's node, and a command on the whole server to every node,
// joining the replies.
func TestClusterServesAsOne(t *testing.T) {
	s := startClusterFor(t)
	if !s.Cluster() || len(s.Addrs()) != clusterSize {
		t.Fatalf("%d nodes, want %d", len(s.Addrs()), clusterSize)
	}
	want := "redis://" + s.Addrs()[0] + "?addr=" + s.Addrs()[1] + "&addr=" + s.Addrs()[2]
	if s.URL() != want {
		t.Errorf("URL %q, want %q", s.URL(), want)
	}
	nodes, err := roundTrip(s.Addr(), "CLUSTER", "NODES")
	if err != nil {
		t.Fatal(err)
	}
	masters := 0
	for l := range strings.Lines(nodes) {
		// <id> <addr> <flags> <master> <ping> <pong> <epoch> <link> <slots>
		if f := strings.Fields(l); len(f) > 8 && strings.Contains(f[2], "master") && f[7] == "connected" {
			masters++
		}
	}
	if masters != clusterSize {
		t.Errorf("%d connected masters with slots, want %d:\n%s", masters, clusterSize, nodes)
	}
	keys := keysOnEveryNode(t, s, 30)
	for _, k := range keys {
		if r, err := s.Do("SET", k, "v-"+k); err != nil || r != "OK" {
			t.Fatalf("SET %s: %q %v", k, r, err)
		}
	}
	for _, k := range keys {
		if r, err := s.Do("GET", k); err != nil || r != "v-"+k {
			t.Errorf("GET %s: %q %v", k, r, err)
		}
	}
	if n, err := s.Do("DBSIZE"); err != nil || n != strconv.Itoa(len(keys)) {
		t.Errorf("DBSIZE %q %v, want %d", n, err, len(keys))
	}
	all, err := s.Do("KEYS", "k*")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(all)
	slices.Sort(got)
	sorted := slices.Clone(keys)
	slices.Sort(sorted)
	if !slices.Equal(got, sorted) {
		t.Errorf("KEYS k* gave %v, want %v", got, sorted)
	}
	// A key's node holds it alone: the others answer MOVED.
	for _, k := range keys[:3] {
		owner, _ := s.owner(k)
		for _, a := range s.Addrs() {
			_, err := roundTrip(a, "GET", k)
			if _, isMoved := moved(err); isMoved == (a == owner) {
				t.Errorf("GET %s on %s: %v (owner %s)", k, a, err, owner)
			}
		}
	}
	// DEBUG POPULATE writes its keys on the node of their slot.
	if _, err := s.Do("DEBUG", "POPULATE", "100", "p:{tag}:x"); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Do("EXISTS", "p:{tag}:x:99"); err != nil || v != "1" {
		t.Errorf("a populated key: EXISTS %q %v", v, err)
	}
	if r, err := s.Do("FLUSHALL"); err != nil || r != "OK" {
		t.Errorf("FLUSHALL %q %v", r, err)
	}
	if n, _ := s.Do("DBSIZE"); n != "0" {
		t.Errorf("DBSIZE %s after FLUSHALL", n)
	}
}

// A subscriber on one node is counted by PUBSUB NUMSUB, summed over the
// nodes, and hears what is published on another.
func TestClusterPubSubAcrossNodes(t *testing.T) {
	s := startClusterFor(t)
	rdb := s.Client()
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ps := rdb.Subscribe(ctx, "ch")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Do("PUBSUB", "NUMSUB", "ch", "other"); err != nil || n != "ch 1 other 0" {
		t.Errorf("PUBSUB NUMSUB %q %v, want ch 1 other 0", n, err)
	}
	for i, a := range s.Addrs() {
		if _, err := roundTrip(a, "PUBLISH", "ch", fmt.Sprint("from node ", i)); err != nil {
			t.Fatal(err)
		}
		m, err := ps.ReceiveMessage(ctx)
		if err != nil || m.Payload != fmt.Sprint("from node ", i) {
			t.Fatalf("published on node %d: heard %v, %v", i, m, err)
		}
	}
}

// Kill stops every node; Restart brings them back on their ports, empty,
// with the slots still assigned; Pause and Resume stop and continue every
// node.
func TestClusterKillRestartPause(t *testing.T) {
	s := startClusterFor(t)
	keys := keysOnEveryNode(t, s, 30)
	for _, k := range keys {
		if _, err := s.Do("SET", k, "v"); err != nil {
			t.Fatal(err)
		}
	}
	addrs := s.Addrs()
	s.Kill()
	for _, a := range addrs {
		if ping(a) == nil {
			t.Errorf("%s answers after Kill", a)
		}
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Addrs(), addrs) {
		t.Errorf("restarted on %v, want %v", s.Addrs(), addrs)
	}
	if n, _ := s.Do("DBSIZE"); n != "0" {
		t.Errorf("DBSIZE %s after Restart, want empty", n)
	}
	for _, k := range keys {
		if r, err := s.Do("SET", k, "again"); err != nil || r != "OK" {
			t.Errorf("SET %s after Restart: %q %v", k, r, err)
		}
	}
	if err := s.Pause(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, a := range addrs {
		wg.Go(func() {
			if ping(a) == nil {
				t.Errorf("%s answers while paused", a)
			}
		})
	}
	wg.Wait()
	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if err := ping(a); err != nil {
			t.Errorf("%s after Resume: %v", a, err)
		}
	}
	s.Shutdown()
	for _, a := range addrs {
		if ping(a) == nil {
			t.Errorf("%s answers after Shutdown", a)
		}
	}
}

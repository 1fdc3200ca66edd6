package outbox

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

const killHelperEnv = "DINGPROXY_OUTBOX_KILL_DIR"

// TestKillLosesNoReturnedPut: a process Putting sends from 8 goroutines
// (and marking every fifth delivered) is killed with SIGKILL while it
// writes, three times over the same store. Every send whose Put returned
// before the kill (the child prints its ID once Put has returned) is there
// after the reopen, intact, and every Update that returned is too; the
// reopen drops nothing and repairs nothing. The kill comes after a count
// of returned Puts, not after a time.
func TestKillLosesNoReturnedPut(t *testing.T) {
	dir := t.TempDir()
	type kept struct {
		round, i  int
		delivered bool
	}
	all := map[string]*kept{}
	for round := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestKillHelper$", "-test.v")
		cmd.Env = append(os.Environ(), killHelperEnv+"="+dir, fmt.Sprint("DINGPROXY_OUTBOX_KILL_ROUND=", round))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAt := 300 + 97*round
		lines := bufio.NewScanner(out)
		n, killed := 0, false
		for lines.Scan() {
			f := strings.Fields(lines.Text())
			switch {
			case len(f) == 4 && f[0] == "KEPT":
				var k kept
				fmt.Sscan(f[2], &k.round)
				fmt.Sscan(f[3], &k.i)
				all[f[1]] = &k
				n++
			case len(f) == 2 && f[0] == "DELIVERED":
				all[f[1]].delivered = true
			}
			if n >= killAt && !killed {
				cmd.Process.Kill() // SIGKILL
				killed = true
			}
		}
		err = cmd.Wait()
		cancel()
		if !killed {
			t.Fatalf("round %d: the child ended (%v) after %d Puts, before the kill", round, err, n)
		}
		t.Logf("round %d: killed after %d returned Puts (%v)", round, n, err)

		h := newHarness(t, dir)
		s := h.open()
		queued := 0
		for id, k := range all {
			sd, err := s.Get(id)
			if err != nil {
				t.Fatalf("round %d: send %s (round %d, #%d) returned by Put before the kill: %v", round, id, k.round, k.i, err)
			}
			if sd.State != Delivered && (!strings.HasSuffix(sd.Query, fmt.Sprintf("&n=%d", k.i)) || sd.Header.Get("X-Round") != fmt.Sprint(k.round)) {
				t.Fatalf("send %s came back altered", id)
			}
			if k.delivered && sd.State != Delivered {
				t.Fatalf("send %s: its Update to delivered returned, but it is %s", id, sd.State)
			}
			if sd.State == Queued {
				queued++
			}
		}
		if got := s.Stats().Routes["/robot/send"].Queued; got < queued {
			t.Fatalf("stats: %d queued, want at least %d", got, queued)
		}
		if len(h.obs.n) != 0 {
			t.Fatalf("the reopen after a kill dropped or repaired: %v\n%s", h.obs.n, h.logText())
		}
		s.Close()
	}
}

// TestKillHelper is the child process of the test above: it Puts until it
// is killed, printing each ID once its Put has returned.
func TestKillHelper(t *testing.T) {
	dir := os.Getenv(killHelperEnv)
	if dir == "" {
		t.Skip("runs only as TestKillLosesNoReturnedPut's child process")
	}
	round := os.Getenv("DINGPROXY_OUTBOX_KILL_ROUND")
	h := newHarness(t, dir)
	s := h.open()
	var mu sync.Mutex
	say := func(line string) {
		mu.Lock()
		os.Stdout.WriteString(line) // one write each: a line is whole or absent
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 200_000; i += 8 {
				sd := robotSend(fmt.Sprint("robot:", i%5), i)
				sd.Header.Set("X-Round", round)
				id, err := s.Put(context.Background(), sd)
				if err != nil {
					t.Error(err)
					return
				}
				say(fmt.Sprintf("KEPT %s %s %d\n", id, round, i))
				if i%5 == 0 {
					sd.State = Delivered
					if err := s.Update(sd); err != nil {
						t.Error(err)
						return
					}
					say(fmt.Sprintf("DELIVERED %s\n", id))
				}
			}
		}()
	}
	wg.Wait()
}

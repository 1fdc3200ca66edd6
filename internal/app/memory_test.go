//go:build !race

// The race detector multiplies memory and time per byte moved: this test
// measures the heap, so it runs without it (make test runs it on its own).

package app_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	rtmetrics "runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/app"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/metrics"
)

// slowBody is a 1 MiB upload sent in 64 KiB pieces with a pause between
// them, from one shared buffer.
type slowBody struct {
	left  int
	pause time.Duration
	first bool
	// start, if set, is waited for before the first byte: the uploads
	// begin together.
	start *startLine
}

// startLine holds uploads back until all of them are ready to send, so
// that they overlap however slowly a loaded machine starts them; it lets
// them go after a bound in any case (an upload that failed before its
// body never arrives).
type startLine struct {
	want    int64
	arrived atomic.Int64
	all     chan struct{}
}

func newStartLine(n int) *startLine { return &startLine{want: int64(n), all: make(chan struct{})} }

func (l *startLine) wait() {
	if l.arrived.Add(1) == l.want {
		close(l.all)
	}
	select {
	case <-l.all:
	case <-time.After(30 * time.Second):
	}
}

var zeros = make([]byte, 64<<10)

func (b *slowBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.EOF
	}
	if !b.first {
		time.Sleep(b.pause) // the client's pace: slow by design
	}
	if b.first && b.start != nil {
		b.start.wait()
	}
	b.first = false
	n := min(len(p), len(zeros), b.left)
	copy(p, zeros[:n])
	b.left -= n
	return n, nil
}

const helperEnv = "DINGPROXY_MEMORY_HELPER_UPSTREAM"

// TestSlowUploadsStayUnderBufferCap: 500 concurrent slow 1 MiB uploads
// through dingproxy on its default retry.max_buffered_bytes (64 MiB). The
// proxy runs alone in a child process (this test binary, re-executed), so
// the heap it measures is the proxy's, not the uploaders' or the
// upstream's. At most 64 uploads are buffered at a time, the rest are
// streamed once and counted, every byte arrives once, and the proxy's live
// heap stays under the cap plus 48 MiB: what 500 streams at once hold
// beside the buffers (a copy buffer and connection buffers each, on both
// sides), up to about 60 KiB apiece. The uploads start together, so that they
// overlap on a loaded machine too. Without the cap it would hold
// 500 MiB.
func TestSlowUploadsStayUnderBufferCap(t *testing.T) {
	if testing.Short() {
		t.Skip("500 MiB of uploads")
	}
	const uploads, size = 500, 1 << 20
	var received atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		received.Add(n)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"errcode":0,"errmsg":"ok"}`)
	}))
	defer up.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestMemoryHelperProxy$", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"="+up.URL)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	lines := bufio.NewScanner(stdout)
	field := func(prefix string) string {
		t.Helper()
		for lines.Scan() {
			if rest, ok := strings.CutPrefix(lines.Text(), prefix); ok {
				return rest
			}
		}
		t.Fatalf("helper ended before printing %q", prefix)
		return ""
	}
	addr := field("LISTEN ")

	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: uploads, MaxIdleConnsPerHost: uploads}, Timeout: time.Minute}
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	var failed atomic.Int64
	start := newStartLine(uploads)
	for i := range uploads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/topapi/processinstance/create", &slowBody{left: size, pause: 20 * time.Millisecond, first: true, start: start})
			req.ContentLength = size
			resp, err := client.Do(req)
			if err != nil {
				if failed.Add(1) <= 5 {
					t.Errorf("upload %d: %v", i, err)
				}
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				if failed.Add(1) <= 5 {
					t.Errorf("upload %d: HTTP %d", i, resp.StatusCode)
				}
			}
		}()
	}
	wg.Wait()
	stdin.Close() // the helper reports and exits
	var heap, baseline, buffered, left, capped, limit float64
	if _, err := fmt.Sscan(field("PEAK "), &heap, &baseline, &buffered, &left, &capped, &limit); err != nil {
		t.Fatal(err)
	}
	const mib = 1 << 20
	t.Logf("proxy process: peak live heap %.1f MiB over a %.1f MiB baseline; peak buffered %.1f MiB (cap %.0f MiB); %v uploads streamed for the cap",
		(heap-baseline)/mib, baseline/mib, buffered/mib, limit/mib, capped)
	if got := received.Load(); got != uploads*size {
		t.Errorf("upstream received %d bytes, want %d: an upload was lost or repeated", got, uploads*size)
	}
	if heap-baseline > limit+48*mib {
		t.Errorf("peak live heap %.1f MiB over baseline: more than max_buffered_bytes + 48 MiB", (heap-baseline)/mib)
	}
	if buffered > limit {
		t.Errorf("buffered %.0f B, over the cap %.0f", buffered, limit)
	}
	if left != 0 {
		t.Errorf("%v bytes still counted as buffered after every upload ended", left)
	}
	if want := float64(uploads - int(limit)/size); capped < want {
		t.Errorf("uploads streamed for the cap = %v, want at least %v", capped, want)
	}
}

// TestMemoryHelperProxy is the child process of the test above: dingproxy
// in front of the upstream it is given, its live heap sampled until stdin
// closes.
func TestMemoryHelperProxy(t *testing.T) {
	upstream := os.Getenv(helperEnv)
	if upstream == "" {
		t.Skip("runs only as TestSlowUploadsStayUnderBufferCap's child process")
	}
	cfg := config.Default()
	cfg.Upstreams.OAPI, cfg.Upstreams.API = upstream, upstream
	cfg.Pacing.PerAPIQPS, cfg.Pacing.GlobalQPS = 1e5, 1e6
	a, err := app.New(&cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	a.Start()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: a.Handler()}
	go srv.Serve(ln)
	defer func() { srv.Close(); a.Close() }()

	// The live heap as the collector marked it: runtime.GC, then the
	// mark's result, not HeapAlloc, which also counts what was allocated
	// since the collection ended.
	live := []rtmetrics.Sample{{Name: "/gc/heap/live:bytes"}}
	liveHeap := func() uint64 {
		runtime.GC()
		rtmetrics.Read(live)
		return live[0].Value.Uint64()
	}
	baseline := liveHeap()
	fmt.Printf("LISTEN %s\n", ln.Addr())

	eof := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(eof) }()
	var peakHeap uint64
	var peakBuffered int64
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-eof:
			done = true
		case <-tick.C:
		}
		peakBuffered = max(peakBuffered, a.BufferedBytes())
		peakHeap = max(peakHeap, liveHeap())
	}
	capped := testutil.ToFloat64(a.Metrics().Unreplayable.WithLabelValues("/topapi/processinstance/create", metrics.UnreplayableBufferCap))
	fmt.Printf("PEAK %d %d %d %d %v %d\n", peakHeap, baseline, peakBuffered, a.BufferedBytes(), capped, cfg.Retry.MaxBufferedBytes)
}

//go:build soak && !race

// The race detector multiplies memory per allocation: this test measures
// the heap and resident memory, so it runs without it (make soak runs it
// on its own), and it takes a minute and more.

package app_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/app"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

// TestDistinctCachedReadsStayBounded: a client that sends 400,000 distinct
// cacheable reads (each a miss, each kept) through the whole app holds the
// proxy's heap and the process's resident memory under the read cache's
// cap plus 64 MiB, and expired answers go.
func TestDistinctCachedReadsStayBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("400,000 reads")
	}
	const reads = 400_000
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	cfg := config.Default()
	cfg.Upstreams.OAPI, cfg.Upstreams.API = fake.URL(), fake.URL()
	cfg.App.Key, cfg.App.Secret = dingtalktest.DefaultAppKey, config.Secret(dingtalktest.DefaultAppSecret)
	cfg.Pacing.PerAPIQPS, cfg.Pacing.GlobalQPS = 1e7, 1e7
	cfg.MaxInflight = 1 << 16
	cfg.Routes = []config.Route{{Path: dingtalktest.PathDeptListSub, Cache: time.Hour}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	a, err := app.New(&cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	a.Start()
	defer a.Close()
	// The sidecar runs with GOMEMLIMIT from its container's limit
	// (deploy/k8s): here, the bound under test, less a margin.
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(int64(proxy.CacheMaxBytes + 48<<20)))
	h := a.Handler()
	base := heapAndRSS(t)
	start := time.Now()
	for i := range reads {
		body := `{"dept_id":` + strconv.Itoa(i) + `}`
		req := httptest.NewRequest(http.MethodPost, dingtalktest.PathDeptListSub, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 || rec.Header().Get(proxy.HeaderCache) != proxy.CacheMiss {
			t.Fatalf("read %d: %d %q %s", i, rec.Code, rec.Header().Get(proxy.HeaderCache), rec.Body.Bytes())
		}
	}
	took := time.Since(start)
	after := heapAndRSS(t)
	heap, rss := after.heap, after.rss
	limit := uint64(proxy.CacheMaxBytes + 64<<20)
	t.Logf("%d distinct reads in %v: heap %d MiB (was %d), RSS %d MiB (was %d); the cache's cap %d MiB",
		reads, took.Round(time.Second), heap>>20, base.heap>>20, rss>>20, base.rss>>20, proxy.CacheMaxBytes>>20)
	if heap > limit {
		t.Errorf("heap %d MiB after %d distinct cached reads, want under the cap plus 64 MiB (%d MiB)", heap>>20, reads, limit>>20)
	}
	if rss > limit {
		t.Errorf("RSS %d MiB after %d distinct cached reads, want under the cap plus 64 MiB (%d MiB)", rss>>20, reads, limit>>20)
	}
}

type memFigures struct{ heap, rss uint64 }

// heapAndRSS is the live heap after a collection and the process's
// resident memory.
func heapAndRSS(t *testing.T) memFigures {
	t.Helper()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Skip("no /proc/self/statm")
	}
	var size, resident uint64
	fmt.Sscan(string(b), &size, &resident)
	return memFigures{heap: ms.HeapAlloc, rss: resident * uint64(os.Getpagesize())}
}

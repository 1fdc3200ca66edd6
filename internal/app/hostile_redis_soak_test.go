//go:build soak

package app_test

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/fleet"
	"github.com/dingproxy/dingproxy/internal/redistest"
)

// The hostile-Redis cases whose verdict depends on the machine's speed.

// 300,000 unrelated keys in the fleet's database, four proxies at the
// default fleet.timeout (50ms) under 40 calls a second for 5 s, their
// subscriptions cut once a second (CLIENT KILL TYPE pubsub) so that each
// resyncs: no proxy flaps between shared and alone (no "Redis unreachable"
// line, no failed resync), every call is served, and each opening recorded
// while the proxies were not listening is read again at their reconnect.
func TestHostileRedisBigKeyspaceNoFlapping(t *testing.T) {
	srv := redistest.Start(t)
	redisDo(t, srv, []string{"DEBUG", "POPULATE", "300000", keyOf("cache", "junk")})
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	var stacks []*stack
	var logs []*observer.ObservedLogs
	for range 4 {
		core, l := observer.New(zapcore.WarnLevel)
		stacks = append(stacks, newStackOn(t, fake, zap.New(core), nil, shared(srv.URL()), func(c *config.Config) {
			c.Fleet.Timeout = 50 * time.Millisecond // the default
		}))
		logs = append(logs, l)
	}
	var served, failed atomic.Int32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(25 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			s := stacks[i%4]
			wg.Go(func() {
				resp, body := s.do(http.MethodPost, dingtalktest.PathUserGet, fmt.Appendf(nil, `{"userid":"u%d"}`, i))
				if resp.StatusCode == 200 && errcodeOf(t, body) == 0 {
					served.Add(1)
				} else {
					failed.Add(1)
				}
			})
		}
	})
	start := time.Now()
	for round := range 5 {
		route := "/topapi/soak/opened/" + strconv.Itoa(round)
		until := strconv.FormatInt(time.Now().Add(time.Minute).UnixMilli(), 10)
		redisDo(t, srv, []string{"ZADD", keyOf("state", "open"), until, route}, []string{"CLIENT", "KILL", "TYPE", "pubsub"})
		for i, s := range stacks {
			waitFor(t, fmt.Sprintf("proxy %d to read the opening of round %d at its reconnect", i, round), func() bool {
				return s.app.Check(route) != nil
			})
		}
		time.Sleep(time.Until(start.Add(time.Duration(round+1) * time.Second)))
	}
	close(stop)
	wg.Wait()
	flaps := 0
	for i, s := range stacks {
		n := logs[i].FilterMessageSnippet("Redis unreachable").Len()
		flaps += n
		if syncs := fleetErrors(s, fleet.OpSync); n > 0 || syncs > 0 {
			t.Errorf("proxy %d: %d times alone, %v failed resyncs, with 300k other keys", i, n, syncs)
		}
	}
	if failed.Load() > 0 {
		t.Errorf("%d of %d calls failed", failed.Load(), failed.Load()+served.Load())
	}
	t.Logf("300k keys, 4 proxies, 5 resyncs each over %v: %d calls served, %d flaps", time.Since(start).Round(time.Millisecond), served.Load(), flaps)
}

// 300,000 junk quota messages, each naming another route, heard by one
// proxy: its heap after the flood is within a few MiB of before (the
// stops it may make are bounded, the rest is counted and dropped), its
// log holds a few lines a second, and it serves calls throughout.
func TestHostileRedisQuotaFloodHeap(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	var lines atomic.Int64
	counting := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
		zapcore.AddSync(writerFunc(func(p []byte) (int, error) { lines.Add(1); return len(p), nil })), zapcore.InfoLevel))
	s := newStackOn(t, fake, counting, nil, shared(srv.URL()))
	waitFor(t, "the proxy to subscribe", func() bool {
		n, _ := srv.Do("PUBSUB", "NUMSUB", keyOf("events"))
		return n == keyOf("events")+" 1"
	})
	resp, _ := s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"u0"}`))
	if resp.StatusCode != 200 {
		t.Fatalf("warm-up call: %d", resp.StatusCode)
	}
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before, linesBefore := heap(), lines.Load()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	until := strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)
	const n = 300000
	start := time.Now()
	for b := 0; b < n; b += 10000 {
		pipe := rdb.Pipeline()
		for i := b; i < b+10000; i++ {
			pipe.Publish(ctx, keyOf("events"), "quota intruder "+until+" /junk/"+strconv.Itoa(i))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for fleetErrors(s, fleet.OpEvent)+float64(s.app.QuotaState().Stopped) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%v of %d messages heard in a minute", fleetErrors(s, fleet.OpEvent)+float64(s.app.QuotaState().Stopped), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	elapsed := time.Since(start)
	resp, _ = s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"u1"}`))
	if resp.StatusCode != 200 {
		t.Errorf("a call after the flood: %d", resp.StatusCode)
	}
	after := heap()
	growth := int64(after) - int64(before)
	logged := lines.Load() - linesBefore
	secs := int64(elapsed/time.Second) + 2
	t.Logf("%d junk quota messages in %v: heap %.1f MiB -> %.1f MiB (%+.2f MiB), %d log lines, %d routes stopped",
		n, elapsed.Round(time.Millisecond), float64(before)/(1<<20), float64(after)/(1<<20), float64(growth)/(1<<20), logged, s.app.QuotaState().Stopped)
	if growth > 8<<20 {
		t.Errorf("the heap grew by %.1f MiB, want at most 8", float64(growth)/(1<<20))
	}
	if logged > 30*secs {
		t.Errorf("%d log lines in %v, want a few a second", logged, elapsed)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

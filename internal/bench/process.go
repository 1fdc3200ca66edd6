package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/app"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/fleet"
)

// ChildEnv names the environment variable that makes the running
// executable a dingproxy process of Processes (see ChildMain). It does not
// start with DINGPROXY_: the configuration refuses names it does not know.
const ChildEnv = "RESILIENCE_PROXY_CHILD"

// processStart bounds a process's start: from exec to its address.
const processStart = 30 * time.Second

// childSpec is what a process is started with, in ChildEnv.
type childSpec struct {
	Fake string // the fake's URL, both upstreams
	Dir  string // outbox.dir
	Arg  string // for the build function given to ChildMain
}

// ChildMain makes the running executable a dingproxy process when
// ChildEnv is set (a Processes started it): build turns the Processes'
// Arg into the configuration's changes beyond the built-in defaults, the
// fake and the outbox directory. The process serves on a free loopback
// port, prints "ADDR <url>" and "ADMIN <url>", then "HOLDING" and
// "RELEASED" as it takes and loses the fleet courier's lease, and runs
// until it is killed or its standard input closes (the parent went); it
// never returns. Without ChildEnv, ChildMain returns at once. Every
// program whose Processes re-execute it (the resilience command, and the
// test binaries that run its scenarios) calls it first.
func ChildMain(build func(arg string) ([]func(*config.Config), error)) {
	env, ok := os.LookupEnv(ChildEnv)
	if !ok {
		return
	}
	if err := serveChild(env, build); err != nil {
		fmt.Fprintln(os.Stderr, "dingproxy process:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func serveChild(env string, build func(string) ([]func(*config.Config), error)) error {
	var spec childSpec
	if err := json.Unmarshal([]byte(env), &spec); err != nil {
		return fmt.Errorf("%s: %w", ChildEnv, err)
	}
	tune, err := build(spec.Arg)
	if err != nil {
		return err
	}
	cfg := config.Default()
	cfg.Upstreams.OAPI, cfg.Upstreams.API = spec.Fake, spec.Fake
	cfg.App.Key, cfg.App.Secret = dingtalktest.DefaultAppKey, config.Secret(dingtalktest.DefaultAppSecret)
	for _, t := range tune {
		if t != nil {
			t(&cfg)
		}
	}
	cfg.Outbox.Dir = spec.Dir
	if err := cfg.Validate(); err != nil {
		return err
	}
	a, err := app.New(&cfg, zap.NewNop())
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	a.Start()
	a.SetReady(true)
	go a.Server(nil).Serve(a.Listener(ln))
	go (&http.Server{Handler: a.AdminHandler(), ReadHeaderTimeout: 10 * time.Second}).Serve(aln)
	var out sync.Mutex
	say := func(line string) {
		out.Lock()
		defer out.Unlock()
		fmt.Println(line)
	}
	say("ADDR http://" + ln.Addr().String())
	say("ADMIN http://" + aln.Addr().String())
	if x, ok := a.Outbox().(*fleet.Outbox); ok {
		go func() {
			held := false
			for ; ; time.Sleep(20 * time.Millisecond) { // polling until the process ends
				if h := x.Holding(); h != held {
					held = h
					say(map[bool]string{true: "HOLDING", false: "RELEASED"}[h])
				}
			}
		}()
	}
	io.Copy(io.Discard, os.Stdin) // until the parent goes
	return nil
}

// Processes is N dingproxies each in a process of its own (the running
// executable re-executed, see ChildMain), so that one can be killed with
// SIGKILL and started again on the same outbox directory. Replica i keeps
// its outbox in Dir/<i>; Arg is handed to the children's build function.
// The Caller spreads calls over them by call number, as a Fleet's. Use
// it by pointer: Kill, Restart and Holder act on what Open started.
type Processes struct {
	N   int
	Dir string
	Arg string

	mu    sync.Mutex
	fake  string
	procs []*process
}

// process is one dingproxy process.
type process struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	// stderr is the process's standard error, for the error of a start
	// that failed.
	stderr *lockedBuffer
	done   chan struct{} // closed once the process is gone and reaped
	url    string
	admin  string

	mu      sync.Mutex
	holding bool
}

// Open implements Via: it starts the N processes in front of fake.
func (p *Processes) Open(ctx context.Context, fake *dingtalktest.Server, _ *http.Client) (Endpoint, error) {
	if p.N < 1 || p.Dir == "" {
		return Endpoint{}, fmt.Errorf("bench: %d processes, outbox under %q", p.N, p.Dir)
	}
	p.mu.Lock()
	p.fake = fake.URL()
	p.procs = make([]*process, p.N)
	p.mu.Unlock()
	ep := Endpoint{Close: p.Close}
	for i := range p.N {
		if err := p.Restart(ctx, i); err != nil {
			p.Close()
			return Endpoint{}, err
		}
		ep.Bases = append(ep.Bases, p.url(i))
	}
	return ep, nil
}

// Restart starts replica i (again, if it was killed) on its outbox
// directory, and waits until it serves. A replica still running is
// killed first.
func (p *Processes) Restart(ctx context.Context, i int) error {
	p.Kill(i)
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	p.mu.Lock()
	spec, err := json.Marshal(childSpec{Fake: p.fake, Dir: filepath.Join(p.Dir, strconv.Itoa(i)), Arg: p.Arg})
	p.mu.Unlock()
	if err != nil {
		return err
	}
	pr := &process{stderr: &lockedBuffer{}, done: make(chan struct{})}
	pr.cmd = exec.Command(exe)
	pr.cmd.Env = append(os.Environ(), ChildEnv+"="+string(spec))
	pr.cmd.Stderr = pr.stderr
	if pr.stdin, err = pr.cmd.StdinPipe(); err != nil {
		return err
	}
	stdout, err := pr.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := pr.cmd.Start(); err != nil {
		return err
	}
	p.mu.Lock()
	p.procs[i] = pr
	p.mu.Unlock()
	ready := make(chan struct{})
	go pr.read(stdout, ready)
	t := time.NewTimer(processStart)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-pr.done:
		return fmt.Errorf("bench: dingproxy process %d ended before it served: %s", i, strings.TrimSpace(pr.stderr.String()))
	case <-t.C:
		err = fmt.Errorf("bench: dingproxy process %d did not serve within %s", i, processStart)
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.Kill(i)
	return err
}

// url is replica i's proxy URL.
func (p *Processes) url(i int) string {
	p.mu.Lock()
	pr := p.procs[i]
	p.mu.Unlock()
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.url
}

// read reads the process's lines until it is gone, then reaps it.
func (pr *process) read(stdout io.Reader, ready chan struct{}) {
	defer close(pr.done)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		pr.mu.Lock()
		switch {
		case strings.HasPrefix(line, "ADDR "):
			pr.url = strings.TrimPrefix(line, "ADDR ")
		case strings.HasPrefix(line, "ADMIN "):
			pr.admin = strings.TrimPrefix(line, "ADMIN ")
			close(ready) // ADMIN comes after ADDR
		case line == "HOLDING":
			pr.holding = true
		case line == "RELEASED":
			pr.holding = false
		}
		pr.mu.Unlock()
	}
	io.Copy(io.Discard, stdout)
	pr.cmd.Wait()
}

// alive says whether the process has not ended.
func (pr *process) alive() bool {
	select {
	case <-pr.done:
		return false
	default:
		return true
	}
}

// Kill ends replica i with SIGKILL, if it runs, and waits until it is
// gone.
func (p *Processes) Kill(i int) {
	p.mu.Lock()
	pr := p.procs[i]
	p.mu.Unlock()
	if pr == nil {
		return
	}
	pr.cmd.Process.Kill()
	pr.stdin.Close()
	<-pr.done
	pr.mu.Lock()
	pr.holding = false
	pr.mu.Unlock()
}

// Holder is the replica that said last it holds the fleet courier's
// lease, among those alive (-1: none).
func (p *Processes) Holder() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, pr := range p.procs {
		if pr == nil || !pr.alive() {
			continue
		}
		pr.mu.Lock()
		h := pr.holding
		pr.mu.Unlock()
		if h {
			return i
		}
	}
	return -1
}

// WaitHolder waits up to d for a replica to hold the fleet courier's
// lease, and returns it.
func (p *Processes) WaitHolder(ctx context.Context, d time.Duration) (int, error) {
	deadline := time.Now().Add(d)
	for {
		if i := p.Holder(); i >= 0 {
			return i, nil
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("bench: no dingproxy process held the courier's lease within %s", d)
		}
		select {
		case <-ctx.Done():
			return -1, ctx.Err()
		case <-time.After(20 * time.Millisecond): // polling with a deadline
		}
	}
}

// Admin is the admin URL of a replica alive ("" if none is).
func (p *Processes) Admin() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pr := range p.procs {
		if pr != nil && pr.alive() {
			pr.mu.Lock()
			u := pr.admin
			pr.mu.Unlock()
			return u
		}
	}
	return ""
}

// Close kills every replica and waits until they are gone.
func (p *Processes) Close() {
	p.mu.Lock()
	n := len(p.procs)
	p.mu.Unlock()
	for i := range n {
		p.Kill(i)
	}
}

// SendState is a kept send's state ("queued", "delivered", "unknown",
// ...) as GET /outbox/<id> on admin says.
func SendState(ctx context.Context, hc *http.Client, admin, id string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, admin+"/outbox/"+id, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("bench: GET /outbox/%s: %s", id, resp.Status)
	}
	var v struct {
		State string `json:"state"`
	}
	if err := json.Unmarshal(b, &v); err != nil || v.State == "" {
		return "", errors.New("bench: GET /outbox/" + id + ": no state")
	}
	return v.State, nil
}

// lockedBuffer is a buffer written by one goroutine and read by another.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 1<<16 {
		return len(p), nil // enough to say why a start failed
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

//go:build soak

package app_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// TestSlowloris: a client that never finishes its headers is cut off after
// server.read_header_timeout, while others are served.
func TestSlowloris(t *testing.T) {
	// Long enough that another client's own header read, which the same
	// timeout bounds, is not cut by a pause of this shared VM.
	const readHeader = 2 * time.Second
	s := newStack(t, nil, func(c *config.Config) { c.Server.ReadHeaderTimeout = readHeader })
	c, err := net.Dial("tcp", s.proxy.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	io.WriteString(c, "GET "+dingtalktest.PathDeptList+" HTTP/1.1\r\nHost: x\r\n")
	// Whatever the proxy sends until it closes the connection.
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	type result struct {
		got []byte
		err error
	}
	closed := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(c)
		closed <- result{b, err}
	}()
	// Another client, served while the slow one still holds its connection.
	served := make(chan int, 1)
	go func() {
		resp, err := s.client.Get(s.proxy.URL + dingtalktest.PathDeptList)
		if err != nil {
			t.Errorf("another client, during the slow one: %v", err)
			served <- 0
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		served <- resp.StatusCode
	}()
	// Drip a header byte at a time: the deadline is for the whole header.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var r result
	var during int
drip:
	for {
		select {
		case r = <-closed:
			break drip
		case during = <-served:
			served = nil
		case <-tick.C:
			io.WriteString(c, "X") // fails once the proxy has closed
		}
	}
	if served != nil {
		// Served after all, though later than the slow client's cut-off (a
		// pause of this VM can reorder the two); never left waiting.
		select {
		case during = <-served:
			t.Logf("the other client was answered after the slow one was cut off")
		case <-time.After(15 * time.Second):
			t.Fatal("another client was not answered")
		}
	}
	if during != 200 {
		t.Errorf("another client, during the slow one: %d", during)
	}
	if r.err != nil && !isReset(r.err) {
		t.Fatalf("slow client: %v, want the connection closed by the proxy", r.err)
	}
	// net/http closes without a word when the deadline finds no partial
	// line, and answers 400 when it cuts one.
	if len(r.got) != 0 && !strings.HasPrefix(string(r.got), "HTTP/1.1 400 ") {
		t.Errorf("slow client got %q", r.got)
	}
	// The server starts its clock on accepting, which can come a few
	// microseconds before the client's Dial returns and start is taken.
	if el := time.Since(start); el < readHeader-10*time.Millisecond {
		t.Errorf("cut off after %v, before read_header_timeout", el)
	}
	resp, _ := s.do(http.MethodGet, dingtalktest.PathDeptList, nil)
	if resp.StatusCode != 200 {
		t.Errorf("another client, afterwards: %d", resp.StatusCode)
	}
	if n := forwarded(s); n != 2 {
		t.Errorf("forwarded %d requests, want 2 (the other clients')", n)
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// TestSlowStreamedUploadNotCutByPerTry: a body too large to buffer streams
// at the client's pace; per_try_timeout counts DingTalk's time to answer,
// not the client's time to upload, so a steady upload slower than it is
// delivered once and answered.
func TestSlowStreamedUploadNotCutByPerTry(t *testing.T) {
	s := newStack(t, nil, func(c *config.Config) {
		// Long enough that a VM pause (up to ~0.65 s here) does not pass
		// for DingTalk's slowness; the upload takes longer still.
		c.Retry.PerTryTimeout = 2500 * time.Millisecond
		c.Retry.MaxBodyBytes = 1024
	})
	const send = dingtalktest.PathAsyncSend
	pr, pw := io.Pipe()
	uploaded := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		defer func() { uploaded <- time.Since(start) }()
		pw.Write([]byte(`{"agent_id":1,"userid_list":"u1","msg":{"msgtype":"text","text":{"content":"`))
		for range 8 {
			time.Sleep(500 * time.Millisecond) // the upload's pace, not synchronisation
			pw.Write([]byte(strings.Repeat("x", 4096)))
		}
		pw.Write([]byte(`"}}}`))
		pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPost, s.proxy.URL+send, pr)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	pr.Close() // ends the writer if the proxy stopped reading
	if d := <-uploaded; d < 3*time.Second {
		t.Fatalf("the upload took %v, not longer than per_try_timeout: the test proves nothing", d)
	}
	if resp.StatusCode != 200 || errcodeOf(t, body) != 0 || s.fake.Executions(send) != 1 {
		t.Errorf("slow upload: %d %s, %d executions; want 200, errcode 0, 1", resp.StatusCode, body, s.fake.Executions(send))
	}
}

// TestUpstreamSlowToTakeBodyIsNotBlamedOnClient: when DingTalk stops
// taking a body the client sends promptly, the answer says DingTalk did
// not answer (504), not that the client stalled (408).
func TestUpstreamSlowToTakeBodyIsNotBlamedOnClient(t *testing.T) {
	// An upstream that reads the headers, then nothing, then hangs up.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				http.ReadRequest(bufio.NewReader(c)) // headers only: the body is not read
				select {
				case <-stop:
				case <-time.After(30 * time.Second): // past retry.timeout: ended by stop
				}
			}()
		}
	}()
	defer func() { close(stop); ln.Close(); wg.Wait() }()
	s := newStack(t, nil, func(c *config.Config) {
		c.Upstreams.OAPI = "http://" + ln.Addr().String() // tokens still come from the fake (api host)
		// Shorter than retry.timeout, so a deadline left over from the last
		// read passes before the answer; long enough that a pause of the
		// writing client (-race on a loaded machine) is not taken for a
		// stall while the rest is drained.
		c.Server.BodyReadTimeout = 3 * time.Second
		c.Retry.PerTryTimeout, c.Retry.Timeout = 4*time.Second, 4*time.Second
	})
	status, body := s.raw(t, "POST "+dingtalktest.PathAsyncSend+" HTTP/1.1\r\nHost: x\r\nContent-Length: 33554432\r\n\r\n"+strings.Repeat("z", 32<<20))
	if status != http.StatusGatewayTimeout {
		t.Errorf("status %d %q, want 504: DingTalk, not the client, was slow", status, body)
	}
}

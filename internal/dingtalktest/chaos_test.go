package dingtalktest

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

func TestParseChaos(t *testing.T) {
	type item struct {
		Name string
		P    float64
	}
	tests := []struct {
		name string
		spec string
		want []item
	}{
		{"empty", "", nil},
		{"blank", "  ", nil},
		{"example", "system-busy=0.1,throttle=0.05,reset-after=0.05,latency:50ms=0.05,status:503=0.02",
			[]item{{"system-busy", 0.1}, {"throttle", 0.05}, {"reset-after", 0.05}, {"latency:50ms", 0.05}, {"status:503", 0.02}}},
		{"every name", "too-many=0.1, token-invalid=0.1 ,reset-before=0.1,hang=0.01,ip-ban-html=0.1,ip-ban-json=0.1,ip-ban-json:9=0.1",
			[]item{{"too-many", 0.1}, {"token-invalid", 0.1}, {"reset-before", 0.1}, {"hang", 0.01},
				{"ip-ban-html", 0.1}, {"ip-ban-json", 0.1}, {"ip-ban-json:9", 0.1}}},
		{"bad answers", "non-json=0.1,truncated-json=0.1,errcode-string=0.1,huge:1048576=0.1,bad-gzip=0.1," +
			"close-mid-body=0.1,endless-chunked=0.01,informational:2=0.1",
			[]item{{"non-json", 0.1}, {"truncated-json", 0.1}, {"errcode-string", 0.1}, {"huge:1048576", 0.1},
				{"bad-gzip", 0.1}, {"close-mid-body", 0.1}, {"endless-chunked", 0.01}, {"informational:2", 0.1}}},
		{"sum exactly 1", "system-busy=0.7,throttle=0.3", []item{{"system-busy", 0.7}, {"throttle", 0.3}}},
		{"zero", "throttle=0", []item{{"throttle", 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := ParseChaos(tt.spec)
			if err != nil {
				t.Fatalf("ParseChaos(%q): %v", tt.spec, err)
			}
			var got []item
			for _, w := range c.Faults {
				got = append(got, item{w.Fault.String(), w.P})
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseChaos(%q) (-want +got):\n%s", tt.spec, diff)
			}
			if c.Paths != nil {
				t.Errorf("ParseChaos(%q).Paths = %q, want nil", tt.spec, c.Paths)
			}
		})
	}
}

func TestParseChaos_Errors(t *testing.T) {
	tests := []struct {
		spec    string
		wantErr string
	}{
		{"foo=0.1", `unknown fault "foo"`},
		{"throttle", "want name=probability"},
		{"throttle=x", `probability "x"`},
		{"throttle=1.5", `probability "1.5"`},
		{"throttle=-0.1", `probability "-0.1"`},
		{"throttle=NaN", `probability "NaN"`},
		{"latency=0.1", "latency needs a duration"},
		{"latency:abc=0.1", `latency "abc"`},
		{"status:99=0.1", `status "99"`},
		{"status:abc=0.1", `status "abc"`},
		{"status=0.1", "status needs an HTTP status"},
		{"hang:5s=0.1", "takes no argument"},
		{"ip-ban-json:x=0.1", "ip-ban-json wait"},
		{"huge=0.1", "huge needs a body length"},
		{"huge:38=0.1", `huge "38"`},
		{"huge:1MiB=0.1", `huge "1MiB"`},
		{"informational=0.1", "informational needs a count"},
		{"informational:-1=0.1", `informational "-1"`},
		{"bad-gzip:1=0.1", "takes no argument"},
		{"non-json:html=0.1", "takes no argument"},
		{"body:200=0.1", `unknown fault "body"`},
		{"system-busy=0.6,throttle=0.6", "sum to"},
		{"system-busy=0.1,,throttle=0.1", "empty item"},
		{"=0.1", "missing fault name"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			t.Parallel()
			_, err := ParseChaos(tt.spec)
			if err == nil {
				t.Fatalf("ParseChaos(%q) = nil error, want one containing %q", tt.spec, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseChaos(%q) = %q, want it to contain %q", tt.spec, err, tt.wantErr)
			}
		})
	}
}

// TestFaultString_RoundTrips checks that ParseChaos reads back what String
// prints, for every fault it can name.
func TestFaultString_RoundTrips(t *testing.T) {
	faults := []Fault{
		OK(), SystemBusy(), Throttle(), TooMany(), TokenInvalid(), ResetBeforeExec(), ResetAfterExec(), Hang(),
		Latency(50 * time.Millisecond), Status(503), IPBanHTML(), IPBanJSON(defaultIPBanWait), IPBanJSON(9),
		Body(200, "text/html", nonJSONBody), Body(200, contentTypeJSON, truncatedJSONBody),
		Body(200, contentTypeJSON, errcodeStringBody), Huge(39), Huge(1 << 20), BadGzip(), CloseMidBody(),
		EndlessChunked(), Informational(0), Informational(3),
	}
	for _, f := range faults {
		name := f.String()
		if name == "ok" {
			continue // not a chaos fault
		}
		c, err := ParseChaos(name + "=1")
		if err != nil {
			t.Errorf("ParseChaos(%q): %v", name, err)
			continue
		}
		if got := c.Faults[0].Fault; got != f {
			t.Errorf("ParseChaos(%q) = %#v, want %#v", name, got, f)
		}
	}

	// Bodies ParseChaos does not name print their arguments.
	if got, want := Body(502, "text/plain", "a\"b").String(), `body:502:text/plain:"a\"b"`; got != want {
		t.Errorf("String() = %s, want %s", got, want)
	}
	if got, want := Body(200, "application/json", truncatedJSONBody).String(), `body:200:application/json:"{\"errcode\":0,\"errm"`; got != want {
		t.Errorf("String() = %s, want %s", got, want)
	}
	if got := Informational(-1).String(); got != "informational:0" {
		t.Errorf("Informational(-1).String() = %s, want informational:0", got)
	}
}

func TestSetChaos_PanicsOnBadProbabilities(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("SetChaos with probabilities summing to 1.2 did not panic")
		}
	}()
	New(Options{}).SetChaos(Chaos{Faults: []Weighted{{Fault: Throttle(), P: 0.6}, {Fault: TooMany(), P: 0.6}}})
}

// chaosRun sends n sequential requests through chaos and summarises each answer.
func chaosRun(t *testing.T, seed int64, spec string, n int) []string {
	t.Helper()
	s := NewServer(t, Options{Seed: seed})
	c := newClient(t)
	chaos, err := ParseChaos(spec)
	if err != nil {
		t.Fatal(err)
	}
	s.SetChaos(chaos)
	tok := fetchToken(t, c, s) // token endpoints are exempt from chaos
	var out []string
	for range n {
		out = append(out, errKey(call(t, c, s, http.MethodPost, PathUserGet, tok, []byte(`{"userid":"u1"}`))))
	}
	return out
}

func TestChaos_DeterministicWithSeed(t *testing.T) {
	const spec = "system-busy=0.3,throttle=0.2,status:502=0.1"
	a := chaosRun(t, 42, spec, 60)
	b := chaosRun(t, 42, spec, 60)
	if diff := cmp.Diff(a, b); diff != "" {
		t.Errorf("same seed, different answers (-first +second):\n%s", diff)
	}
	seen := map[string]bool{}
	for _, k := range a {
		seen[k] = true
	}
	for _, k := range []string{"OK errcode=0", "OK errcode=-1", "OK errcode=88/90018", "Bad Gateway non-json"} {
		if !seen[k] {
			t.Errorf("60 chaos answers never included %q: %q", k, a)
		}
	}
	if other := chaosRun(t, 7, spec, 60); cmp.Equal(a, other) {
		t.Error("seeds 42 and 7 gave the same 60 answers")
	}
}

func TestChaos_BadAnswers(t *testing.T) {
	s := NewServer(t, Options{Seed: 3})
	c := newClient(t)
	tok := fetchToken(t, c, s)
	chaos, err := ParseChaos("non-json=0.25,truncated-json=0.25,errcode-string=0.25")
	if err != nil {
		t.Fatal(err)
	}
	s.SetChaos(chaos)
	seen := map[string]int{}
	const n = 60
	for i := range n {
		seen[errKey(call(t, c, s, http.MethodPost, PathAsyncSend, tok, fmt.Appendf(nil, `{"i":%d}`, i)))]++
	}
	// truncated-json and non-json both summarise as non-json.
	for _, k := range []string{"OK errcode=0", "OK non-json", `OK errcode="-1"`} {
		if seen[k] == 0 {
			t.Errorf("%d chaos answers never included %s: %v", n, k, seen)
		}
	}
	if got := s.Executions(PathAsyncSend); got != n {
		t.Errorf("Executions = %d, want %d: every bad 200 executes", got, n)
	}
}

func TestChaos_Paths(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	s.SetChaos(Chaos{Faults: []Weighted{{Fault: SystemBusy(), P: 1}}, Paths: []string{"/v1.0/", "/"}})
	tok := fetchToken(t, c, s) // a broad prefix does not cover token endpoints
	res := call(t, c, s, http.MethodPost, PathEcho, tok, nil)
	checkFields(t, res, map[string]any{"errcode": num(dingtalk.ErrcodeSystemBusy)})

	s.SetChaos(Chaos{Faults: []Weighted{{Fault: SystemBusy(), P: 1}}, Paths: []string{"/v1.0/"}})
	res = call(t, c, s, http.MethodPost, PathEcho, tok, nil)
	checkFields(t, res, map[string]any{"errcode": num(0)})
	if res = call(t, c, s, http.MethodGet, PathContactUsers+"u", tok, nil); res.status != http.StatusServiceUnavailable {
		t.Errorf("api path under chaos: status %d, want 503", res.status)
	}

	s.SetChaos(Chaos{Faults: []Weighted{{Fault: SystemBusy(), P: 1}}, Paths: []string{dingtalk.PathGetToken}})
	res = call(t, c, s, http.MethodGet, tokenQuery(DefaultAppKey, DefaultAppSecret), "", nil)
	checkFields(t, res, map[string]any{"errcode": num(dingtalk.ErrcodeSystemBusy)})

	s.SetChaos(Chaos{})
	fetchToken(t, c, s)
}

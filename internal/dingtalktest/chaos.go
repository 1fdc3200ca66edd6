package dingtalktest

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Chaos injects faults at random. For each request it applies to, the server
// draws one number from its seeded RNG and picks at most one fault, so a
// sequence of sequential requests sees the same faults for the same
// [Options.Seed].
type Chaos struct {
	// Faults and their probabilities; the probabilities sum to at most 1, and
	// the rest of the time the request goes on normally.
	Faults []Weighted
	// Paths are the path prefixes chaos applies to; empty means every path
	// except the token endpoints. A token endpoint is covered only when it is
	// listed exactly, so a broad prefix such as "/" or "/v1.0/" never breaks
	// token fetches by accident.
	Paths []string
}

// Weighted is a fault with its probability.
type Weighted struct {
	Fault Fault
	P     float64
}

// probEpsilon absorbs float rounding when probabilities are summed.
const probEpsilon = 1e-9

func (c Chaos) validate() error {
	sum := 0.0
	for _, w := range c.Faults {
		if math.IsNaN(w.P) || w.P < 0 || w.P > 1 {
			return fmt.Errorf("dingtalktest: chaos %s: probability %v is not in [0, 1]", w.Fault, w.P)
		}
		sum += w.P
	}
	if sum > 1+probEpsilon {
		return fmt.Errorf("dingtalktest: chaos probabilities sum to %v, more than 1", sum)
	}
	return nil
}

// appliesTo reports whether chaos covers path.
func (c Chaos) appliesTo(path string) bool {
	if len(c.Faults) == 0 {
		return false
	}
	if isTokenPath(path) {
		for _, p := range c.Paths {
			if p == path {
				return true
			}
		}
		return false
	}
	if len(c.Paths) == 0 {
		return true
	}
	for _, p := range c.Paths {
		if strings.HasPrefix(path, p) {
			return true
		}
	}
	return false
}

// pick maps a uniform draw in [0, 1) to a fault, or reports none.
func (c Chaos) pick(x float64) (Fault, bool) {
	cum := 0.0
	for _, w := range c.Faults {
		cum += w.P
		if x < cum {
			return w.Fault, true
		}
	}
	return Fault{}, false
}

// chaosNames lists the fault names ParseChaos accepts, for error messages.
const chaosNames = "system-busy, throttle, too-many, token-invalid, reset-before, reset-after, hang, " +
	"latency:<duration>, status:<code>, ip-ban-html, ip-ban-json[:<wait>], non-json, truncated-json, " +
	"errcode-string, huge:<bytes>, bad-gzip, close-mid-body, endless-chunked, informational:<n>"

// ParseChaos parses a comma-separated list of name=probability, for example
// "system-busy=0.1,throttle=0.05,reset-after=0.05,latency:50ms=0.05,status:503=0.02".
// Names are system-busy, throttle, too-many, token-invalid, reset-before,
// reset-after, hang, latency:<duration>, status:<code> (200-599), ip-ban-html,
// ip-ban-json (or ip-ban-json:<wait>), and the bad answers non-json,
// truncated-json, errcode-string (see [Body]), huge:<bytes> (at least 39),
// bad-gzip, close-mid-body, endless-chunked and informational:<n>, as
// [Fault.String] prints them. Each probability is in [0, 1] and they sum to
// at most 1. An empty spec is no chaos. The result has no Paths, so it applies
// to every path except the token endpoints.
func ParseChaos(spec string) (Chaos, error) {
	var c Chaos
	if strings.TrimSpace(spec) == "" {
		return c, nil
	}
	for item := range strings.SplitSeq(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return Chaos{}, fmt.Errorf("dingtalktest: chaos spec %q: empty item", spec)
		}
		name, ps, ok := strings.Cut(item, "=")
		if !ok {
			return Chaos{}, fmt.Errorf("dingtalktest: chaos item %q: want name=probability", item)
		}
		name, ps = strings.TrimSpace(name), strings.TrimSpace(ps)
		f, err := parseFaultName(name)
		if err != nil {
			return Chaos{}, fmt.Errorf("dingtalktest: chaos item %q: %w", item, err)
		}
		p, err := strconv.ParseFloat(ps, 64)
		if err != nil || math.IsNaN(p) || p < 0 || p > 1 {
			return Chaos{}, fmt.Errorf("dingtalktest: chaos item %q: probability %q is not a number in [0, 1]", item, ps)
		}
		c.Faults = append(c.Faults, Weighted{Fault: f, P: p})
	}
	if err := c.validate(); err != nil {
		return Chaos{}, fmt.Errorf("%w (spec %q)", err, spec)
	}
	return c, nil
}

func parseFaultName(name string) (Fault, error) {
	base, arg, hasArg := strings.Cut(name, ":")
	noArg := func(f Fault) (Fault, error) {
		if hasArg {
			return Fault{}, fmt.Errorf("fault %q takes no argument", base)
		}
		return f, nil
	}
	switch base {
	case "system-busy":
		return noArg(SystemBusy())
	case "throttle":
		return noArg(Throttle())
	case "too-many":
		return noArg(TooMany())
	case "token-invalid":
		return noArg(TokenInvalid())
	case "reset-before":
		return noArg(ResetBeforeExec())
	case "reset-after":
		return noArg(ResetAfterExec())
	case "hang":
		return noArg(Hang())
	case "ip-ban-html":
		return noArg(IPBanHTML())
	case "ip-ban-json":
		if !hasArg {
			return IPBanJSON(defaultIPBanWait), nil
		}
		n, err := strconv.Atoi(arg)
		if err != nil || n < 0 {
			return Fault{}, fmt.Errorf("ip-ban-json wait %q is not a non-negative integer", arg)
		}
		return IPBanJSON(n), nil
	case "non-json", "truncated-json", "errcode-string":
		return noArg(namedBodies[base])
	case "bad-gzip":
		return noArg(BadGzip())
	case "close-mid-body":
		return noArg(CloseMidBody())
	case "endless-chunked":
		return noArg(EndlessChunked())
	case "huge":
		if !hasArg {
			return Fault{}, errors.New("huge needs a body length in bytes, as in huge:1048576")
		}
		n, err := strconv.ParseInt(arg, 10, 64)
		if err != nil || n < hugeMin {
			return Fault{}, fmt.Errorf("huge %q is not a byte count of at least %d", arg, hugeMin)
		}
		return Huge(n), nil
	case "informational":
		if !hasArg {
			return Fault{}, errors.New("informational needs a count, as in informational:2")
		}
		n, err := strconv.Atoi(arg)
		if err != nil || n < 0 {
			return Fault{}, fmt.Errorf("informational %q is not a non-negative integer", arg)
		}
		return Informational(n), nil
	case "latency":
		if !hasArg {
			return Fault{}, errors.New("latency needs a duration, as in latency:50ms")
		}
		d, err := time.ParseDuration(arg)
		if err != nil || d < 0 {
			return Fault{}, fmt.Errorf("latency %q is not a non-negative duration such as 50ms", arg)
		}
		return Latency(d), nil
	case "status":
		if !hasArg {
			return Fault{}, errors.New("status needs an HTTP status, as in status:503")
		}
		n, err := strconv.Atoi(arg)
		if err != nil || n < 200 || n > 599 {
			return Fault{}, fmt.Errorf("status %q is not an HTTP status in 200-599", arg)
		}
		return Status(n), nil
	case "":
		return Fault{}, fmt.Errorf("missing fault name (want one of %s)", chaosNames)
	default:
		return Fault{}, fmt.Errorf("unknown fault %q (want one of %s)", base, chaosNames)
	}
}

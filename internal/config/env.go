package config

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// EnvError is a DINGPROXY_* environment variable that Load does not read: a
// misspelt key, which would otherwise be ignored without a word while the
// same typo in the file is refused. Its Error is Name + ": " + Msg, for
// example "DINGPROXY_RETRY_MAX_ATTEMPS: unknown variable (did you mean
// DINGPROXY_RETRY_MAX_ATTEMPTS?)". It never holds the variable's value.
type EnvError struct {
	// Name is the variable's name, as the environment spells it.
	Name string
	// Msg says why it is not read and, when one is close, which variable
	// was meant.
	Msg string
}

func (e *EnvError) Error() string { return e.Name + ": " + e.Msg }

// unknownEnv returns an *EnvError for every variable of environ (os.Environ's
// KEY=value form) whose name starts with DINGPROXY_ in any case, that is not
// a key's variable and not empty (an empty variable counts as unset, as for
// the keys), sorted by name. The variables Kubernetes sets for a Service
// whose name starts with "dingproxy" (DINGPROXY_REDIS_SERVICE_HOST and the
// like) are not the proxy's and are left alone.
func unknownEnv(environ []string) []error {
	known := map[string]string{} // variable → key
	var names []string           // the variables, in key order
	for _, l := range leaves() {
		n := envName(l.key)
		known[n] = l.key
		names = append(names, n)
	}
	var errs []*EnvError
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		upper := strings.ToUpper(name)
		if !strings.HasPrefix(upper, envPrefix+"_") || value == "" {
			continue
		}
		if _, ok := known[name]; ok {
			continue
		}
		if name == upper && kubernetesServiceLink(name, value) {
			continue
		}
		errs = append(errs, &EnvError{Name: name, Msg: unknownEnvMsg(name, upper, known, names)})
	}
	slices.SortFunc(errs, func(a, b *EnvError) int { return strings.Compare(a.Name, b.Name) })
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return out
}

// unknownEnvMsg says why name is not read, and what was meant if that can be
// told.
func unknownEnvMsg(name, upper string, known map[string]string, names []string) string {
	const msg = "unknown variable"
	if name != upper {
		if _, ok := known[upper]; ok {
			return fmt.Sprintf("%s: names are upper-case (%s)", msg, upper)
		}
	}
	rest := strings.TrimPrefix(upper, envPrefix+"_")
	if strings.HasPrefix(upper, envName("routes")+"_") {
		return fmt.Sprintf("%s: the routes are set as a whole, by %s (a YAML or JSON list)", msg, envName("routes"))
	}
	for _, n := range names { // a section: retry, retry.backoff
		if strings.HasPrefix(n, upper+"_") {
			return fmt.Sprintf("%s: %s is a section, not a key: set its keys, such as %s", msg, sectionKey(known[n], rest), n)
		}
	}
	if n := nearestEnv(rest, names); n != "" {
		return fmt.Sprintf("%s (did you mean %s?)", msg, n)
	}
	return msg
}

// sectionKey is the dotted key of the section that rest (a variable's name
// without the prefix) names, read off key, a key inside it.
func sectionKey(key, rest string) string {
	parts := strings.Split(key, ".")
	for i := 1; i < len(parts); i++ {
		if s := strings.Join(parts[:i], "."); strings.ToUpper(strings.ReplaceAll(s, ".", "_")) == rest {
			return s
		}
	}
	return strings.ToLower(rest)
}

// nearestEnv returns the variable of names that rest (an unknown variable's
// name without the prefix) most likely meant, or "": one a few edits away,
// or the only one whose name ends in rest (a key without its section, as in
// DINGPROXY_REDIS_URL for DINGPROXY_FLEET_REDIS_URL).
func nearestEnv(rest string, names []string) string {
	best, bestD := "", 0
	for _, n := range names {
		r := strings.TrimPrefix(n, envPrefix+"_")
		d := editDistance(rest, r)
		if d <= max(1, min(3, len(r)/5)) && (best == "" || d < bestD) {
			best, bestD = n, d
		}
	}
	if best != "" {
		return best
	}
	var ends []string
	for _, n := range names {
		if strings.HasSuffix(n, "_"+rest) {
			ends = append(ends, n)
		}
	}
	if len(ends) == 1 {
		return ends[0]
	}
	return ""
}

// editDistance counts the insertions, deletions, substitutions and swaps of
// adjacent bytes that turn a into b (optimal string alignment).
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

// serviceLinks are the variables kubelet puts in every container for each
// Service of the namespace (unless the pod sets enableServiceLinks: false):
// for a Service named dingproxy-redis, DINGPROXY_REDIS_SERVICE_HOST,
// DINGPROXY_REDIS_SERVICE_PORT, DINGPROXY_REDIS_PORT=tcp://10.0.0.7:6379,
// DINGPROXY_REDIS_PORT_6379_TCP_ADDR and so on. Each is told by its name's
// end and its value's form, so that DINGPROXY_ADMIN_PORT=9091 is still
// refused.
var serviceLinks = []struct {
	name  *regexp.Regexp
	value func(string) bool
}{
	{regexp.MustCompile(`_SERVICE_HOST$`), isIP},
	{regexp.MustCompile(`_SERVICE_PORT(_[A-Z0-9_]+)?$`), isPort},
	{regexp.MustCompile(`_PORT(_[0-9]+_(TCP|UDP|SCTP))?$`), isLinkURL},
	{regexp.MustCompile(`_PORT_[0-9]+_(TCP|UDP|SCTP)_PROTO$`), func(v string) bool { return v == "tcp" || v == "udp" || v == "sctp" }},
	{regexp.MustCompile(`_PORT_[0-9]+_(TCP|UDP|SCTP)_PORT$`), isPort},
	{regexp.MustCompile(`_PORT_[0-9]+_(TCP|UDP|SCTP)_ADDR$`), isIP},
}

// kubernetesServiceLink reports whether name=value is one of serviceLinks.
func kubernetesServiceLink(name, value string) bool {
	for _, l := range serviceLinks {
		if l.name.MatchString(name) && l.value(value) {
			return true
		}
	}
	return false
}

func isIP(v string) bool { return net.ParseIP(v) != nil }

func isPort(v string) bool {
	n, err := strconv.ParseUint(v, 10, 16)
	return err == nil && n > 0 && strconv.FormatUint(n, 10) == v
}

// isLinkURL: tcp://10.0.0.7:6379, udp://[fd00::7]:53.
func isLinkURL(v string) bool {
	proto, addr, ok := strings.Cut(v, "://")
	if !ok || proto != "tcp" && proto != "udp" && proto != "sctp" {
		return false
	}
	host, port, err := net.SplitHostPort(addr)
	return err == nil && isIP(host) && isPort(port)
}

package dingtalk

import (
	_ "embed"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Endpoint is what dingproxy knows of the DingTalk API a request path calls. It
// is decided once, when the request arrives (Describe), and carried through
// routing, retry, the breaker, pacing, metrics and logs.
type Endpoint struct {
	// Upstream is the host the path belongs to.
	Upstream Upstream
	// Route names the API: its path template, the unit DingTalk rate-limits
	// ("/v1.0/contact/users/{unionId}", "/topapi/v2/user/get"). It is valid
	// UTF-8 of printable ASCII, at most MaxRouteLen bytes, however the path
	// was spelled: a path parameter never becomes part of it.
	Route string
	// TokenEndpoint: the call issues a token (the app's or another kind).
	// It takes no app token and is not paced.
	TokenEndpoint bool
	// NoAppToken: the call takes no app token (token endpoints and the
	// robot webhook), so none is injected. (A few new-API calls the SDK
	// sends without a token header get it anyway: harmless, and their
	// callers could not add one themselves.)
	NoAppToken bool
	// Read: the path is in the catalogue of DingTalk reads that use POST
	// (IsReadEndpoint), by its route or as sent.
	Read bool
	// Metered: DingTalk may count the call against the organisation's
	// monthly API quota (Metered).
	Metered bool
}

// Limits on a route name: a path deeper than maxRouteSegments keeps its
// first segments and ends in "/{*}"; a segment longer than maxSegmentLen is
// never a literal.
const (
	maxRouteSegments = 12
	maxSegmentLen    = 64
	// MaxRouteLen bounds len(Endpoint.Route).
	MaxRouteLen = maxRouteSegments*(maxSegmentLen+1) + len("/{*}")
)

// Route placeholders: a parameter of an API the catalogue does not name, and
// the segments past maxRouteSegments.
const (
	paramUnknown = "{}"
	paramTail    = "{*}"
)

// tokenEndpoints are the old-API calls that issue a token: nothing is
// injected into them and they are not paced. (The new-API ones come from
// the catalogue: the /v1.0/oauth2/ calls whose SDK declares no token header.)
var tokenEndpoints = map[string]struct{}{
	PathGetToken:               {},
	"/service/get_corp_token":  {},
	"/service/get_suite_token": {},
	"/sns/gettoken":            {},
	"/sso/gettoken":            {},
}

//go:embed apis.txt
var apisTxt string

// catalogue is the new-API path templates, from apis.txt.
var catalogue = mustParseCatalogue(apisTxt)

// node is one level of the catalogue's path trie.
type node struct {
	literal map[string]*node
	param   *node // a {name} segment
	// api is set where a template ends.
	api *Endpoint
}

type apiCatalogue struct {
	root node
	// vocabulary holds every literal segment of every template: a segment
	// of an unknown new-API path stays in its route only if it is one.
	vocabulary map[string]struct{}
	size       int
}

// mustParseCatalogue reads "METHOD TEMPLATE token|notoken" lines; # starts a
// comment. The methods of one template are one API, which takes no app
// token only if none of its methods does.
func mustParseCatalogue(txt string) *apiCatalogue {
	c := &apiCatalogue{vocabulary: map[string]struct{}{}}
	noToken := map[string]bool{}
	var order []string
	for n, line := range strings.Split(txt, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || !strings.HasPrefix(f[1], "/") || (f[2] != "token" && f[2] != "notoken") {
			panic(fmt.Sprintf("dingtalk: apis.txt line %d: want METHOD /template token|notoken, got %q", n+1, line))
		}
		nt, seen := noToken[f[1]]
		if !seen {
			order = append(order, f[1])
			nt = true
		}
		noToken[f[1]] = nt && f[2] == "notoken"
	}
	for _, t := range order {
		c.add(t, noToken[t])
	}
	return c
}

func (c *apiCatalogue) add(template string, noToken bool) {
	cur := &c.root
	for _, seg := range strings.Split(template[1:], "/") {
		if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") {
			if cur.param == nil {
				cur.param = &node{}
			}
			cur = cur.param
			continue
		}
		c.vocabulary[seg] = struct{}{}
		if cur.literal == nil {
			cur.literal = map[string]*node{}
		}
		next := cur.literal[seg]
		if next == nil {
			next = &node{}
			cur.literal[seg] = next
		}
		cur = next
	}
	if cur.api != nil {
		// Two templates that differ only in a parameter's name are one
		// API: the first name stays, and it takes a token if either does.
		cur.api.TokenEndpoint = cur.api.TokenEndpoint && noToken
		cur.api.NoAppToken = cur.api.TokenEndpoint
		return
	}
	c.size++
	// The calls that issue tokens all live under /v1.0/oauth2/.
	issues := noToken && strings.HasPrefix(template, "/v1.0/oauth2/")
	cur.api = &Endpoint{Upstream: API, Route: template, TokenEndpoint: issues, NoAppToken: issues}
}

// match finds the template segs call, preferring literals to parameters.
func (n *node) match(segs []string) *Endpoint {
	if len(segs) == 0 {
		return n.api
	}
	if next := n.literal[segs[0]]; next != nil {
		if a := next.match(segs[1:]); a != nil {
			return a
		}
	}
	if n.param != nil && segs[0] != "" {
		return n.param.match(segs[1:])
	}
	return nil
}

// CatalogueSize is the number of new-API templates dingproxy knows.
func CatalogueSize() int { return catalogue.size }

// Describe decides the facts of a request path once: its upstream, its
// route and how it takes the app token.
//
// Empty segments ("//attendance/list", a trailing "/") are ignored for the
// decision; the path is forwarded as sent. A new-API path is matched
// against the catalogue; an unknown one keeps the segments that are
// literals of some known API and turns every other into "{}", so an id can
// never become a route. An old-API path (which has no path parameters) keeps
// its segments when they are plain ASCII names of at most 64 bytes; any
// other becomes "{}".
func Describe(path string) Endpoint {
	e := describe(path)
	e.Read = IsReadEndpoint(e.Route) || IsReadEndpoint(path)
	e.Metered = !e.TokenEndpoint && Metered(e.Route)
	return e
}

// unmeteredPrefixes are the route prefixes of the APIs DingTalk leaves out
// of the monthly quota (docs/dingtalk.md, "Monthly quota": token, SSO and
// contacts APIs are excluded): sign-in and SSO, and the address book
// (users, departments, roles, external contacts) on both hosts.
var unmeteredPrefixes = []string{
	"/sso/", "/sns/", "/v1.0/oauth2/", "/v1.0/sso/",
	"/user/", "/topapi/user/", "/topapi/v2/user/",
	"/department/", "/topapi/department/", "/topapi/v2/department/",
	"/role/", "/topapi/role/", "/extcontact/", "/topapi/extcontact/",
	"/v1.0/contact/", "/v2.0/contact/",
}

// Metered says whether DingTalk may count a call on route against the
// organisation's monthly quota. Only the token, SSO and contacts APIs are
// known not to be; every other route, known or not, is taken as metered
// (counting a free call costs nothing, and no path is ever stopped unless
// DingTalk itself answered it 90020).
func Metered(route string) bool {
	for _, p := range unmeteredPrefixes {
		if strings.HasPrefix(route, p) {
			return false
		}
	}
	return true
}

func describe(path string) Endpoint {
	up := UpstreamFor(path)
	if up == API {
		return describeAPI(path)
	}
	route := oapiRoute(path)
	a := Endpoint{Upstream: OAPI, Route: route}
	if _, ok := tokenEndpoints[route]; ok {
		a.TokenEndpoint, a.NoAppToken = true, true
	}
	if route == PathRobotSend {
		a.NoAppToken = true
	}
	return a
}

func describeAPI(path string) Endpoint {
	var buf [maxRouteSegments + 1]string
	segs := splitSegments(path, buf[:0])
	if len(segs) <= maxRouteSegments {
		if a := catalogue.root.match(segs); a != nil {
			return *a
		}
	}
	var b strings.Builder
	for i, s := range segs {
		b.WriteByte('/')
		if i == maxRouteSegments {
			b.WriteString(paramTail)
			break
		}
		if _, ok := catalogue.vocabulary[s]; (ok || i == 0) && isPlainSegment(s) {
			b.WriteString(s) // the first is v1.0 or v2.0 (UpstreamFor)
		} else {
			b.WriteString(paramUnknown)
		}
	}
	return Endpoint{Upstream: API, Route: b.String()}
}

// oapiRoute is path with empty segments dropped and every segment that is
// not a plain name replaced by "{}". A path that needs no change is
// returned as it is, without allocating.
func oapiRoute(path string) string {
	if isCleanPath(path) {
		return path
	}
	var buf [maxRouteSegments + 1]string
	segs := splitSegments(path, buf[:0])
	if len(segs) == 0 {
		return "/"
	}
	var b strings.Builder
	for i, s := range segs {
		b.WriteByte('/')
		if i == maxRouteSegments {
			b.WriteString(paramTail)
			break
		}
		if isPlainSegment(s) {
			b.WriteString(s)
		} else {
			b.WriteString(paramUnknown)
		}
	}
	return b.String()
}

// isCleanPath: "/" followed by at most maxRouteSegments plain segments.
func isCleanPath(p string) bool {
	if len(p) < 2 || p[0] != '/' {
		return false
	}
	n := 0
	for seg := range strings.SplitSeq(p[1:], "/") {
		n++
		if n > maxRouteSegments || !isPlainSegment(seg) {
			return false
		}
	}
	return true
}

// splitSegments appends path's non-empty segments to dst, at most
// maxRouteSegments+1 of them (the last one standing for the rest).
func splitSegments(path string, dst []string) []string {
	for seg := range strings.SplitSeq(path, "/") {
		if seg == "" {
			continue
		}
		dst = append(dst, seg)
		if len(dst) > maxRouteSegments {
			break
		}
	}
	return dst
}

// isPlainSegment: 1 to maxSegmentLen bytes of ASCII letters, digits and
// "_", "-", ".", "~" (RFC 3986's unreserved characters).
func isPlainSegment(s string) bool {
	if s == "" || len(s) > maxSegmentLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' || c == '.' || c == '~') {
			return false
		}
	}
	return true
}

// ValidRoute reports whether s can be a route name: printable ASCII (so
// valid UTF-8) and at most MaxRouteLen bytes. Every Describe result is.
func ValidRoute(s string) bool {
	if s == "" || len(s) > MaxRouteLen || !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

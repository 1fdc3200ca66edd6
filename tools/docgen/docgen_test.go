package main

import (
	"bytes"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/dingproxy/dingproxy/internal/resilience"
)

// root is the repository's root, seen from this package's directory.
const root = "../.."

// TestGeneratedDocsUpToDate regenerates every block in memory and fails,
// naming the command to run, when a committed file differs.
func TestGeneratedDocsUpToDate(t *testing.T) {
	t.Parallel()
	blocks, err := render(root)
	if err != nil {
		t.Fatal(err)
	}
	paths, err := files(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		src, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out, _, err := rewrite(src, blocks)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if !bytes.Equal(out, src) {
			t.Errorf("%s is out of date with the code: run %s and commit the result.\n%s",
				strings.TrimPrefix(p, root+"/"), regenerate, firstDifference(string(src), string(out)))
		}
	}
	// Every block is somewhere, and a check run agrees.
	if err := run(root, true, io.Discard); err != nil {
		t.Error(err)
	}
}

// firstDifference shows the first line where the committed text (have)
// and the generated one (want) differ.
func firstDifference(have, want string) string {
	h, w := strings.Split(have, "\n"), strings.Split(want, "\n")
	for i := range max(len(h), len(w)) {
		var hl, wl string
		if i < len(h) {
			hl = h[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if hl != wl {
			return fmt.Sprintf("first difference at line %d:\n  committed: %s\n  generated: %s", i+1, hl, wl)
		}
	}
	return ""
}

func TestRewrite(t *testing.T) {
	t.Parallel()
	blocks := map[string]string{"a": "new 1\nnew 2\n"}
	begin := beginPrefix + "a" + beginSuffix + "\n"
	end := endPrefix + "a -->\n"
	src := "intro\n" + beginPrefix + "a: hand-edited marker -->\nold\n" + end + "outro\n"
	out, names, err := rewrite([]byte(src), blocks)
	if err != nil {
		t.Fatal(err)
	}
	if want := "intro\n" + begin + "new 1\nnew 2\n" + end + "outro\n"; string(out) != want {
		t.Errorf("rewrite =\n%s\nwant\n%s", out, want)
	}
	if !slices.Equal(names, []string{"a"}) {
		t.Errorf("names = %v", names)
	}
	again, _, err := rewrite(out, blocks)
	if err != nil || !bytes.Equal(again, out) {
		t.Errorf("a second rewrite changed the text (%v):\n%s", err, again)
	}
	for name, bad := range map[string]string{
		"unknown block": beginPrefix + "b" + beginSuffix + "\n" + endPrefix + "b -->\n",
		"no END":        begin + "text\n",
		"END alone":     "text\n" + end,
		"nested BEGIN":  begin + begin + end,
	} {
		if _, _, err := rewrite([]byte(bad), blocks); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestTablesHoldTheReference(t *testing.T) {
	t.Parallel()
	blocks, err := render(root)
	if err != nil {
		t.Fatal(err)
	}
	for block, want := range map[string][]string{
		"config-keys": {
			"| `token.placeholder` | `DINGPROXY_TOKEN_PLACEHOLDER` | string | `\"\"` | live |",
			"| `fleet.timeout` | `DINGPROXY_FLEET_TIMEOUT` | duration | `50ms` | restart |",
			"| `retry.backoff.base` | `DINGPROXY_RETRY_BACKOFF_BASE` | duration | `100ms` | live |",
		},
		"metrics": {
			"| `dingproxy_requests_total` | counter | `code`, `route` |",
			"`op`: `ping`, `token_read`",
			"`quota`, `cache`.",
		},
		"alerts": {
			"| [DingproxyDeadSends](../README.md#dingproxydeadsends) | warning | 1m | Deferred sends were given up",
			"| [DingproxyTokenExpiring](../README.md#dingproxytokenexpiring) | critical | 0 |",
		},
	} {
		for _, w := range want {
			if !strings.Contains(blocks[block], w) {
				t.Errorf("block %s lacks %q:\n%s", block, w, blocks[block])
			}
		}
	}
}

// linked are the Markdown files whose links must resolve.
func linked(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil || len(docs) == 0 {
		t.Fatalf("no docs/*.md (%v)", err)
	}
	return append([]string{
		filepath.Join(root, "README.md"),
		filepath.Join(root, "BENCHMARKS.md"),
		filepath.Join(root, "SECURITY.md"),
	}, docs...)
}

// TestLinks: every relative link in README.md, docs/, BENCHMARKS.md and
// SECURITY.md names a file or directory inside the repository, and every
// #anchor a heading (or an explicit anchor) of the Markdown file it names.
func TestLinks(t *testing.T) {
	t.Parallel()
	abs, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	anchorCache := map[string]map[string]bool{}
	anchorsOf := func(p string) map[string]bool {
		if a, ok := anchorCache[p]; ok {
			return a
		}
		src, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		a := anchors(string(src))
		anchorCache[p] = a
		return a
	}
	checked := 0
	for _, file := range linked(t) {
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(file, root+"/")
		for _, l := range links(string(src)) {
			if isAbsoluteURL(l.target) {
				continue
			}
			checked++
			raw, frag, _ := strings.Cut(l.target, "#")
			path, err := url.PathUnescape(raw)
			if err != nil {
				t.Errorf("%s:%d: link %q: %v", name, l.line, l.target, err)
				continue
			}
			target := file
			if path != "" {
				if strings.HasPrefix(path, "/") {
					t.Errorf("%s:%d: link %q: use a path relative to the file", name, l.line, l.target)
					continue
				}
				target = filepath.Join(filepath.Dir(file), path)
			}
			at, _ := filepath.Abs(target)
			if rel, err := filepath.Rel(abs, at); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
				t.Errorf("%s:%d: link %q points outside the repository", name, l.line, l.target)
				continue
			}
			if _, err := os.Stat(target); err != nil {
				t.Errorf("%s:%d: link %q: no such file", name, l.line, l.target)
				continue
			}
			if frag != "" && strings.HasSuffix(target, ".md") && !anchorsOf(target)[frag] {
				t.Errorf("%s:%d: link %q: %s has no heading with anchor #%s", name, l.line, l.target,
					strings.TrimPrefix(target, root+"/"), frag)
			}
		}
	}
	if checked < 20 {
		t.Errorf("only %d relative links found: is the link parser broken?", checked)
	}
}

// TestNothingPointsOutside: the documentation is the repository's own; it
// names no document that lives elsewhere.
func TestNothingPointsOutside(t *testing.T) {
	t.Parallel()
	files := append(linked(t), filepath.Join(root, "configs", "dingproxy.yaml"))
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// The folder beside the repository is spelled in two parts, so that
		// this file does not itself mention it.
		for _, bad := range []string{".." + "/shared", "/work/", "SPEC.md", "DINGTALK.md"} {
			if i := strings.Index(string(src), bad); i >= 0 {
				line := strings.Count(string(src[:i]), "\n") + 1
				t.Errorf("%s:%d: mentions %q, a document outside the repository", strings.TrimPrefix(f, root+"/"), line, bad)
			}
		}
	}
}

type link struct {
	target string
	line   int
}

var (
	inlineLink = regexp.MustCompile(`\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)`)
	refDef     = regexp.MustCompile(`^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+"[^"]*")?\s*$`)
	href       = regexp.MustCompile(`\bhref="([^"]+)"`)
	codeSpan   = regexp.MustCompile("`+[^`]*`+")
	schemeRe   = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
)

func isAbsoluteURL(s string) bool { return schemeRe.MatchString(s) }

// links are the link targets of a Markdown text, outside fenced code
// blocks and code spans.
func links(src string) []link {
	var out []link
	fenced := false
	for i, line := range strings.Split(src, "\n") {
		if isFence(line) {
			fenced = !fenced
			continue
		}
		if fenced {
			continue
		}
		line = codeSpan.ReplaceAllString(line, "")
		for _, re := range []*regexp.Regexp{inlineLink, refDef, href} {
			for _, m := range re.FindAllStringSubmatch(line, -1) {
				out = append(out, link{target: m[1], line: i + 1})
			}
		}
	}
	return out
}

func isFence(line string) bool {
	t := strings.TrimLeft(line, " ")
	return len(line)-len(t) < 4 && (strings.HasPrefix(t, "```") || strings.HasPrefix(t, "~~~"))
}

var (
	headingRe  = regexp.MustCompile(`^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$`)
	linkText   = regexp.MustCompile(`!?\[([^\]]*)\]\([^)]*\)`)
	htmlTag    = regexp.MustCompile(`<[^>]+>`)
	explicitID = regexp.MustCompile(`<a\s+(?:id|name)="([^"]+)"`)
)

// anchors are the fragment names a Markdown file offers on GitHub: one per
// heading (duplicates numbered -1, -2, ...) and each <a id> or <a name>.
func anchors(src string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	fenced := false
	for _, line := range strings.Split(src, "\n") {
		if isFence(line) {
			fenced = !fenced
			continue
		}
		if fenced {
			continue
		}
		for _, m := range explicitID.FindAllStringSubmatch(line, -1) {
			out[m[1]] = true
		}
		m := headingRe.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		s := slug(m[2])
		if n := seen[s]; n > 0 {
			out[fmt.Sprintf("%s-%d", s, n)] = true
		} else {
			out[s] = true
		}
		seen[s]++
	}
	return out
}

// slug is GitHub's anchor for a heading's text: the text as rendered
// (link targets, tags and code backticks gone), lower-cased, with every
// character but letters, digits, '-', '_' and spaces dropped and each
// space turned into '-'.
func slug(heading string) string {
	text := linkText.ReplaceAllString(heading, "$1")
	text = htmlTag.ReplaceAllString(text, "")
	var b strings.Builder
	for _, r := range strings.ToLower(text) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.Mn, r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

func TestSlug(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ heading, want string }{
		{"What the demo shows", "what-the-demo-shows"},
		{"Circuit breakers and fallbacks", "circuit-breakers-and-fallbacks"},
		{"The proxy's own answers", "the-proxys-own-answers"},
		{"Fleet: several proxies of one app", "fleet-several-proxies-of-one-app"},
		{"`retry.*`: the attempt loop", "retry-the-attempt-loop"},
		{"Try it by hand (against `make fake`)", "try-it-by-hand-against-make-fake"},
		{"[Linked](docs/x.md) heading", "linked-heading"},
		{"Routes are APIs", "routes-are-apis"},
		{"max_inflight & limits", "max_inflight--limits"},
	} {
		if got := slug(c.heading); got != c.want {
			t.Errorf("slug(%q) = %q, want %q", c.heading, got, c.want)
		}
	}
	a := anchors("# A\n## A\n```\n# Not\n```\n## A\n<a id=\"x-y\"></a>\n")
	for _, want := range []string{"a", "a-1", "a-2", "x-y"} {
		if !a[want] {
			t.Errorf("anchors lack %q: %v", want, a)
		}
	}
	if a["not"] {
		t.Error("a heading inside a code block got an anchor")
	}
}

func TestLinksParser(t *testing.T) {
	t.Parallel()
	got := links("see [a](docs/a.md#x) and `[not](code.md)`\n```\n[no](fenced.md)\n```\n[ref]: ../b.md\n<a href=\"c.md\">c</a> [web](https://example.com)\n")
	var targets []string
	for _, l := range got {
		targets = append(targets, l.target)
	}
	if want := []string{"docs/a.md#x", "../b.md", "https://example.com", "c.md"}; !slices.Equal(targets, want) {
		t.Errorf("links = %v, want %v", targets, want)
	}
}

// TestScenarioCount: what README.md and BENCHMARKS.md say make resilience
// runs is the length of resilience.Scenarios.
func TestScenarioCount(t *testing.T) {
	t.Parallel()
	n := len(resilience.Scenarios)
	for file, phrase := range map[string]string{
		"README.md":     fmt.Sprintf("`make resilience` runs %d harder scenarios", n),
		"BENCHMARKS.md": fmt.Sprintf("`make resilience` runs **%d scenarios**", n),
	} {
		src, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(strings.Join(strings.Fields(string(src)), " "), phrase) {
			t.Errorf("%s does not say %q: internal/resilience has %d scenarios; update its text", file, phrase, n)
		}
	}
}

// TestPrometheusRule: the PrometheusRule is the header, then the rule file
// from its groups on, under spec, comments kept and blank lines left blank;
// a file without a top-level groups key is an error.
func TestPrometheusRule(t *testing.T) {
	t.Parallel()
	src := "# the file's own header\n# more\ngroups:\n  - name: g\n    rules:\n      # a comment\n      - alert: A\n        expr: |\n          up\n\n          == 0\n"
	got, err := prometheusRule([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := operatorHeader + "  groups:\n    - name: g\n      rules:\n        # a comment\n        - alert: A\n          expr: |\n            up\n\n            == 0\n"
	if string(got) != want {
		t.Errorf("prometheusRule =\n%s\nwant\n%s", got, want)
	}
	if !strings.HasSuffix(operatorHeader, "kind: PrometheusRule\nmetadata:\n  name: dingproxy\n  labels:\n    app.kubernetes.io/name: dingproxy\nspec:\n") {
		t.Errorf("the header does not end with the PrometheusRule's head and spec:\n%s", operatorHeader)
	}
	if _, err := prometheusRule([]byte("  groups:\n")); err == nil {
		t.Error("no error for a file without a top-level groups key")
	}
}

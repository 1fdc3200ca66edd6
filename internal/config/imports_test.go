package config

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsOnlyDingtalk keeps the package comment true: of dingproxy's
// own packages, config imports internal/dingtalk and internal/redisurl
// alone (no I/O, no state), so every other package may import config
// without a cycle.
func TestImportsOnlyDingtalk(t *testing.T) {
	t.Parallel()
	const module = "github.com/dingproxy/dingproxy/"
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(path, module) && path != module+"internal/dingtalk" && path != module+"internal/redisurl" {
				t.Errorf("%s imports %s: config may import no dingproxy package but internal/dingtalk and internal/redisurl (see doc.go)", name, path)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no source files found")
	}
}

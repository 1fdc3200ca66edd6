package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestReferenceDefaultsReadBack: every default the reference documents,
// written in a YAML file as the documentation shows it, loads back as
// Default, so a user who copies a value gets the built-in behaviour.
func TestReferenceDefaultsReadBack(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	var open []string // the sections the last line is in
	for _, k := range Reference() {
		parts := strings.Split(k.Key, ".")
		sections, leaf := parts[:len(parts)-1], parts[len(parts)-1]
		common := 0
		for common < len(open) && common < len(sections) && open[common] == sections[common] {
			common++
		}
		for i := common; i < len(sections); i++ {
			b.WriteString(strings.Repeat("  ", i) + sections[i] + ":\n")
		}
		open = sections
		b.WriteString(strings.Repeat("  ", len(sections)) + leaf + ": " + k.Default + "\n")
	}
	path := filepath.Join(t.TempDir(), "defaults.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("the documented defaults do not load:\n%s\n%v", b.String(), err)
	}
	if diff := cmp.Diff(Default(), *cfg); diff != "" {
		t.Errorf("the documented defaults load as another configuration (-Default +loaded):\n%s\nfile:\n%s", diff, b.String())
	}
}

// TestReferenceDefaultsFromEnvironment: each non-empty default, set in the
// environment variable the reference names, loads back as Default.
func TestReferenceDefaultsFromEnvironment(t *testing.T) {
	for _, k := range Reference() {
		if k.Default == `""` {
			continue // an empty variable counts as unset
		}
		t.Run(k.Key, func(t *testing.T) {
			t.Setenv(k.Env, k.Default)
			cfg, err := Load("")
			if err != nil {
				t.Fatalf("%s=%s: %v", k.Env, k.Default, err)
			}
			if diff := cmp.Diff(Default(), *cfg); diff != "" {
				t.Errorf("%s=%s loads another configuration (-Default +loaded):\n%s", k.Env, k.Default, diff)
			}
		})
	}
}

// TestReferenceKeys: the reference lists every key once, with the
// environment variable Load reads and the restart tags reload honours.
func TestReferenceKeys(t *testing.T) {
	t.Parallel()
	ref := Reference()
	var keys, restart []string
	for _, k := range ref {
		keys = append(keys, k.Key)
		if want := "DINGPROXY_" + strings.ToUpper(strings.ReplaceAll(k.Key, ".", "_")); k.Env != want {
			t.Errorf("%s: env %s, want %s", k.Key, k.Env, want)
		}
		if k.Type == "" || k.Default == "" {
			t.Errorf("%s: type %q, default %q: both must be set", k.Key, k.Type, k.Default)
		}
		if k.Restart {
			restart = append(restart, k.Key)
		}
	}
	var want []string
	for _, l := range leaves() {
		want = append(want, l.key)
	}
	if !slices.Equal(keys, want) {
		t.Errorf("keys %v, want %v", keys, want)
	}
	if !slices.Equal(restart, restartKeys) {
		t.Errorf("restart-only keys %v, want %v", restart, restartKeys)
	}
}

func TestShortDurationAndScalar(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ got, want string }{
		{shortDuration(0), "0s"},
		{shortDuration(90 * time.Minute), "1h30m"},
		{shortDuration(2 * time.Hour), "2h"},
		{shortDuration(10 * time.Minute), "10m"},
		{shortDuration(1500 * time.Millisecond), "1.5s"},
		{scalar(""), `""`},
		{scalar("127.0.0.1:8080"), "127.0.0.1:8080"},
		{scalar("a: b"), "'a: b'"},
		{scalar("true"), "'true'"},
		{scalar("30"), "'30'"},
		{scalar(`{"errcode":-1}`), `'{"errcode":-1}'`},
		{scalar("it's"), "it's"},
		{scalar("-x"), "'-x'"},
		{scalar("/topapi/v2/department/listsub"), "/topapi/v2/department/listsub"},
	} {
		if c.got != c.want {
			t.Errorf("got %s, want %s", c.got, c.want)
		}
	}
}

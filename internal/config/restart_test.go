package config

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// restartKeys are the keys that changed only with a restart when the tag
// replaced internal/app's two hand-kept lists (app.secret_file was copied
// with the rest of app, unnamed).
var restartKeys = []string{
	"listen", "admin_listen",
	"server.read_header_timeout", "server.idle_timeout", "server.max_header_bytes",
	"upstreams.oapi", "upstreams.api",
	"app.key", "app.secret", "app.secret_file",
	"token.refresh_before", "token.endpoint",
	"log.format",
	"fleet.redis_url", "fleet.key_prefix", "fleet.timeout", "outbox.dir", "outbox.max_bytes",
}

// changed returns a copy of c with the leaf l set to another value.
func changed(t *testing.T, c Config, l leaf) Config {
	t.Helper()
	c.Routes = slices.Clone(c.Routes)
	f := reflect.ValueOf(&c).Elem().FieldByIndex(l.index)
	switch k := l.typ.Kind(); {
	case l.typ == durationType:
		f.SetInt(f.Int() + int64(time.Second))
	case k == reflect.String:
		f.SetString(f.String() + "x")
	case k >= reflect.Int && k <= reflect.Int64:
		f.SetInt(f.Int() + 1)
	case k >= reflect.Uint && k <= reflect.Uint64:
		f.SetUint(f.Uint() + 1)
	case k == reflect.Float64:
		f.SetFloat(f.Float() + 1)
	case l.typ == routesType:
		f.Set(reflect.ValueOf([]Route{{Path: "/x"}}))
	default:
		t.Fatalf("no change for %s of type %s: add one", l.key, l.typ)
	}
	return c
}

// Every key that was restart-only is still, and only those: a change to any
// other key, token.placeholder and retry.max_attempts included, applies live.
func TestRestartOnly(t *testing.T) {
	t.Parallel()
	var got []string
	for _, l := range leaves() {
		if l.restart {
			got = append(got, l.key)
		}
	}
	if diff := cmp.Diff(restartKeys, got); diff != "" {
		t.Errorf("keys tagged reload:\"restart\" (-want +got):\n%s", diff)
	}

	old := Default()
	old.App = App{Key: "k", Secret: "s"}
	for _, l := range leaves() {
		next := changed(t, old, l)
		restart := slices.Contains(restartKeys, l.key)
		names := RestartOnly(&old, &next)
		kept := next
		kept.Routes = slices.Clone(next.Routes)
		KeepRestartOnly(&kept, &old)
		switch {
		case restart && !slices.Equal(names, []string{l.key}):
			t.Errorf("a change to %s: RestartOnly = %q, want [%s]", l.key, names, l.key)
		case restart && !cmp.Equal(kept, old):
			t.Errorf("a change to %s: KeepRestartOnly did not keep the old value", l.key)
		case !restart && names != nil:
			t.Errorf("a change to live key %s: RestartOnly = %q, want none", l.key, names)
		case !restart && !cmp.Equal(kept, next):
			t.Errorf("a change to live key %s: KeepRestartOnly undid it", l.key)
		}
	}
	for _, live := range []string{"retry.max_attempts", "token.placeholder"} {
		if slices.Contains(got, live) {
			t.Errorf("%s is tagged restart-only; it applies live", live)
		}
	}
}

// The tag is read on leaves only: on a section it would do nothing.
func TestRestartTagOnLeavesOnly(t *testing.T) {
	t.Parallel()
	var walk func(t reflect.Type, prefix string)
	walk = func(typ reflect.Type, prefix string) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			name, _ := keyName(f)
			tag, tagged := f.Tag.Lookup("reload")
			if tagged && tag != "restart" {
				t.Errorf("%s: reload tag %q, want \"restart\"", joinKey(prefix, name), tag)
			}
			if f.Type.Kind() == reflect.Struct {
				if tagged {
					t.Errorf("%s: a section is tagged reload; tag its fields", joinKey(prefix, name))
				}
				walk(f.Type, joinKey(prefix, name))
			}
		}
	}
	walk(configType, "")
}

package config

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"time"
)

var (
	configType   = reflect.TypeFor[Config]()
	durationType = reflect.TypeFor[time.Duration]()
	secretType   = reflect.TypeFor[Secret]()
	byteSizeType = reflect.TypeFor[ByteSize]()
	routesType   = reflect.TypeFor[[]Route]()
)

// leaf is a key that holds a value rather than a section: a field of Config,
// at any depth through struct fields, that is not itself a struct. routes is
// one leaf, set as a whole.
type leaf struct {
	key     string // dotted, e.g. "retry.backoff.base"
	index   []int  // reflect field index path from Config
	typ     reflect.Type
	restart bool // tagged reload:"restart"
}

// leaves lists Config's leaves in struct order, named by their mapstructure
// tags, so that a new field is picked up without a list to maintain.
func leaves() []leaf {
	return appendLeaves(nil, configType, "", nil)
}

func appendLeaves(ls []leaf, t reflect.Type, prefix string, index []int) []leaf {
	for i := range t.NumField() {
		f := t.Field(i)
		name, ok := keyName(f)
		if !ok {
			continue
		}
		key := joinKey(prefix, name)
		idx := append(slices.Clone(index), i)
		if f.Type.Kind() == reflect.Struct {
			ls = appendLeaves(ls, f.Type, key, idx)
			continue
		}
		ls = append(ls, leaf{key: key, index: idx, typ: f.Type, restart: f.Tag.Get("reload") == "restart"})
	}
	return ls
}

// keyName is f's configuration key: its mapstructure tag, or its lower-cased
// name when untagged. Unexported fields and tag "-" have none.
func keyName(f reflect.StructField) (string, bool) {
	if !f.IsExported() {
		return "", false
	}
	name, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
	switch name {
	case "-":
		return "", false
	case "":
		return strings.ToLower(f.Name), true
	}
	return name, true
}

func joinKey(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// envName is the environment variable viper reads for key.
func envName(key string) string {
	return envPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// envFor names the environment variable that set key's value, or is "" when
// the value came from the file or the defaults. A leaf's variable, when set,
// wins over the file, so it set everything under the leaf too (routes[0].path
// from DINGPROXY_ROUTES).
func envFor(key string) string {
	for _, l := range leaves() {
		if key == l.key || strings.HasPrefix(key, l.key+".") || strings.HasPrefix(key, l.key+"[") {
			if name := envName(l.key); os.Getenv(name) != "" { // viper ignores empty variables too
				return name
			}
			return ""
		}
	}
	return ""
}

// keyOf turns the name the decoder gives a value into its key, and says
// whether the value is a map entry. The two are the same but for a map entry:
// the decoder writes headers[x-a], the key is headers.x-a. It follows name
// through Config's types to tell a map entry from a list index.
func keyOf(name string) (key string, entry bool) {
	t, i := configType, 0
	for i < len(name) {
		switch t.Kind() {
		case reflect.Pointer:
			t = t.Elem()
		case reflect.Struct:
			if name[i] == '.' {
				i++
			}
			j := strings.IndexAny(name[i:], ".[")
			if j < 0 {
				j = len(name) - i
			}
			f, ok := field(t, name[i:i+j])
			if !ok {
				return name, false
			}
			t, i = f.Type, i+j
		case reflect.Slice:
			j := strings.IndexByte(name[i:], ']')
			if name[i] != '[' || j < 0 {
				return name, false
			}
			t, i = t.Elem(), i+j+1
		case reflect.Map:
			// Config's map values are strings: the rest is "[key]".
			return name[:i] + "." + strings.TrimSuffix(name[i+1:], "]"), true
		default:
			return name, false
		}
	}
	return name, false
}

// field is t's field whose key is name.
func field(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		if n, ok := keyName(t.Field(i)); ok && n == name {
			return t.Field(i), true
		}
	}
	return reflect.StructField{}, false
}

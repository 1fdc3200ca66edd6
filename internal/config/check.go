package config

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

var (
	configType   = reflect.TypeFor[Config]()
	durationType = reflect.TypeFor[time.Duration]()
	secretType   = reflect.TypeFor[Secret]()
	routesType   = reflect.TypeFor[[]Route]()
)

// leaf is a key that holds a value rather than a section: a field of Config,
// at any depth through struct fields, that is not itself a struct. routes is
// one leaf, set as a whole.
type leaf struct {
	key   string // dotted, e.g. "retry.backoff.base"
	index []int  // reflect field index path from Config
	typ   reflect.Type
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
		ls = append(ls, leaf{key: key, index: idx, typ: f.Type})
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

// checker walks raw settings (YAML-decoded values, environment strings)
// against Config's types. It records every unknown key and every value that
// cannot become its field's type, and returns a cleaned copy that holds only
// the usable values, converted.
type checker struct {
	errs []*FieldError
	// bad are keys whose value was unusable. Unknown keys are not among them:
	// ignoring one changes no field.
	bad []string
	// from is appended to messages to say where a value came from.
	from string
}

func (c *checker) fail(key, format string, args ...any) {
	c.errs = append(c.errs, &FieldError{Key: key, Msg: fmt.Sprintf(format, args...) + c.from})
}

func (c *checker) failValue(key, format string, args ...any) {
	c.fail(key, format, args...)
	c.bad = append(c.bad, key)
}

// covers reports whether key is, or is inside, a key whose value was unusable.
func (c *checker) covers(key string) bool {
	for _, b := range c.bad {
		if key == b || strings.HasPrefix(key, b+".") || strings.HasPrefix(key, b+"[") {
			return true
		}
	}
	return false
}

// normalize returns raw with every map key lower-cased, as viper does, and
// map[any]any made map[string]any. Keys that differ only in case are an error:
// viper would keep one of them at random.
func (c *checker) normalize(key string, raw any) any {
	switch r := raw.(type) {
	case map[any]any:
		m := make(map[string]any, len(r))
		for k, v := range r {
			ks := fmt.Sprint(k)
			if _, dup := m[ks]; dup {
				c.failValue(joinKey(key, ks), "duplicate key")
				continue
			}
			m[ks] = v
		}
		return c.normalize(key, m)
	case map[string]any:
		m := make(map[string]any, len(r))
		for _, k := range sortedKeys(r) {
			lk := strings.ToLower(k)
			if _, dup := m[lk]; dup {
				c.failValue(joinKey(key, lk), "duplicate key (keys are case-insensitive)")
				continue
			}
			m[lk] = c.normalize(joinKey(key, lk), r[k])
		}
		return m
	case []any:
		l := make([]any, len(r))
		for i, v := range r {
			l[i] = c.normalize(fmt.Sprintf("%s[%d]", key, i), v)
		}
		return l
	}
	return raw
}

// value checks raw against t. It returns raw converted and true, or false
// when raw is unusable. A nil raw (YAML null) is usable and means "unset",
// except for a section.
func (c *checker) value(key string, raw any, t reflect.Type) (any, bool) {
	switch t.Kind() {
	case reflect.Pointer:
		if raw == nil {
			return nil, true
		}
		return c.value(key, raw, t.Elem())
	case reflect.Struct:
		return c.section(key, raw, t)
	case reflect.Slice:
		return c.list(key, raw, t)
	case reflect.Map:
		return c.dict(key, raw, t)
	}
	if raw == nil {
		return nil, true
	}
	v, msg := convert(raw, t)
	if msg != "" {
		c.failValue(key, "%s", msg)
		return nil, false
	}
	return v, true
}

// section checks a map against struct type t: known keys in field order, then
// unknown keys in sorted order.
func (c *checker) section(key string, raw any, t reflect.Type) (any, bool) {
	m, ok := raw.(map[string]any)
	if !ok {
		switch {
		case raw != nil:
			c.failValue(key, "cannot parse %s as map", describe(raw))
		case strings.HasSuffix(key, "]"):
			c.failValue(key, "must be a map, got null")
		default:
			// viper lets a null section hide the defaults and the
			// environment variables of every key inside it.
			c.failValue(key, "must be a map, got null (delete the key to use the defaults)")
		}
		return nil, false
	}
	out := make(map[string]any, len(m))
	known := make(map[string]bool, t.NumField())
	for i := range t.NumField() {
		name, ok := keyName(t.Field(i))
		if !ok {
			continue
		}
		known[name] = true
		raw, present := m[name]
		if !present {
			continue
		}
		if v, ok := c.value(joinKey(key, name), raw, t.Field(i).Type); ok && v != nil {
			out[name] = v
		}
	}
	for _, k := range sortedKeys(m) {
		if !known[k] {
			c.fail(joinKey(key, k), "unknown key")
		}
	}
	return out, true
}

// list checks a list against slice type t. A string is parsed as a YAML (or
// JSON) list first: that is how routes arrive from DINGPROXY_ROUTES.
func (c *checker) list(key string, raw any, t reflect.Type) (any, bool) {
	if s, ok := raw.(string); ok {
		parsed, err := parseList(s)
		if err != nil {
			c.failValue(key, "cannot parse %s as list: %v", describe(raw), err)
			return nil, false
		}
		raw = c.normalize(key, parsed)
	}
	if raw == nil {
		return nil, true
	}
	l, ok := raw.([]any)
	if !ok {
		c.failValue(key, "cannot parse %s as list", describe(raw))
		return nil, false
	}
	out := make([]any, len(l))
	for i, e := range l {
		v, ok := c.value(fmt.Sprintf("%s[%d]", key, i), e, t.Elem())
		if !ok || v == nil {
			// Keep the index, so that later errors name the right element.
			v = map[string]any{}
		}
		out[i] = v
	}
	return out, true
}

// dict checks a map against map type t, whose keys are strings.
func (c *checker) dict(key string, raw any, t reflect.Type) (any, bool) {
	if raw == nil {
		return nil, true
	}
	m, ok := raw.(map[string]any)
	if !ok {
		c.failValue(key, "cannot parse %s as map", describe(raw))
		return nil, false
	}
	out := make(map[string]any, len(m))
	for _, k := range sortedKeys(m) {
		if v, ok := c.value(joinKey(key, k), m[k], t.Elem()); ok && v != nil {
			out[k] = v
		}
	}
	return out, true
}

// parseList parses s as YAML; JSON is YAML too. Map keys are not yet
// lower-cased.
func parseList(s string) (any, error) {
	var v any
	if err := yaml.Unmarshal([]byte(s), &v); err != nil {
		return nil, err
	}
	return v, nil
}

// convert turns one YAML or environment value into t's type. It accepts what
// viper's decoder (mapstructure, weakly typed) would turn into the same value,
// and refuses what that decoder would silently get wrong: fractions and
// negative or overflowing numbers for integers, booleans for strings and
// numbers, numbers without a unit for durations. The message never shows a
// Secret's value.
func convert(raw any, t reflect.Type) (any, string) {
	what := describe(raw)
	if t == secretType {
		what = "value"
	}
	rv := reflect.ValueOf(raw)
	bad := func(typ string) (any, string) {
		return nil, fmt.Sprintf("cannot parse %s as %s", what, typ)
	}
	switch {
	case t == durationType:
		switch r := raw.(type) {
		case time.Duration:
			return r, ""
		case string:
			if d, err := time.ParseDuration(r); err == nil {
				return d, ""
			}
			if _, err := strconv.ParseFloat(r, 64); err == nil {
				return nil, fmt.Sprintf("cannot parse %s as duration (missing unit, e.g. %q)", what, r+"s")
			}
			return bad("duration")
		}
		if f, ok := number(rv); ok {
			if f == 0 {
				return time.Duration(0), ""
			}
			return nil, fmt.Sprintf("cannot parse %s as duration (missing unit, e.g. %q)", what, what+"s")
		}
		return bad("duration")

	case t.Kind() == reflect.String:
		switch rv.Kind() {
		case reflect.String:
			return rv.String(), ""
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			return strconv.FormatInt(rv.Int(), 10), ""
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			return strconv.FormatUint(rv.Uint(), 10), ""
		case reflect.Float32, reflect.Float64:
			return strconv.FormatFloat(rv.Float(), 'f', -1, 64), ""
		}
		return bad("string")

	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		out := reflect.New(t).Elem()
		var i int64
		switch rv.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			i = rv.Int()
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			if rv.Uint() > math.MaxInt64 {
				return bad("int")
			}
			i = int64(rv.Uint())
		case reflect.Float32, reflect.Float64:
			f := rv.Float()
			if f != math.Trunc(f) || f < math.MinInt64 || f >= math.MaxInt64 {
				return bad("int")
			}
			i = int64(f)
		case reflect.String:
			// Base 0, as mapstructure parses it, so both agree on "010".
			p, err := strconv.ParseInt(rv.String(), 0, t.Bits())
			if err != nil {
				return bad("int")
			}
			i = p
		default:
			return bad("int")
		}
		if out.OverflowInt(i) {
			return bad("int")
		}
		out.SetInt(i)
		return out.Interface(), ""

	case t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uint64:
		out := reflect.New(t).Elem()
		var u uint64
		switch rv.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			if rv.Int() < 0 {
				return bad("non-negative int")
			}
			u = uint64(rv.Int())
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			u = rv.Uint()
		case reflect.Float32, reflect.Float64:
			f := rv.Float()
			if f != math.Trunc(f) || f < 0 || f >= math.MaxUint64 {
				return bad("non-negative int")
			}
			u = uint64(f)
		case reflect.String:
			p, err := strconv.ParseUint(rv.String(), 0, t.Bits())
			if err != nil {
				return bad("non-negative int")
			}
			u = p
		default:
			return bad("non-negative int")
		}
		if out.OverflowUint(u) {
			return bad("non-negative int")
		}
		out.SetUint(u)
		return out.Interface(), ""

	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		if f, ok := number(rv); ok {
			return f, ""
		}
		if rv.Kind() == reflect.String {
			if f, err := strconv.ParseFloat(rv.String(), 64); err == nil {
				return f, ""
			}
		}
		return bad("number")

	case t.Kind() == reflect.Bool:
		switch rv.Kind() {
		case reflect.Bool:
			return rv.Bool(), ""
		case reflect.String:
			if b, err := strconv.ParseBool(rv.String()); err == nil {
				return b, ""
			}
		}
		return bad("bool")
	}
	return bad(t.String())
}

// number returns rv as a float64 when it holds a number.
func number(rv reflect.Value) (float64, bool) {
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return float64(rv.Int()), true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return float64(rv.Uint()), true
	case reflect.Float32, reflect.Float64:
		return rv.Float(), true
	}
	return 0, false
}

// describe shows a raw value in a message: strings quoted, lists and maps by
// kind only.
func describe(raw any) string {
	switch r := raw.(type) {
	case nil:
		return "null"
	case string:
		return strconv.Quote(r)
	case []any:
		return "a list"
	case map[string]any, map[any]any:
		return "a map"
	case float64:
		return strconv.FormatFloat(r, 'g', -1, 64)
	case time.Duration:
		return r.String()
	case time.Time: // YAML resolves an unquoted 2006-01-02 to a timestamp
		return r.Format(time.RFC3339Nano)
	}
	return fmt.Sprint(raw)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

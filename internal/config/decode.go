package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// yamlFile is the DecoderRegistry of Load's viper: the file is YAML whatever
// its name. It decodes as viper's own YAML codec does, then normalize makes
// the map what the decoder needs and records what viper would otherwise
// hide.
type yamlFile struct{ r *report }

func (f yamlFile) Decoder(string) (viper.Decoder, error) { return f, nil }

func (f yamlFile) Decode(b []byte, v map[string]any) error {
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return err
	}
	for k, val := range normalize("", m, false, f.r).(map[string]any) {
		v[k] = val
	}
	return nil
}

// null stands for a YAML null in what viper is given. Viper would drop a nil
// and use the default: right for a value, but for a section it would also
// hide the environment's variables for the keys inside it. decodeHook makes
// null "unset" for a value and an error for a section.
type null struct{}

// Outside lists, normalize escapes map keys for viper, which reads "a.b" as
// the path a, b and drops an empty map, so that neither an unknown key with a
// dot nor one holding {} is accepted silently. "%" and "." are written %25
// and %2e (viper lower-cases keys), and an empty map holds only the key "%",
// whose value is emptyMap. decodeHook drops that key; decodeError unescapes
// unknown keys.
type emptyMap struct{}

var (
	escaper   = strings.NewReplacer("%", "%25", ".", "%2e")
	unescaper = strings.NewReplacer("%25", "%", "%2e", ".")
)

// normalize returns raw with every map key lower-cased, as viper does,
// map[any]any made map[string]any, and nil made null. Keys that differ only
// in case are an error: viper would keep one of them at random.
func normalize(key string, raw any, inList bool, r *report) any {
	switch x := raw.(type) {
	case nil:
		return null{}
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, v := range x {
			ks := fmt.Sprint(k)
			if _, dup := m[ks]; dup {
				r.add(joinKey(key, ks), "duplicate key", true)
				continue
			}
			m[ks] = v
		}
		return normalize(key, m, inList, r)
	case map[string]any:
		m := make(map[string]any, len(x))
		for _, k := range sortedKeys(x) {
			lk := strings.ToLower(k)
			mk := lk
			if !inList {
				mk = escaper.Replace(lk)
			}
			if _, dup := m[mk]; dup {
				r.add(joinKey(key, lk), "duplicate key (keys are case-insensitive)", true)
				continue
			}
			m[mk] = normalize(joinKey(key, lk), x[k], inList, r)
		}
		if len(m) == 0 && !inList {
			m["%"] = emptyMap{}
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, v := range x {
			l[i] = normalize(fmt.Sprintf("%s[%d]", key, i), v, true, r)
		}
		return l
	}
	return raw
}

// unusable is decodeHook's verdict on a value no field of its type can hold:
// each problem keyed relative to the value ("" for the value itself), for the
// decoder to name.
type unusable []*FieldError

func (u unusable) Error() string {
	msgs := make([]string, len(u))
	for i, fe := range u {
		msgs[i] = fe.Error()
	}
	return strings.Join(msgs, "; ")
}

func refuse(format string, args ...any) error {
	return unusable{{Msg: fmt.Sprintf(format, args...)}}
}

// nullMap is a null section's message; for a section, not a list element,
// Load adds how to get the defaults instead.
const nullMap = "must be a map, got null"

// decodeHook turns each raw value (YAML-decoded, or an environment string)
// into its field's type with convert, which accepts what mapstructure would
// turn into the same value and refuses, in FieldError's words, what it would
// get wrong silently. It replaces viper's default hooks, whose
// comma-splitting of strings into slices would break the routes list.
//
// It also sets two targets itself. A pointer to a struct (a route's fallback)
// is allocated first, so that the decoder fills it in place and one unusable
// value in it leaves the rest, as elsewhere; the decoder would otherwise drop
// all of it. A list is cleared, so that it replaces the default list rather
// than being decoded over its elements.
func decodeHook(from, to reflect.Value) (any, error) {
	data, t := from.Interface(), to.Type()
	_, isNull := data.(null)
	switch t.Kind() {
	case reflect.Pointer: // decoded again as its element
		if isNull {
			return nil, nil
		}
		if _, ok := data.(map[string]any); ok && t.Elem().Kind() == reflect.Struct && to.CanSet() && to.IsNil() {
			to.Set(reflect.New(t.Elem()))
		}
		return data, nil
	case reflect.Struct:
		switch m := data.(type) {
		case map[string]any:
			return quoteUnknown(m, t), nil
		case null:
			return nil, refuse(nullMap)
		}
		return nil, refuse("cannot parse %s as map", describe(data))
	case reflect.Map:
		switch m := data.(type) {
		case null:
			return nil, nil
		case map[string]any:
			return m, nil // a null entry decodes to the zero value
		}
		return nil, refuse("cannot parse %s as map", describe(data))
	case reflect.Slice:
		return decodeList(data, to)
	}
	if isNull {
		return nil, nil
	}
	v, msg := convert(data, t)
	if msg != "" {
		return nil, refuse("%s", msg)
	}
	return v, nil
}

// quoteUnknown returns m with every key that names no field of struct type t
// quoted, so that decodeError can read each back from ErrorUnused's list of
// them, commas and all.
func quoteUnknown(m map[string]any, t reflect.Type) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if _, marker := v.(emptyMap); marker {
			continue
		}
		if _, known := field(t, k); !known {
			k = strconv.Quote(k)
		}
		out[k] = v
	}
	return out
}

// decodeList is decodeHook for a list: routes, from the file or, as YAML or
// JSON text, from DINGPROXY_ROUTES. Null leaves the default; text that holds
// no value means no list.
func decodeList(data any, to reflect.Value) (any, error) {
	if _, isNull := data.(null); isNull {
		return nil, nil
	}
	if s, ok := data.(string); ok {
		parsed, err := parseList(s)
		if err != nil {
			return nil, refuse("cannot parse %s as list: %v", describe(s), err)
		}
		if parsed == nil {
			setNil(to)
			return nil, nil
		}
		var r report
		data = normalize("", parsed, true, &r)
		if _, ok := data.([]any); !ok {
			r.add("", fmt.Sprintf("cannot parse %s as list", describe(data)), true)
		}
		if len(r.errs) > 0 {
			u := make(unusable, len(r.errs))
			for i, err := range r.errs {
				u[i] = err.(*FieldError)
			}
			return nil, u
		}
	}
	if l, ok := data.([]any); ok {
		setNil(to)
		return l, nil
	}
	return nil, refuse("cannot parse %s as list", describe(data))
}

// setNil sets the list at to to nil.
func setNil(to reflect.Value) {
	if to.CanSet() {
		to.Set(reflect.Zero(to.Type()))
	}
}

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

	case t == byteSizeType:
		if rv.Kind() == reflect.String {
			if n, ok := parseByteSize(rv.String()); ok {
				return ByteSize(n), ""
			}
			return nil, fmt.Sprintf("cannot parse %s as a size (an integer of bytes, or with a unit: B, KiB, MiB, GiB)", what)
		}
		v, msg := convert(raw, reflect.TypeFor[int64]())
		if msg != "" {
			return nil, msg
		}
		return ByteSize(v.(int64)), ""

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

// parseByteSize reads "512", "64KiB", "256MiB" or "1GiB" (a space before
// the unit is allowed): whole numbers of binary units only.
func parseByteSize(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil {
		return 0, false
	}
	var shift uint
	switch strings.TrimSpace(s[i:]) {
	case "", "B":
	case "KiB":
		shift = 10
	case "MiB":
		shift = 20
	case "GiB":
		shift = 30
	default:
		return 0, false
	}
	if n > math.MaxInt64>>shift {
		return 0, false
	}
	return n << shift, true
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
	case nil, null:
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

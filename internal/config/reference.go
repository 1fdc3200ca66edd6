package config

import (
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// KeyInfo describes one configuration key for the reference documentation
// (docs/configuration.md, written by tools/docgen).
type KeyInfo struct {
	// Key is the dotted key, e.g. "retry.backoff.base".
	Key string
	// Env is the environment variable that sets it, e.g.
	// "DINGPROXY_RETRY_BACKOFF_BASE".
	Env string
	// Type names the kind of value in a user's words: duration, integer,
	// number, string, secret, URL or list of routes.
	Type string
	// Default is the built-in value as a user writes it in YAML or in the
	// environment variable: "10m", "0.2", "oauth2"; routes as a YAML flow
	// list. An empty string is `""` (YAML's empty string; an empty
	// variable counts as unset).
	Default string
	// Restart says the key is tagged reload:"restart": a reload keeps its
	// running value and logs restart_required. Every other key applies
	// live, to requests that start after the reload.
	Restart bool
}

// Reference lists every configuration key in Config's field order, read
// from the struct tags and Default, so that it cannot disagree with what
// Load accepts.
func Reference() []KeyInfo {
	def := reflect.ValueOf(Default())
	ls := leaves()
	out := make([]KeyInfo, 0, len(ls))
	for _, l := range ls {
		out = append(out, KeyInfo{
			Key:     l.key,
			Env:     envName(l.key),
			Type:    typeName(l.typ),
			Default: flow(def.FieldByIndex(l.index)),
			Restart: l.restart,
		})
	}
	return out
}

// typeName is t's kind of value in a user's words.
func typeName(t reflect.Type) string {
	switch {
	case t == durationType:
		return "duration"
	case t == secretType:
		return "secret"
	case t == reflect.TypeFor[RedisURL]():
		return "URL"
	case t == routesType:
		return "list of routes"
	case t == byteSizeType:
		return "size"
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Bool:
		return "boolean"
	}
	return "string"
}

// flow writes v as YAML flow text: scalars as a user writes them, structs
// as {key: value} with their zero fields left out, lists as [a, b].
func flow(v reflect.Value) string {
	if v.Type() == durationType {
		return shortDuration(time.Duration(v.Int()))
	}
	if v.Type() == byteSizeType {
		return ByteSize(v.Int()).String()
	}
	switch v.Kind() {
	case reflect.String:
		return scalar(v.String())
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strconv.FormatUint(v.Uint(), 10)
	case reflect.Float32, reflect.Float64:
		return strconv.FormatFloat(v.Float(), 'g', -1, 64)
	case reflect.Pointer:
		if v.IsNil() {
			return "~"
		}
		return flow(v.Elem())
	case reflect.Slice:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = flow(v.Index(i))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case reflect.Map:
		keys := make([]string, 0, v.Len())
		for _, k := range v.MapKeys() {
			keys = append(keys, k.String())
		}
		slices.Sort(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = scalar(k) + ": " + flow(v.MapIndex(reflect.ValueOf(k)))
		}
		return "{" + strings.Join(parts, ", ") + "}"
	case reflect.Struct:
		var parts []string
		for i := range v.NumField() {
			name, ok := keyName(v.Type().Field(i))
			if !ok || v.Field(i).IsZero() {
				continue
			}
			parts = append(parts, name+": "+flow(v.Field(i)))
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	return scalar(v.String())
}

// shortDuration is d as a user writes it: 10m rather than 10m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// scalar is s as a YAML plain scalar when it reads back as the same string
// (in a flow list or map too), else single-quoted.
func scalar(s string) string {
	plain := s != "" && s == strings.TrimSpace(s) &&
		!strings.ContainsAny(s[:1], "-?:,[]{}#&*!|>'\"%@`~") &&
		!strings.ContainsAny(s, ",[]{}\n\t") &&
		!strings.Contains(s, ": ") && !strings.Contains(s, " #") && !strings.HasSuffix(s, ":")
	if plain {
		switch strings.ToLower(s) {
		case "true", "false", "yes", "no", "on", "off", "y", "n", "null":
			plain = false
		}
		if _, err := strconv.ParseFloat(s, 64); err == nil {
			plain = false
		}
	}
	switch {
	case plain:
		return s
	case s == "":
		return `""`
	}
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

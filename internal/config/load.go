package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/viper"
)

// envPrefix starts every environment variable's name: retry.max_attempts is
// DINGPROXY_RETRY_MAX_ATTEMPTS.
const envPrefix = "DINGPROXY"

// Load reads the YAML file at path over the built-in defaults (Default), then
// the environment over both, and validates the result. With path "" it uses
// only the defaults and the environment. The file is YAML whatever its name.
//
// Every key can come from the environment as DINGPROXY_ + the key upper-cased
// with dots as underscores (retry.max_attempts → DINGPROXY_RETRY_MAX_ATTEMPTS);
// an empty variable counts as unset. DINGPROXY_ROUTES holds the whole routes
// list as YAML or JSON. Map keys are case-insensitive and arrive lower-cased,
// fallback header names included. A YAML null leaf (key with no value) means
// the default; a null section is an error, because it would hide the
// defaults and environment variables of the keys inside it.
//
// A non-empty DINGPROXY_* variable that is no key's is refused as an unknown
// key in the file is, an *EnvError naming it and, when one is close, the
// variable meant (DINGPROXY_RETRY_MAX_ATTEMPS: did you mean
// DINGPROXY_RETRY_MAX_ATTEMPTS?). The variables Kubernetes sets for a Service
// named dingproxy-* (DINGPROXY_REDIS_SERVICE_HOST, DINGPROXY_REDIS_PORT=
// tcp://...) are not refused.
//
// When the file cannot be read or is not YAML, Load returns that error alone.
// Otherwise it reports every problem at once: unknown keys, values of the
// wrong type, unknown variables and what Validate finds, each a *FieldError
// naming the key or an *EnvError naming the variable, joined with
// errors.Join. The file's problems come first, then the environment's (their
// messages end "(from DINGPROXY_...)"), then the unknown variables, then
// Validate's for the keys whose own value was usable. The error never
// contains app.secret's value, nor any unknown variable's.
//
// One viper instance does the reading, in one pass: the defaults are set on
// it, it reads the file through yamlFile and the environment by AutomaticEnv,
// and UnmarshalExact decodes the merged settings with decodeHook, which
// rejects every value the field cannot hold, in the words FieldError uses.
func Load(path string) (*Config, error) {
	var r report
	v := viper.NewWithOptions(viper.WithDecoderRegistry(yamlFile{&r}))
	setDefaults(v)
	v.SetEnvPrefix(envPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	if path != "" {
		v.SetConfigFile(path)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			var pe viper.ConfigParseError
			if errors.As(err, &pe) {
				return nil, fmt.Errorf("config: %s: %w", path, pe.Unwrap())
			}
			return nil, fmt.Errorf("config: %w", err) // *fs.PathError names path
		}
	}
	fileProblems := len(r.errs) // the file's duplicate keys

	// Decoding over the defaults leaves a field whose value is unusable at
	// its default, so Validate judges the rest as it would be.
	cfg := Default()
	if err := v.UnmarshalExact(&cfg, viper.DecodeHook(decodeHook)); err != nil {
		r.decodeErrors(err)
	}

	// The file's problems first, then the environment's.
	var errs, fromEnv []error
	for i, err := range r.errs {
		if fe, ok := err.(*FieldError); ok && i >= fileProblems {
			if name := envFor(fe.Key); name != "" {
				fe.Msg += " (from " + name + ")"
				fromEnv = append(fromEnv, fe)
				continue
			}
		}
		errs = append(errs, err)
	}
	errs = append(errs, fromEnv...)
	errs = append(errs, unknownEnv(os.Environ())...)
	if len(errs) == 0 {
		if err := cfg.readSecretFile(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, fe := range cfg.validate() {
		if !r.covers(fe.Key) {
			errs = append(errs, fe)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &cfg, nil
}

// report collects Load's problems in the order found.
type report struct {
	errs []error // *FieldError, but for a decoder failure it cannot name
	// bad are keys whose value was unusable: Validate's findings at or under
	// them are not reported again. Unknown keys are not among them: ignoring
	// one changes no field.
	bad []string
}

func (r *report) add(key, msg string, unusable bool) {
	r.errs = append(r.errs, &FieldError{Key: key, Msg: msg})
	if unusable {
		r.bad = append(r.bad, key)
	}
}

// covers reports whether key is, or is inside, a key whose value was unusable.
func (r *report) covers(key string) bool {
	for _, b := range r.bad {
		if key == b || strings.HasPrefix(key, b+".") || strings.HasPrefix(key, b+"[") {
			return true
		}
	}
	return false
}

// decodeErrors adds what UnmarshalExact returned: a tree of errors.Join in
// decoding order (a section's fields in struct order, then its unknown keys,
// sorted), whose leaves are mapstructure's *DecodeError, each naming a value
// and holding decodeHook's verdict on it or mapstructure's own complaint.
func (r *report) decodeErrors(err error) {
	switch e := err.(type) {
	case interface{ Unwrap() []error }:
		errs := e.Unwrap()
		if keys, ok := entryKeys(errs); ok {
			// A map's entries, which the decoder visits in random order.
			errs = slices.Clone(errs)
			slices.SortStableFunc(errs, func(a, b error) int { return strings.Compare(keys[a], keys[b]) })
		}
		for _, err := range errs {
			r.decodeErrors(err)
		}
		return
	case named:
		key, _ := keyOf(e.Name())
		r.decodeError(key, e.Unwrap())
		return
	case interface{ Unwrap() error }:
		if inner := e.Unwrap(); inner != nil {
			r.decodeErrors(inner)
			return
		}
	}
	r.errs = append(r.errs, fmt.Errorf("config: decode: %w", err))
}

// named is mapstructure's *DecodeError.
type named interface {
	Name() string
	Unwrap() error
}

// entryKeys returns the keys of errs when every one is a map entry's.
func entryKeys(errs []error) (map[error]string, bool) {
	keys := make(map[error]string, len(errs))
	for _, err := range errs {
		e, ok := err.(named)
		if !ok {
			return nil, false
		}
		key, entry := keyOf(e.Name())
		if !entry {
			return nil, false
		}
		keys[err] = key
	}
	return keys, true
}

// decodeError adds the problems with the value at key.
func (r *report) decodeError(key string, err error) {
	var u unusable
	if errors.As(err, &u) {
		for _, fe := range u {
			k := key
			switch {
			case strings.HasPrefix(fe.Key, "["):
				k += fe.Key
			case fe.Key != "":
				k = joinKey(key, fe.Key)
			}
			msg := fe.Msg
			if msg == nullMap && !strings.HasSuffix(k, "]") {
				msg += " (delete the key to use the defaults)"
			}
			r.add(k, msg, true)
		}
		return
	}
	// ErrorUnused's report on a section: its unknown keys, which decodeHook
	// quoted so that they read back however they are spelt.
	if list, ok := strings.CutPrefix(err.Error(), "has invalid keys: "); ok {
		var keys []string
		for list != "" {
			q, err := strconv.QuotedPrefix(list)
			if err != nil {
				keys = append(keys, list)
				break
			}
			k, _ := strconv.Unquote(q)
			if !strings.Contains(key, "[") { // a section's key, escaped
				k = unescaper.Replace(k)
			}
			keys = append(keys, k)
			list = strings.TrimPrefix(list[len(q):], ", ")
		}
		slices.Sort(keys)
		for _, k := range keys {
			r.add(joinKey(key, k), "unknown key", false)
		}
		return
	}
	r.add(key, err.Error(), true)
}

// readSecretFile reads app.secret_file into app.secret. Its errors name the
// file, never its content.
func (c *Config) readSecretFile() error {
	path := c.App.SecretFile
	if path == "" {
		return nil
	}
	if c.App.Secret != "" {
		return &FieldError{Key: "app.secret_file", Msg: "set app.secret or app.secret_file, not both"}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is in the message already
		}
		return &FieldError{Key: "app.secret_file", Msg: fmt.Sprintf("cannot read %q: %v", path, err)}
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if s == "" || strings.ContainsAny(s, "\r\n") {
		return &FieldError{Key: "app.secret_file", Msg: fmt.Sprintf("%q must hold the secret on one line", path)}
	}
	c.App.Secret = Secret(s)
	return nil
}

// setDefaults seeds v with every leaf of Default. AutomaticEnv only reads
// variables for keys that viper already knows: without a default,
// DINGPROXY_APP_SECRET would be ignored when no file names app.secret.
func setDefaults(v *viper.Viper) {
	def := reflect.ValueOf(Default())
	for _, l := range leaves() {
		v.SetDefault(l.key, toRaw(def.FieldByIndex(l.index)))
	}
}

// toRaw turns a Config value into what YAML would decode to: maps keyed by
// mapstructure tags, lists, and scalars. Nil pointers and maps are left out.
func toRaw(v reflect.Value) any {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return toRaw(v.Elem())
	case reflect.Struct:
		m := map[string]any{}
		for i := range v.NumField() {
			name, ok := keyName(v.Type().Field(i))
			if !ok {
				continue
			}
			if r := toRaw(v.Field(i)); r != nil {
				m[name] = r
			}
		}
		return m
	case reflect.Slice:
		if v.IsNil() {
			return nil
		}
		l := make([]any, v.Len())
		for i := range l {
			l[i] = toRaw(v.Index(i))
		}
		return l
	case reflect.Map:
		if v.IsNil() {
			return nil
		}
		m := map[string]any{}
		for it := v.MapRange(); it.Next(); {
			m[strings.ToLower(it.Key().String())] = toRaw(it.Value())
		}
		return m
	case reflect.String:
		return v.String() // a Secret becomes a plain string
	}
	return v.Interface()
}

package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
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
// When the file cannot be read or is not YAML, Load returns that error alone.
// Otherwise it reports every problem at once: unknown keys, values of the
// wrong type, and what Validate finds, each a *FieldError naming the key,
// joined with errors.Join. The error never contains app.secret's value.
func Load(path string) (*Config, error) {
	var data []byte
	file := map[string]any{}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err) // *fs.PathError names path
		}
		if err := yaml.Unmarshal(b, &file); err != nil {
			return nil, fmt.Errorf("config: %s: %w", path, err)
		}
		if file == nil { // an empty document
			file = map[string]any{}
		}
		data = b
	}

	// First our own walk, which names keys and types in its messages where
	// viper's decoder would not, and refuses values it would get wrong.
	var fc checker
	cleanFile, _ := fc.section("", fc.normalize("", file), configType)
	ec, cleanEnv := checkEnv()
	if len(fc.errs) > 0 || len(ec.errs) > 0 {
		return nil, loadErrors(&fc, ec, cleanFile.(map[string]any), cleanEnv)
	}

	v := viper.New()
	setDefaults(v)
	v.SetEnvPrefix(envPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	if path != "" {
		v.SetConfigFile(path)
		v.SetConfigType("yaml")
		// The bytes already read: the file may change in between.
		if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
			return nil, fmt.Errorf("config: %s: %w", path, err)
		}
	}
	var cfg Config
	if err := v.UnmarshalExact(&cfg, viper.DecodeHook(decodeHook)); err != nil {
		return nil, fmt.Errorf("config: decode: %w", err)
	}
	if err := cfg.readSecretFile(); err != nil {
		return nil, errors.Join(err, cfg.Validate())
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
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

// checkEnv checks every leaf's environment variable, and returns the usable
// values by key.
func checkEnv() (*checker, map[string]any) {
	all := &checker{}
	clean := map[string]any{}
	for _, l := range leaves() {
		name := envName(l.key)
		s := os.Getenv(name)
		if s == "" {
			continue // viper ignores empty variables too
		}
		c := checker{from: " (from " + name + ")"}
		v, ok := c.value(l.key, s, l.typ)
		if ok && v != nil {
			clean[l.key] = v
		}
		all.errs = append(all.errs, c.errs...)
		all.bad = append(all.bad, c.bad...)
	}
	return all, clean
}

// loadErrors reports the file's and the environment's problems, then what
// Validate finds in a configuration made of the usable values only. A key
// whose own value was unusable is not reported twice.
func loadErrors(fc, ec *checker, file, env map[string]any) error {
	var errs []error
	for _, e := range fc.errs {
		errs = append(errs, e)
	}
	for _, e := range ec.errs {
		errs = append(errs, e)
	}
	w := viper.New()
	setDefaults(w)
	if err := w.MergeConfigMap(file); err != nil {
		return errors.Join(append(errs, fmt.Errorf("config: %w", err))...)
	}
	for k, val := range env {
		w.Set(k, val) // the environment overrides the file
	}
	var cfg Config
	if err := w.UnmarshalExact(&cfg, viper.DecodeHook(decodeHook)); err != nil {
		return errors.Join(append(errs, fmt.Errorf("config: decode: %w", err))...)
	}
	for _, e := range cfg.validate() {
		if !fc.covers(e.Key) && !ec.covers(e.Key) {
			errs = append(errs, e)
		}
	}
	return errors.Join(errs...)
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

// decodeHook converts strings for viper's decoder: durations ("100ms") and the
// routes list (DINGPROXY_ROUTES holds YAML or JSON). It replaces viper's
// default hooks, whose comma-splitting of strings into slices would break the
// routes list.
func decodeHook(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.String {
		return data, nil
	}
	s := reflect.ValueOf(data).String()
	switch to {
	case durationType:
		return time.ParseDuration(s)
	case routesType:
		l, err := parseList(s)
		if err != nil {
			return nil, err
		}
		var c checker
		return c.normalize("", l), nil
	}
	return data, nil
}

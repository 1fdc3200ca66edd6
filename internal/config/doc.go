// Package config is dingproxy's configuration: the Config types that mirror
// the YAML schema users write (docs/configuration.md), the built-in defaults
// (Default), Load, Validate, Watch and Reference.
//
// Load reads in one pass, with a viper instance of its own: the defaults are
// set on it, it reads the YAML file and the DINGPROXY_* environment over them,
// and UnmarshalExact decodes the merged settings into a Config, rejecting
// unknown keys. Its decode hook converts each value to its field's type
// (durations, the Secret, the routes list given as YAML or JSON text) and
// refuses, in FieldError's words, what the field cannot hold. A DINGPROXY_*
// variable that is no key's is refused too (an *EnvError), as an unknown key
// in the file is. Then Validate checks each value and the rules between
// values. Every problem is reported at once, each a *FieldError naming the
// key or an *EnvError naming the variable; cmd/dingproxy exits with status 2
// on them at start.
//
// The reload:"restart" tag on a Config field marks a key that changes only
// with a restart; RestartOnly and KeepRestartOnly read it for a reload. Watch
// calls back when the file's content changes.
//
// Reference lists every key with its environment variable, type, default
// and whether a reload applies it live; tools/docgen writes it into
// docs/configuration.md.
//
// It does not apply a configuration or hold the running one: internal/app
// does, and Load returns a new value each call and keeps no state. Of
// dingproxy's packages it imports only internal/dingtalk, which holds
// DingTalk's wire facts and does no I/O: Validate asks its catalogue
// (dingtalk.Describe) whether a route given a cache is a read; and
// internal/redisurl, which imports none of them and only parses: Validate
// reads fleet.redis_url as the fleet does.
package config

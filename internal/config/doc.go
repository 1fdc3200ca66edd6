// Package config is dingproxy's configuration: the Config types that mirror
// SPEC's YAML schema, the built-in defaults (Default), Load, which reads a
// YAML file and DINGPROXY_* environment variables over those defaults with
// its own viper instance, and Validate, which reports every problem at once,
// each as a *FieldError naming the YAML key (exit status 2 at start). Only
// cmd/dingproxy imports it and turns a Config into each package's options.
//
// It does not watch the file, apply a configuration, or hold the running one:
// Load returns a new value each call and keeps no state. Live reload (validate,
// then swap atomically, keep the old policy on failure) comes later, built on
// Load. It imports no other dingproxy package.
package config

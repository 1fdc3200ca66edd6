package config

import "reflect"

// RestartOnly names, in Config's field order, the keys tagged
// reload:"restart" whose values differ between old and next: the settings a
// reload from old to next cannot apply.
func RestartOnly(old, next *Config) []string {
	o, n := reflect.ValueOf(old).Elem(), reflect.ValueOf(next).Elem()
	var keys []string
	for _, l := range leaves() {
		if l.restart && !reflect.DeepEqual(o.FieldByIndex(l.index).Interface(), n.FieldByIndex(l.index).Interface()) {
			keys = append(keys, l.key)
		}
	}
	return keys
}

// KeepRestartOnly copies every value tagged reload:"restart" from old into
// next, so that next says what is really in force after a reload.
func KeepRestartOnly(next, old *Config) {
	o, n := reflect.ValueOf(old).Elem(), reflect.ValueOf(next).Elem()
	for _, l := range leaves() {
		if l.restart {
			n.FieldByIndex(l.index).Set(o.FieldByIndex(l.index))
		}
	}
}

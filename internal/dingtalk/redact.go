package dingtalk

import (
	"errors"
	"net/url"
	"strings"
)

// Redacted stands in for a secret in anything printed.
const Redacted = "REDACTED"

// RedactError returns err with the query of any *url.Error in it removed, since
// Go prints a *url.Error with its whole URL, query and all. Wrappers around
// the outermost *url.Error are dropped: their text includes its URL.
func RedactError(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	c := *ue
	if u, perr := url.Parse(ue.URL); perr == nil {
		c.URL = RedactURL(u)
	} else {
		c.URL = "(url redacted)"
	}
	// A *url.Error can wrap another (a transport built on an http.Client).
	c.Err = RedactError(ue.Err)
	return &c
}

// RedactURL prints u without its query or user info.
func RedactURL(u *url.URL) string {
	c := *u
	c.User = nil
	if c.RawQuery != "" {
		c.RawQuery = Redacted
	}
	c.Fragment, c.RawFragment = "", ""
	return c.String()
}

// RedactQueryValues replaces the value after each key= in free text (a
// panic's message, say), up to a delimiter, with Redacted.
func RedactQueryValues(s string, keys ...string) string {
	for _, key := range keys {
		key += "="
		var b strings.Builder
		for {
			i := strings.Index(s, key)
			if i < 0 {
				b.WriteString(s)
				break
			}
			b.WriteString(s[:i+len(key)])
			s = s[i+len(key):]
			end := strings.IndexAny(s, "& \t\r\n\"'<>")
			if end < 0 {
				end = len(s)
			}
			if end > 0 {
				b.WriteString(Redacted)
			}
			s = s[end:]
		}
		s = b.String()
	}
	return s
}

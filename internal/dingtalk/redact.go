package dingtalk

import (
	"errors"
	"net/url"
)

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
		c.RawQuery = "REDACTED"
	}
	c.Fragment, c.RawFragment = "", ""
	return c.String()
}

// Package redisurl reads fleet.redis_url: one Redis server, a Redis Cluster
// or a master behind Redis Sentinel, each written as one URL and parsed by
// go-redis's own helpers (redis.ParseURL, redis.ParseClusterURL,
// redis.ParseFailoverURL).
//
// The forms, told apart by the scheme and the query:
//
//	redis://[user:password@]host:port[/db]         one server (rediss:// for TLS)
//	redis://[user:password@]h1:p1?addr=h2:p2&...   a cluster: any addr= names more seeds
//	redis+cluster://[user:password@]host:port      a cluster from one seed (a managed
//	                                               configuration endpoint; rediss+cluster:// for TLS)
//	redis://[user:password@]s1:26379[/db]?master_name=mymaster[&addr=s2:26379...]
//	                                               Sentinel: the user and password in the URL
//	                                               are the sentinels'; the master's are the
//	                                               query's username= and password=
//
// A cluster has database 0 only: a cluster form naming another fails. The
// errors never quote the URL, nor any value in it: it may hold a password.
//
// It imports none of dingproxy's packages (internal/config imports it) and
// only parses.
package redisurl

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Form is how the proxy reaches Redis.
type Form int

const (
	// Single is one server (or a proxy in front of many that speaks as
	// one).
	Single Form = iota
	// Cluster is a Redis Cluster: go-redis follows the slots.
	Cluster
	// Sentinel is a master found through Redis Sentinel.
	Sentinel
)

func (f Form) String() string {
	switch f {
	case Cluster:
		return "cluster"
	case Sentinel:
		return "sentinel"
	}
	return "single"
}

// Target is a parsed fleet.redis_url: the options of its form, the others
// nil.
type Target struct {
	Form     Form
	Single   *redis.Options        // Form Single
	Cluster  *redis.ClusterOptions // Form Cluster
	Failover *redis.FailoverOptions
}

// The schemes that name a cluster from the scheme alone, and the scheme
// go-redis reads for each.
var clusterSchemes = map[string]string{"redis+cluster": "redis", "rediss+cluster": "rediss"}

// Parse reads raw. Its errors say what is wrong without quoting raw.
func Parse(raw string) (*Target, error) {
	if !strings.Contains(raw, "://") {
		return nil, errors.New("has no scheme: write redis://host:port/0 (or rediss:// for TLS)")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Opaque != "" {
		return nil, errors.New("does not parse as a URL")
	}
	scheme, cluster := u.Scheme, false
	switch u.Scheme {
	case "redis", "rediss":
	case "redis+cluster", "rediss+cluster":
		scheme, cluster = clusterSchemes[u.Scheme], true
	default:
		return nil, fmt.Errorf("must be a redis://, rediss://, redis+cluster:// or rediss+cluster:// URL, got scheme %q", u.Scheme)
	}
	if u.Hostname() == "" {
		return nil, errors.New("must name a host")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, errors.New("its query (after ?) does not parse")
	}
	for i, a := range q["addr"] {
		if h, p, err := net.SplitHostPort(a); err != nil || h == "" || !isPort(p) {
			return nil, fmt.Errorf("addr parameter %d is not host:port", i+1)
		}
	}
	db := strings.Trim(u.Path, "/")
	if db != "" {
		if n, err := strconv.Atoi(db); err != nil || n < 0 {
			return nil, errors.New("must end in a database number (/0)")
		}
	}
	_, sentinel := q["master_name"]
	switch {
	case sentinel && cluster:
		return nil, fmt.Errorf("master_name= (Sentinel) does not go with the %s:// scheme (a cluster): use %s://", u.Scheme, scheme)
	case sentinel:
		if q.Get("master_name") == "" {
			return nil, errors.New("master_name= must name the master")
		}
		o, err := redis.ParseFailoverURL(raw)
		if err != nil {
			return nil, optionError(scheme, u.RawQuery, Sentinel)
		}
		return &Target{Form: Sentinel, Failover: o}, nil
	case cluster || len(q["addr"]) > 0:
		if db != "" && db != "0" || q.Get("db") != "" && q.Get("db") != "0" {
			return nil, errors.New("names a database other than 0, which a Redis Cluster does not have: end it in /0 or no database")
		}
		c := *u
		c.Scheme, c.Path, c.RawPath = scheme, "", ""
		q.Del("db") // 0, or not there: go-redis's cluster options have none
		c.RawQuery = q.Encode()
		o, err := redis.ParseClusterURL(c.String())
		if err != nil {
			return nil, optionError(scheme, u.RawQuery, Cluster)
		}
		return &Target{Form: Cluster, Cluster: o}, nil
	}
	o, err := redis.ParseURL(raw)
	if err != nil {
		return nil, optionError(scheme, u.RawQuery, Single)
	}
	return &Target{Form: Single, Single: o}, nil
}

func isPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n > 0 && n < 65536
}

// optionError finds the query parameter that go-redis refused, parsing
// each alone in turn. It names one whose name go-redis knows (its value
// does not parse); one it does not know is told by its place, since its
// name could be anything pasted there, a password too.
func optionError(scheme, rawQuery string, form Form) error {
	n := 0
	for pair := range strings.SplitSeq(rawQuery, "&") {
		if pair == "" {
			continue
		}
		n++
		k, v, _ := strings.Cut(pair, "=")
		k, _ = url.QueryUnescape(k) // the whole query parsed: these do too
		v, _ = url.QueryUnescape(v)
		if k == "addr" || k == "master_name" || k == "db" && form == Cluster {
			continue // checked before
		}
		if parses(scheme, form, k, v) {
			continue
		}
		if parses(scheme, form, k, "") {
			return fmt.Errorf("query parameter %q: its value does not parse", k)
		}
		return fmt.Errorf("query parameter %d is not an option of a %s URL", n, form.what())
	}
	return fmt.Errorf("does not parse as a %s URL", form.what())
}

// parses says whether go-redis reads a URL of form with the one query
// parameter k=v.
func parses(scheme string, form Form, k, v string) bool {
	one := url.Values{k: {v}}
	var err error
	switch form {
	case Sentinel:
		one.Set("master_name", "m")
		_, err = redis.ParseFailoverURL(scheme + "://localhost:26379?" + one.Encode())
	case Cluster:
		_, err = redis.ParseClusterURL(scheme + "://localhost:6379?" + one.Encode())
	default:
		_, err = redis.ParseURL(scheme + "://localhost:6379?" + one.Encode())
	}
	return err == nil
}

func (f Form) what() string {
	switch f {
	case Cluster:
		return "Redis Cluster"
	case Sentinel:
		return "Sentinel"
	}
	return "Redis"
}

package token

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const (
	testKey    = "dingKEY4leakcheck"
	testSecret = "S3cr3t+value/&=that-must-not-leak"
	testToken  = "tok-abcdef0123456789-must-not-be-logged"
)

// leaks lists what must never appear in an error: the secret (raw and as
// the query encodes it), the key and the query names.
var leaks = []string{testSecret, url.QueryEscape(testSecret), testKey, "appsecret", "appkey"}

func checkNoLeak(t *testing.T, what, s string) {
	t.Helper()
	for _, l := range leaks {
		if strings.Contains(s, l) {
			t.Errorf("%s %q contains %q", what, s, l)
		}
	}
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func jsonResponse(status int, body string) *http.Response {
	return &http.Response{
		StatusCode: status,
		Header:     http.Header{"Content-Type": {"application/json"}},
		Body:       io.NopCloser(strings.NewReader(body)),
	}
}

// newServer starts a loopback server with h and returns its URL and a
// transport to reach it; both are cleaned up with t.
func newServer(t *testing.T, h http.HandlerFunc) (string, *http.Transport) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return srv.URL, tr
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func fetchCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type endpoint struct {
	name string
	new  func(rt http.RoundTripper, base, key, secret string) Fetcher
	// ok answers with token and the lifetime field set to ttl (raw JSON; "" leaves it out).
	ok func(token, ttl string) string
}

var endpoints = []endpoint{
	{
		name: "oauth2",
		new:  NewOAuth2Fetcher,
		ok: func(tok, ttl string) string {
			if ttl == "" {
				return fmt.Sprintf(`{"accessToken":%q}`, tok)
			}
			return fmt.Sprintf(`{"accessToken":%q,"expireIn":%s}`, tok, ttl)
		},
	},
	{
		name: "gettoken",
		new:  NewGetTokenFetcher,
		ok: func(tok, ttl string) string {
			if ttl == "" {
				return fmt.Sprintf(`{"errcode":0,"errmsg":"ok","access_token":%q}`, tok)
			}
			return fmt.Sprintf(`{"errcode":0,"errmsg":"ok","access_token":%q,"expires_in":%s}`, tok, ttl)
		},
	},
}

func TestOAuth2FetcherRequest(t *testing.T) {
	type seen struct {
		Method, Path, RawQuery, ContentType string
		Body                                map[string]any
	}
	var got seen
	base, tr := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		got = seen{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, ContentType: r.Header.Get("Content-Type")}
		if err := json.NewDecoder(r.Body).Decode(&got.Body); err != nil {
			t.Errorf("request body: %v", err)
		}
		io.WriteString(w, `{"accessToken":"at-1","expireIn":7200}`)
	})
	for _, b := range []string{base, base + "/"} {
		tok, ttl, err := NewOAuth2Fetcher(tr, b, testKey, testSecret).Fetch(fetchCtx(t))
		if err != nil || tok != "at-1" || ttl != 7200*time.Second {
			t.Errorf("fetch(base %q) = %q, %v, %v, want %q, 2h0m0s, nil", b, tok, ttl, err, "at-1")
		}
		want := seen{
			Method: http.MethodPost, Path: "/v1.0/oauth2/accessToken", ContentType: "application/json",
			Body: map[string]any{"appKey": testKey, "appSecret": testSecret},
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("request (base %q) (-want +got):\n%s", b, diff)
		}
	}
}

func TestGetTokenFetcherRequest(t *testing.T) {
	type seen struct {
		Method, Path string
		Query        url.Values
		BodyLen      int
	}
	var got seen
	base, tr := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got = seen{Method: r.Method, Path: r.URL.Path, Query: r.URL.Query(), BodyLen: len(body)}
		io.WriteString(w, `{"errcode":0,"errmsg":"ok","access_token":"gt-1","expires_in":3600}`)
	})
	for _, b := range []string{base, base + "/"} {
		tok, ttl, err := NewGetTokenFetcher(tr, b, testKey, testSecret).Fetch(fetchCtx(t))
		if err != nil || tok != "gt-1" || ttl != time.Hour {
			t.Errorf("fetch(base %q) = %q, %v, %v, want %q, 1h0m0s, nil", b, tok, ttl, err, "gt-1")
		}
		want := seen{
			Method: http.MethodGet, Path: "/gettoken",
			Query: url.Values{"appkey": {testKey}, "appsecret": {testSecret}},
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("request (base %q) (-want +got):\n%s", b, diff)
		}
	}
}

func TestFetcherLifetime(t *testing.T) {
	tests := []struct {
		name string
		ttl  string // raw JSON; "" leaves the field out
		want time.Duration
	}{
		{name: "given", ttl: "3600", want: time.Hour},
		{name: "as string", ttl: `"1800"`, want: 30 * time.Minute},
		{name: "zero", ttl: "0", want: 7200 * time.Second},
		{name: "negative", ttl: "-5", want: 7200 * time.Second},
		{name: "missing", ttl: "", want: 7200 * time.Second},
		{name: "null", ttl: "null", want: 7200 * time.Second},
		{name: "fraction", ttl: "0.5", want: 7200 * time.Second},
	}
	for _, ep := range endpoints {
		for _, tt := range tests {
			t.Run(ep.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				base, tr := newServer(t, func(w http.ResponseWriter, r *http.Request) {
					io.WriteString(w, ep.ok("t-"+tt.name, tt.ttl))
				})
				tok, ttl, err := ep.new(tr, base, testKey, testSecret).Fetch(fetchCtx(t))
				if err != nil || tok != "t-"+tt.name || ttl != tt.want {
					t.Errorf("fetch = %q, %v, %v, want %q, %v, nil", tok, ttl, err, "t-"+tt.name, tt.want)
				}
			})
		}
	}
}

func TestLifetime(t *testing.T) {
	tests := []struct {
		in   json.Number
		want time.Duration
	}{
		{"7200", 7200 * time.Second},
		{"1", time.Second},
		{"0", 7200 * time.Second},
		{"-1", 7200 * time.Second},
		{"", 7200 * time.Second},
		{"1e3", 7200 * time.Second},
		{"abc", 7200 * time.Second},
	}
	for _, tt := range tests {
		if got := lifetime(tt.in); got != tt.want {
			t.Errorf("lifetime(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestFetcherErrorAnswers(t *testing.T) {
	tests := []struct {
		name         string
		new          func(rt http.RoundTripper, base, key, secret string) Fetcher
		status       int
		body         string
		wantContains []string
	}{
		{
			name: "oauth2 invalid client", new: NewOAuth2Fetcher, status: 400,
			body:         `{"requestid":"ABC","code":"invalidClientIdOrSecret","message":"无效的clientId或者clientSecret"}`,
			wantContains: []string{"400", "invalidClientIdOrSecret", "无效的clientId或者clientSecret"},
		},
		{
			name: "oauth2 200 without token", new: NewOAuth2Fetcher, status: 200,
			body:         `{"expireIn":7200}`,
			wantContains: []string{"200"},
		},
		{
			name: "oauth2 error status with a token", new: NewOAuth2Fetcher, status: 403,
			body:         `{"accessToken":"x","code":"Forbidden.AccessDenied","message":"denied"}`,
			wantContains: []string{"403", "Forbidden.AccessDenied"},
		},
		{
			name: "oauth2 not JSON", new: NewOAuth2Fetcher, status: 502,
			body:         `<html><body>Bad Gateway</body></html>`,
			wantContains: []string{"502", "not JSON"},
		},
		{
			name: "gettoken 40096", new: NewGetTokenFetcher, status: 200,
			body:         `{"errcode":40096,"errmsg":"不合法的appKey或appSecret"}`,
			wantContains: []string{"errcode 40096", "不合法的appKey或appSecret"},
		},
		{
			name: "gettoken errcode as string", new: NewGetTokenFetcher, status: 200,
			body:         `{"errcode":"40089","errmsg":"invalid corpid or corpsecret"}`,
			wantContains: []string{"errcode 40089"},
		},
		{
			name: "gettoken errcode 0 without token", new: NewGetTokenFetcher, status: 200,
			body:         `{"errcode":0,"errmsg":"ok"}`,
			wantContains: []string{"errcode 0"},
		},
		{
			name: "gettoken token with an error code", new: NewGetTokenFetcher, status: 200,
			body:         `{"errcode":-1,"errmsg":"system busy","access_token":"x"}`,
			wantContains: []string{"errcode -1", "system busy"},
		},
		{
			name: "gettoken not JSON", new: NewGetTokenFetcher, status: 403,
			body:         `<html>IP banned</html>`,
			wantContains: []string{"403", "not JSON"},
		},
		{
			name: "oauth2 answer over the read bound", new: NewOAuth2Fetcher, status: 200,
			body:         `{"accessToken":"x","pad":"` + strings.Repeat("a", 128<<10) + `"}`,
			wantContains: []string{"not JSON"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			base, tr := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			})
			tok, _, err := tt.new(tr, base, testKey, testSecret).Fetch(fetchCtx(t))
			if err == nil || tok != "" {
				t.Fatalf("fetch = %q, %v, want an error", tok, err)
			}
			for _, w := range tt.wantContains {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			checkNoLeak(t, "error", err.Error())
		})
	}
}

func TestFetcherTransportErrors(t *testing.T) {
	errSentinel := errors.New("connection reset by fake peer")
	// urlErr is what an http.Client-based transport returns: the whole URL.
	urlErr := func(req *http.Request) error {
		return &url.Error{Op: "Get", URL: req.URL.String(), Err: errSentinel}
	}
	tests := []struct {
		name   string
		rt     func(t *testing.T) (http.RoundTripper, string)
		wantIs error
	}{
		{
			name: "closed port",
			rt: func(t *testing.T) (http.RoundTripper, string) {
				tr := &http.Transport{}
				t.Cleanup(tr.CloseIdleConnections)
				return tr, "http://" + deadAddr(t)
			},
		},
		{
			name: "url.Error with the query",
			rt: func(*testing.T) (http.RoundTripper, string) {
				return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
					return nil, urlErr(req)
				}), "https://oapi.example.invalid"
			},
			wantIs: errSentinel,
		},
		{
			name: "wrapped url.Error",
			rt: func(*testing.T) (http.RoundTripper, string) {
				return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
					return nil, fmt.Errorf("instrumented: %w", urlErr(req))
				}), "https://oapi.example.invalid"
			},
			wantIs: errSentinel,
		},
		{
			name: "url.Error inside url.Error",
			rt: func(*testing.T) (http.RoundTripper, string) {
				return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
					return nil, &url.Error{Op: "Get", URL: req.URL.String(), Err: fmt.Errorf("retry: %w", urlErr(req))}
				}), "https://oapi.example.invalid"
			},
			wantIs: errSentinel,
		},
		{
			name: "url.Error with user info",
			rt: func(*testing.T) (http.RoundTripper, string) {
				return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
					u := *req.URL
					u.User = url.UserPassword(testKey, testSecret)
					return nil, &url.Error{Op: "Get", URL: u.String(), Err: errSentinel}
				}), "https://oapi.example.invalid"
			},
			wantIs: errSentinel,
		},
		{
			name: "url.Error while reading the answer",
			rt: func(*testing.T) (http.RoundTripper, string) {
				return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
					return &http.Response{StatusCode: 200, Body: io.NopCloser(io.MultiReader(
						strings.NewReader(`{"access`), errReader{urlErr(req)}))}, nil
				}), "https://oapi.example.invalid"
			},
			wantIs: errSentinel,
		},
	}
	for _, ep := range endpoints {
		for _, tt := range tests {
			t.Run(ep.name+"/"+tt.name, func(t *testing.T) {
				rt, base := tt.rt(t)
				tok, _, err := ep.new(rt, base, testKey, testSecret).Fetch(fetchCtx(t))
				if err == nil || tok != "" {
					t.Fatalf("fetch = %q, %v, want an error", tok, err)
				}
				checkNoLeak(t, "error", err.Error())
				checkNoLeak(t, "error", fmt.Sprintf("%+v", err))
				if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
					t.Errorf("error %q does not wrap %q", err, tt.wantIs)
				}
				if !strings.Contains(err.Error(), "token: fetch") {
					t.Errorf("error %q does not say what failed", err)
				}
			})
		}
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestFetcherHonoursContext(t *testing.T) {
	for _, ep := range endpoints {
		t.Run(ep.name, func(t *testing.T) {
			arrived, unblock := make(chan struct{}), make(chan struct{})
			base, tr := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body) // so that the server notices the client going away
				close(arrived)
				select {
				case <-r.Context().Done():
				case <-unblock:
				}
			})
			t.Cleanup(func() { close(unblock) }) // runs before the server's Close
			ctx, cancel := context.WithCancel(fetchCtx(t))
			go func() {
				<-arrived
				cancel()
			}()
			_, _, err := ep.new(tr, base, testKey, testSecret).Fetch(ctx)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("fetch after cancel = %v, want context.Canceled", err)
			}
			if err != nil {
				checkNoLeak(t, "error", err.Error())
			}
		})
	}
}

func TestRedact(t *testing.T) {
	const full = "https://oapi.dingtalk.com/gettoken?appkey=" + testKey + "&appsecret=" + testSecret + "#frag"
	plain := errors.New("plain " + testSecret)
	tests := []struct {
		name string
		err  error
		want string // Error() of the result
	}{
		{name: "nil", err: nil},
		{name: "no url.Error", err: plain, want: plain.Error()},
		{
			name: "query",
			err:  &url.Error{Op: "Get", URL: full, Err: io.ErrUnexpectedEOF},
			want: `Get "https://oapi.dingtalk.com/gettoken?REDACTED": unexpected EOF`,
		},
		{
			name: "user info",
			err:  &url.Error{Op: "Post", URL: "https://" + testKey + ":" + url.PathEscape(testSecret) + "@api.dingtalk.com/v1.0/oauth2/accessToken", Err: io.EOF},
			want: `Post "https://api.dingtalk.com/v1.0/oauth2/accessToken": EOF`,
		},
		{
			name: "no query",
			err:  &url.Error{Op: "Post", URL: "https://api.dingtalk.com/v1.0/oauth2/accessToken", Err: io.EOF},
			want: `Post "https://api.dingtalk.com/v1.0/oauth2/accessToken": EOF`,
		},
		{
			name: "unparsable URL",
			err:  &url.Error{Op: "Get", URL: "http://[::1%zz/gettoken?appsecret=" + testSecret, Err: io.EOF},
			want: `Get "(url redacted)": EOF`,
		},
		{
			name: "wrapped",
			err:  fmt.Errorf("proxy: %w", &url.Error{Op: "Get", URL: full, Err: io.EOF}),
			want: `Get "https://oapi.dingtalk.com/gettoken?REDACTED": EOF`,
		},
		{
			name: "nested",
			err:  &url.Error{Op: "Get", URL: full, Err: fmt.Errorf("inner: %w", &url.Error{Op: "Get", URL: full, Err: io.EOF})},
			want: `Get "https://oapi.dingtalk.com/gettoken?REDACTED": Get "https://oapi.dingtalk.com/gettoken?REDACTED": EOF`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before string
			if tt.err != nil {
				before = tt.err.Error()
			}
			got := Redact(tt.err)
			if tt.err == nil {
				if got != nil {
					t.Fatalf("Redact(nil) = %v, want nil", got)
				}
				return
			}
			if got.Error() != tt.want {
				t.Errorf("Redact(%q) = %q, want %q", before, got, tt.want)
			}
			if tt.err.Error() != before {
				t.Errorf("Redact changed its argument: %q, was %q", tt.err, before)
			}
			var ue *url.Error
			if errors.As(tt.err, &ue) {
				checkNoLeak(t, "Redact()", got.Error())
				if !errors.As(got, &ue) {
					t.Errorf("Redact(%q) = %T, want a *url.Error in it", before, got)
				}
				for _, target := range []error{io.EOF, io.ErrUnexpectedEOF} {
					if errors.Is(tt.err, target) != errors.Is(got, target) {
						t.Errorf("errors.Is(Redact(err), %v) = %v, want %v", target, errors.Is(got, target), errors.Is(tt.err, target))
					}
				}
			} else if got != tt.err {
				t.Errorf("Redact(%v) = %v, want it unchanged", tt.err, got)
			}
		})
	}
	// A timeout stays a timeout.
	te := &url.Error{Op: "Get", URL: full, Err: context.DeadlineExceeded}
	var ne net.Error
	if got := Redact(te); !errors.As(got, &ne) || !ne.Timeout() {
		t.Errorf("Redact(%v) is no longer a timeout", te)
	}
}

func FuzzRedact(f *testing.F) {
	f.Add("https://oapi.dingtalk.com/gettoken", testKey, testSecret)
	f.Add("http://127.0.0.1:1", "k", "S3cr3tS3cr3t")
	f.Add("http://[::1%zz", "key", "p@ss/wo rd?&=")
	f.Fuzz(func(t *testing.T, base, key, secret string) {
		q := url.Values{"appkey": {key}, "appsecret": {secret}}.Encode()
		full := base + "?" + q
		rest := (&url.Error{Op: "Get", URL: "", Err: errBoom}).Error() // what surrounds the URL
		got := Redact(&url.Error{Op: "Get", URL: full, Err: errBoom}).Error()
		if len(q) > 0 && strings.Contains(got, q) && !strings.Contains(base+rest, q) {
			t.Errorf("Redact of %q = %q, still has the query", full, got)
		}
		if escaped := url.QueryEscape(secret); len(escaped) >= 8 && strings.Contains(got, "appsecret="+escaped) && !strings.Contains(base, "appsecret="+escaped) {
			t.Errorf("Redact of %q = %q, still has the secret", full, got)
		}
	})
}

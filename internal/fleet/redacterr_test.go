package fleet

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dingproxy/dingproxy/internal/redistest"
)

// redisPassword is in every URL below: it must never reach the log.
const redisPassword = "hunter2-fleet-redis-pw"

// startFailure starts a Fleet on url, whose Redis cannot be used, and
// returns the "error" field of the one line it logs about it, failing the
// test when there is not exactly one such line or the password is in it.
func startFailure(t *testing.T, url string, timeout time.Duration) string {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	f, err := New(Options{URL: url, KeyPrefix: "dp", AppKey: testKey, Timeout: timeout,
		ProbeEvery: time.Hour, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	f.Start() // pings once, and logs the outcome before it returns
	f.Close()
	if f.Up() {
		t.Fatalf("Up = true with %s", url)
	}
	lines := logs.FilterMessageSnippet("Redis unreachable").All()
	if len(lines) != 1 {
		t.Fatalf("%d \"Redis unreachable\" lines, want 1: %v", len(lines), logs.All())
	}
	all := lines[0].Message + " " + fmt.Sprint(lines[0].ContextMap())
	if strings.Contains(all, redisPassword) {
		t.Errorf("the log line shows the URL's password: %s", all)
	}
	e, _ := lines[0].ContextMap()["error"].(string)
	if e == "" {
		t.Fatalf("the log line has no error field: %s", all)
	}
	return e
}

// freeLoopbackPort is a port on 127.0.0.1 that nothing listened on a moment
// ago.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// The line logged when Redis cannot be used names what failed, against a
// real redis-server (a wrong password, none, TLS that does not verify, a
// plain client on a TLS port, a server that hangs), a port nothing listens
// on and a name under the reserved .invalid domain; never the password.
func TestRedisFailureNamed(t *testing.T) {
	auth := redistest.Start(t)
	if _, err := auth.Do("CONFIG", "SET", "requirepass", redisPassword+"-right"); err != nil {
		t.Fatal(err)
	}
	tlsPort := startTLS(t, redistest.Start(t))
	hung := redistest.Start(t)

	const long = 2 * time.Second // no slow machine turns these into timeouts
	tests := []struct {
		name    string
		url     string
		timeout time.Duration // 0: the default, 50ms
		want    string        // the start of the error field
	}{
		{"refused, default timeout", fmt.Sprintf("redis://:%s@127.0.0.1:%d/0", redisPassword, freeLoopbackPort(t)), 0,
			"connection refused: nothing listens at the URL's host and port"},
		{"unresolvable name", "redis://:" + redisPassword + "@nohost.invalid:6379/0", long,
			"DNS: "},
		{"wrong password", withUser(auth, ":"+redisPassword+"@"), long,
			"auth: Redis refused the URL's user name or password (WRONGPASS)"},
		{"unknown user", withUser(auth, "nobody:"+redisPassword+"@"), long,
			"auth: Redis refused the URL's user name or password (WRONGPASS)"},
		{"no password", auth.URL(), long,
			"auth: Redis requires a password and the URL has none (NOAUTH)"},
		{"TLS, untrusted certificate", fmt.Sprintf("rediss://:%s@127.0.0.1:%d/0", redisPassword, tlsPort), long,
			"TLS: the server's certificate is signed by an unknown authority"},
		{"TLS, certificate for another host", fmt.Sprintf("rediss://:%s@localhost:%d/0", redisPassword, tlsPort), long,
			"TLS: the server's certificate is not valid for the URL's host"},
		{"plain client on a TLS port", fmt.Sprintf("redis://:%s@127.0.0.1:%d/0", redisPassword, tlsPort), long,
			"connection closed by the server (a restart, or a TLS port reached with redis://)"},
		{"server hangs", hung.URL(), 200 * time.Millisecond,
			"timeout: no answer within fleet.timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "server hangs" {
				if err := hung.Pause(); err != nil {
					t.Fatal(err)
				}
				defer hung.Resume()
			}
			got := startFailure(t, tt.url, tt.timeout)
			if !strings.HasPrefix(got, tt.want) {
				t.Errorf("logged error = %q, want it to start %q", got, tt.want)
			}
		})
	}
}

// withUser is srv's URL (a cluster's, in cluster mode) with userinfo
// (user:password@).
func withUser(srv *redistest.Server, userinfo string) string {
	return strings.Replace(srv.URL(), "://", "://"+userinfo, 1)
}

// startTLS has srv serve TLS too, on a port of its own, with a self-signed
// certificate for 127.0.0.1 only (no client certificates asked), and returns
// that port.
func startTLS(t *testing.T, srv *redistest.Server) int {
	t.Helper()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Do("CONFIG", "SET", "tls-cert-file", certFile, "tls-key-file", keyFile, "tls-auth-clients", "no"); err != nil {
		t.Fatalf("redis-server without TLS support? %v", err)
	}
	for try := 0; ; try++ { // a free port can be taken before Redis binds it
		port := freeLoopbackPort(t)
		_, err := srv.Do("CONFIG", "SET", "tls-port", strconv.Itoa(port))
		if err == nil {
			return port
		}
		if try == 4 {
			t.Fatalf("CONFIG SET tls-port: %v", err)
		}
	}
}

// replyError is an error Redis answered with, as go-redis types them.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

// The kinds that a local server cannot be made to produce, and the rule
// that a reply's text past its code is never shown.
func TestRedactErrWording(t *testing.T) {
	opErr := func(err error) error { return &net.OpError{Op: "dial", Net: "tcp", Err: err} }
	tests := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{opErr(&net.DNSError{Err: "i/o timeout", Name: "redis", IsTimeout: true}), "DNS: the lookup of the host name timed out"},
		{opErr(&net.DNSError{Err: "server misbehaving", Name: "redis", IsTemporary: true}), "DNS: the lookup of the host name failed"},
		{opErr(os.NewSyscallError("connect", syscall.EHOSTUNREACH)), "host unreachable: no route to the URL's host"},
		{opErr(os.NewSyscallError("read", syscall.ECONNRESET)), "connection reset by the server"},
		{fmt.Errorf("fleet: ping: %w", context.DeadlineExceeded), "timeout: no answer within fleet.timeout"},
		{replyError("LOADING Redis is loading the dataset in memory"), "Redis answered an error (LOADING)"},
		{replyError("NOPERM User bob has no permissions to run the 'evalsha' command"), "auth: the URL's user may not run a command the proxy needs (NOPERM)"},
		{replyError("ERR AUTH <password> called without any password configured for the default user"), "auth: the URL has a password but Redis has none set (ERR AUTH)"},
		{replyError("ERR unknown command 'x', with args beginning with: '" + redisPassword + "'"), "Redis answered an error (ERR)"},
		{replyError("weird: " + redisPassword), "Redis answered an error"},
		{errors.New("dial tcp 10.0.0.1:6379 via " + redisPassword), "error"},
	}
	for _, tt := range tests {
		if got := redactErr(tt.err); got != tt.want {
			t.Errorf("redactErr(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

package fleet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"
)

// The words the fleet's log uses for what failed in a Redis operation.

// redactErr names what failed in err for the log, in words of its own: the
// kind (DNS, refused, auth, TLS, timeout, ...) and what it means, never err's
// text, which names the address and, in a Redis reply, may echo part of a
// command. The URL's password is in neither.
//
// go-redis dials in the background: an operation whose connection is still
// being dialled (its DNS lookup included) when fleet.timeout runs out sees
// only its own deadline, so a slow DNS answer or TLS handshake is reported as
// the timeout it was for that operation; New has go-redis dial once per try,
// so a dial that fails sooner is reported as what it is.
func redactErr(err error) string {
	if err == nil {
		return ""
	}
	if s := dialKind(err); s != "" {
		return s
	}
	if s := replyKind(err); s != "" {
		return s
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, redis.ErrPoolTimeout),
		errors.As(err, &ne) && ne.Timeout():
		return "timeout: no answer within fleet.timeout"
	case errors.Is(err, redis.ErrClosed):
		return "the Redis client is closed"
	case errors.As(err, &ne):
		return "network error"
	}
	return "error"
}

// dialKind names a failure to reach Redis or to set up TLS with it, or is "".
func dialKind(err error) string {
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		switch {
		case dnsErr.IsNotFound:
			return "DNS: the host name does not resolve (no such host)"
		case dnsErr.IsTimeout:
			return "DNS: the lookup of the host name timed out"
		}
		return "DNS: the lookup of the host name failed"
	}
	var (
		hostErr      x509.HostnameError
		authorityErr x509.UnknownAuthorityError
		invalidErr   x509.CertificateInvalidError
		verifyErr    *tls.CertificateVerificationError
		recordErr    tls.RecordHeaderError
		alertErr     tls.AlertError
	)
	switch {
	case errors.As(err, &hostErr):
		return "TLS: the server's certificate is not valid for the URL's host"
	case errors.As(err, &authorityErr):
		return "TLS: the server's certificate is signed by an unknown authority"
	case errors.As(err, &invalidErr):
		return "TLS: the server's certificate is invalid (expired, not yet valid, or not for a server)"
	case errors.As(err, &verifyErr):
		return "TLS: the server's certificate could not be verified"
	case errors.As(err, &recordErr):
		return "TLS: the server does not speak TLS (rediss:// to a plain port?)"
	case errors.As(err, &alertErr):
		return "TLS: the server refused the handshake"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused: nothing listens at the URL's host and port"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset by the server"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "host unreachable: no route to the URL's host"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by the server (a restart, or a TLS port reached with redis://)"
	}
	return ""
}

// replyKind names an error Redis answered with, or is "": by its code
// (WRONGPASS, NOAUTH, LOADING, ...) only, never the rest of its text.
func replyKind(err error) string {
	var re redis.Error
	if !errors.As(err, &re) {
		return ""
	}
	msg := re.Error()
	code, _, _ := strings.Cut(msg, " ")
	switch {
	case code == "NOAUTH":
		return "auth: Redis requires a password and the URL has none (NOAUTH)"
	case code == "WRONGPASS":
		return "auth: Redis refused the URL's user name or password (WRONGPASS)"
	case strings.HasPrefix(msg, "ERR invalid password"), strings.HasPrefix(msg, "ERR invalid username-password"):
		return "auth: Redis refused the URL's password (ERR invalid password)"
	case strings.HasPrefix(msg, "ERR AUTH"), strings.HasPrefix(msg, "ERR Client sent AUTH"):
		return "auth: the URL has a password but Redis has none set (ERR AUTH)"
	case redis.IsAuthError(err):
		return "auth: Redis refused the connection's authentication"
	case code == "NOPERM":
		return "auth: the URL's user may not run a command the proxy needs (NOPERM)"
	}
	if code != "" && strings.Trim(code, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") == "" {
		return "Redis answered an error (" + code + ")"
	}
	return "Redis answered an error"
}

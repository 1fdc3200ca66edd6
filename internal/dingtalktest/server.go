package dingtalktest

import (
	"crypto/sha256"
	"errors"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Options configures a [Server]. The zero value is usable.
type Options struct {
	AppKey, AppSecret string // defaults "demo-app-key", "demo-app-secret"
	RobotToken        string // default "demo-robot-token"; RobotToken + "-" + anything is another robot
	// RobotPerMinute, when positive, is DingTalk's per-robot limit: past
	// that many sends in any minute (a sliding 60 s of the sends it let
	// through), a robot is answered 130101 and blocked for 10 minutes, and
	// sends into the block are answered 130101 without extending it
	// (DingTalk's 20 and 10 minutes: RobotLimit and RobotBlockTime, the
	// fake's own reading of DingTalk's documents, never the proxy's).
	// Sends refused for the token or the robot's
	// rules do not count.
	RobotPerMinute int
	// RobotSecret, when set, is every robot's signing secret (DingTalk's
	// 加签): a send must carry timestamp (Unix ms, within RobotSignWindow
	// of Now) and sign (see [SignRobot]) in its query, or it is answered
	// 310000 ("invalid timestamp", "sign not match") and not executed.
	RobotSecret string
	// RobotKeywords, when set, are every robot's custom keywords: a message
	// whose content (a text's content; a markdown's, link's or
	// actionCard's title and text; a feedCard's titles) holds none of them
	// is answered 310000 "keywords not in content" and not executed.
	RobotKeywords []string
	// Robots sets robots one by one, by access token: each key is a valid
	// robot token (besides RobotToken and its "-" variants), and its
	// RobotConfig replaces RobotSecret and RobotKeywords for that robot.
	Robots map[string]RobotConfig
	// RobotMaxBody, when positive, is the longest robot message body in
	// bytes: a longer one is answered 460101 "message too long", not
	// executed. DingTalk's is RobotBodyLimit.
	RobotMaxBody int
	// Metered, when set, says which paths this organisation's DingTalk
	// meters against MonthlyQuota; nil: the fake's own reading of the
	// documentation (MeteredByDocs). It never asks the proxy's list: a test
	// can make DingTalk disagree with it.
	Metered func(path string) bool
	// MonthlyQuota, when positive, is the organisation's monthly API quota:
	// past that many metered calls (see Metered: by default all but the
	// token, SSO and contacts APIs) every metered call is answered 90020 (api: 403
	// Forbidden.AccessDenied.ApiCountLimitForOrg) with the usage and the
	// quota in its message, as DingTalk words it. SetMonthlyQuota changes it
	// (a quota bought mid-month).
	MonthlyQuota int
	// ForeignToken, when set, is an access token of another organisation:
	// valid on every API, and that organisation's monthly quota is spent,
	// so every call carrying it is answered 90020 (api: 403
	// ApiCountLimitForOrg). It never counts towards this organisation's
	// quota.
	ForeignToken string
	// Gzip, when set, compresses an API's answer with gzip when the
	// request's Accept-Encoding takes it (Content-Encoding: gzip), as web
	// gateways do.
	Gzip bool
	// TokenTTL is the lifetime of issued tokens; default 2h, DingTalk's 7200 s.
	TokenTTL time.Duration
	// Seed seeds the chaos RNG; 0 means 1.
	Seed int64
	// Now is the clock for token expiry and QPS windows; default time.Now.
	// Latency and Hang use real time.
	Now func() time.Time
}

// Defaults for [Options].
const (
	DefaultAppKey     = "demo-app-key"
	DefaultAppSecret  = "demo-app-secret"
	DefaultRobotToken = "demo-robot-token"
	DefaultTokenTTL   = 2 * time.Hour
)

// maxRecorded is how many requests per path [Server.Requests] keeps.
const maxRecorded = 64

// maxBody bounds the request body the fake reads.
const maxBody = 64 << 20

// A Request is one request as the fake received it.
type Request struct {
	Method   string
	Path     string
	RawQuery string
	Header   http.Header // a clone
	Body     []byte
}

// Server is the fake DingTalk. Create it with [New] or [NewServer]; all its
// methods are safe for concurrent use.
type Server struct {
	opts Options

	mu       sync.Mutex
	closed   bool
	started  bool
	rng      *rand.Rand           // chaos draws only
	tokens   map[string]time.Time // issued token -> expiry
	issued   []string             // every token ever issued, for leak checks
	current  string               // the token fetches return while it is valid
	scripts  map[string][]Fault
	chaos    Chaos
	qpsLimit int
	qps      map[string]*qpsWindow
	robotIDs map[string]struct{} // executed robot msgUuids
	// robotMinutes is each robot's minute and block, by token.
	robotMinutes map[string]*robotMinute
	seen         map[string]map[[sha256.Size]byte]struct{}
	nextTask     int64
	c            counters

	idMu  sync.Mutex
	idRNG *rand.Rand // tokens and request ids, under idMu

	closing   chan struct{} // closed by Close: unblocks Hang and Latency
	closeOnce sync.Once
	inflight  sync.WaitGroup // handlers running; Add only under mu while !closed
	ln        net.Listener
	hs        *http.Server
	served    chan struct{} // closed when Serve returns

	// listenMu serialises Start, StopListening and ResumeListening.
	listenMu sync.Mutex
	// down is set from StopListening to ResumeListening; reserved then
	// holds the port (nil if it could not).
	down     bool
	reserved *reservation
	// period is the current listening period; StopListening ends it.
	period *period

	// testHookHang, if set, is called when a handler starts to hang.
	testHookHang func()
	// testHookEndlessDone, if set, is called when an EndlessChunked handler
	// stops writing.
	testHookEndlessDone func()
}

type counters struct {
	hits       map[string]int
	execs      map[string]int
	requests   map[string][]Request
	total      int
	duplicates int
	throttled  int
	// robotThrottled counts robot sends answered 130101; robots is each
	// robot's counters, by token.
	robotThrottled int
	robots         map[string]*RobotStats
	// deliveries is each send path's messages; deliveryBytes the bodies
	// they keep.
	deliveries    map[string]*deliveries
	deliveryBytes int
	tokenFetches  int
	leaks         int
	// metered is the month's metered calls; quotaRejected the 90020s by path.
	metered       int
	quotaRejected map[string]int
}

func newCounters() counters {
	return counters{
		hits:     make(map[string]int),
		execs:    make(map[string]int),
		requests: make(map[string][]Request),
		robots:   make(map[string]*RobotStats),

		deliveries: make(map[string]*deliveries),

		quotaRejected: make(map[string]int),
	}
}

// qpsWindow is one path's limiter state.
type qpsWindow struct {
	second  int64 // Unix second of the current window
	count   int
	penalty time.Time // rejects every call before this
}

// New returns a Server that is not listening yet; call [Server.Start], or mount
// [Server.Handler] on a server of your own.
func New(opts Options) *Server {
	if opts.AppKey == "" {
		opts.AppKey = DefaultAppKey
	}
	if opts.AppSecret == "" {
		opts.AppSecret = DefaultAppSecret
	}
	if opts.RobotToken == "" {
		opts.RobotToken = DefaultRobotToken
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = DefaultTokenTTL
	}
	if opts.Seed == 0 {
		opts.Seed = 1
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.RobotKeywords = slices.Clone(opts.RobotKeywords)
	opts.Robots = maps.Clone(opts.Robots)
	for tok, rc := range opts.Robots {
		rc.Keywords = slices.Clone(rc.Keywords)
		opts.Robots[tok] = rc
	}
	seed := uint64(opts.Seed)
	return &Server{
		opts:     opts,
		rng:      rand.New(rand.NewPCG(seed, 0x6469_6e67)),
		idRNG:    rand.New(rand.NewPCG(seed, uint64(time.Now().UnixNano()))),
		tokens:   make(map[string]time.Time),
		scripts:  make(map[string][]Fault),
		qps:      make(map[string]*qpsWindow),
		robotIDs: make(map[string]struct{}),

		robotMinutes: make(map[string]*robotMinute),
		seen:         make(map[string]map[[sha256.Size]byte]struct{}),
		nextTask:     256271667526,
		c:            newCounters(),
		closing:      make(chan struct{}),
		period:       newPeriod(),
	}
}

// NewServer returns a Server listening on 127.0.0.1:0 and registers Close
// with t.Cleanup.
func NewServer(t testing.TB, opts Options) *Server {
	t.Helper()
	s := New(opts)
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatalf("dingtalktest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Start listens on addr, such as "127.0.0.1:0", and serves in the background.
// It fails if the server was started or closed before.
func (s *Server) Start(addr string) error {
	s.listenMu.Lock()
	defer s.listenMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("dingtalktest: Start after Close")
	}
	if s.started {
		return errors.New("dingtalktest: Start called twice")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.started = true
	s.serveLocked(ln)
	return nil
}

// serveLocked serves on ln in the background with a new http.Server.
func (s *Server) serveLocked(ln net.Listener) {
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan struct{})
	s.ln, s.hs, s.served = ln, hs, served
	go func() {
		defer close(served)
		_ = hs.Serve(ln) // returns http.ErrServerClosed after Close
	}()
}

// URL is "http://127.0.0.1:PORT", or "" before Start.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return "http://" + s.ln.Addr().String()
}

// Handler returns the fake's handler, for mounting on another server.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// Close closes the listener and every connection, unblocks handlers in Hang or
// Latency, and waits for running handlers to return. It is idempotent. After
// Close the handler closes every new connection without answering. It may be
// called during an outage ([Server.StopListening]).
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		hs, served, res := s.hs, s.served, s.reserved
		s.reserved = nil
		s.mu.Unlock()
		close(s.closing)
		if hs != nil {
			_ = hs.Close()
			<-served
		}
		if res != nil {
			_ = res.close()
		}
		s.inflight.Wait()
	})
}

// enter registers a running handler in the current listening period; it
// reports false once Close has begun, or while the listener is stopped.
func (s *Server) enter() (*period, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.down {
		return nil, false
	}
	s.inflight.Add(1)
	s.period.handlers.Add(1)
	return s.period, true
}

// Script queues faults for requests to exactly path (no query), consumed one
// per request in order; when they are used up, the path behaves normally
// again. Calls append to the queue.
func (s *Server) Script(path string, faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts[path] = append(s.scripts[path], faults...)
}

// SetChaos replaces the chaos configuration; Chaos{} turns it off. It panics
// if a probability is outside [0, 1] or they sum to more than 1.
func (s *Server) SetChaos(c Chaos) {
	if err := c.validate(); err != nil {
		panic(err)
	}
	c.Faults = append([]Weighted(nil), c.Faults...)
	c.Paths = append([]string(nil), c.Paths...)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.chaos = c
}

// SetQPSLimit limits every path except the token endpoints to
// perPathPerSecond calls per one-second window of Options.Now; 0 turns the
// limit off. The call over the limit gets the [Throttle] answer and starts a
// one-second penalty during which the path rejects every call; rejected calls
// do not extend the penalty. Rejections are counted by [Server.Throttled].
func (s *Server) SetQPSLimit(perPathPerSecond int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.qpsLimit = max(perPathPerSecond, 0)
	clear(s.qps)
}

// ExpireTokens revokes every issued token now; the next fetch issues a new one.
func (s *Server) ExpireTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.tokens)
	s.current = ""
}

// IssuedTokens is every access token the fake has issued, for leak checks.
func (s *Server) IssuedTokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.issued)
}

// Hits is the number of requests received for path, whatever their outcome.
func (s *Server) Hits(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.hits[path]
}

// TotalHits is the number of requests received for every path.
func (s *Server) TotalHits() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.total
}

// Executions is the number of times a request to path was executed: it passed
// faults, limits and auth and its handler did its work (a send was sent, a
// read was answered). Token fetches, rejected requests and robot msgUuid
// replays are not executions; [ResetAfterExec] is, and so are the bad answers
// [Body] with a 2xx status, [Huge], [BadGzip], [CloseMidBody],
// [EndlessChunked] and [Informational].
func (s *Server) Executions(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.execs[path]
}

// Duplicates is the total number of executions of a non-idempotent send whose
// body is byte-identical to one already executed on the same path (since the
// last ResetCounters).
func (s *Server) Duplicates() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.duplicates
}

// Throttled is the number of requests rejected by the QPS limit.
func (s *Server) Throttled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.throttled
}

// TokenFetches is the number of requests to either token endpoint, including
// failed ones.
func (s *Server) TokenFetches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.tokenFetches
}

// SecretLeaks is the number of requests, other than to the two token
// endpoints, in which the app secret appeared: in the path, the query (raw or
// decoded), a header name or value, or the body.
func (s *Server) SecretLeaks() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.leaks
}

// Requests returns the last 64 requests received for path, oldest first.
func (s *Server) Requests(path string) []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := s.c.requests[path]
	out := make([]Request, len(rs))
	for i, r := range rs {
		r.Header = r.Header.Clone()
		r.Body = append([]byte(nil), r.Body...)
		out[i] = r
	}
	return out
}

// SetMonthlyQuota sets the organisation's monthly quota (0: none), as if
// more were bought mid-month. The month's count stays.
func (s *Server) SetMonthlyQuota(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.MonthlyQuota = n
}

// QuotaRejected is how many calls on path were answered 90020.
func (s *Server) QuotaRejected(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.quotaRejected[path]
}

// MeteredCalls is the month's count of metered calls.
func (s *Server) MeteredCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.metered
}

// ResetCounters zeroes every counter (robots' included), forgets recorded
// requests, and forgets which bodies were executed, so Duplicates counts
// afresh. Tokens, scripts, chaos, QPS state, robots' minutes and blocks, and
// executed robot msgUuids are kept.
func (s *Server) ResetCounters() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c = newCounters()
	clear(s.seen)
}

// metered says whether this fake's DingTalk meters a call on path.
func (s *Server) metered(path string) bool {
	if s.opts.Metered != nil {
		return s.opts.Metered(path)
	}
	return MeteredByDocs(path)
}

// unmeteredByDocs are the path prefixes DingTalk's documentation leaves out
// of the monthly quota, as this fake reads it: sign-in and SSO, and the
// address book (users, departments, roles, external contacts).
var unmeteredByDocs = []string{
	"/sso/", "/sns/", "/v1.0/oauth2/", "/v1.0/sso/",
	"/user/", "/topapi/user/", "/topapi/v2/user/",
	"/department/", "/topapi/department/", "/topapi/v2/department/",
	"/role/", "/topapi/role/", "/extcontact/", "/topapi/extcontact/",
	"/v1.0/contact/", "/v2.0/contact/",
}

// MeteredByDocs is the fake's default metering: every path but those the
// documentation leaves out of the quota (and the token calls, never
// counted).
func MeteredByDocs(path string) bool {
	for _, p := range unmeteredByDocs {
		if strings.HasPrefix(path, p) {
			return false
		}
	}
	return true
}

// MeterEverything is a Metered that counts every call: an organisation
// whose DingTalk meters even what the documentation leaves out.
func MeterEverything(string) bool { return true }

package dingtalktest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// The custom robot webhook (/robot/send): its own access_token, its security
// settings (signature, keywords), the body limit, the per-minute limit with
// its 10-minute block, and msgUuid idempotency.

// RobotBodyLimit is DingTalk's limit on a robot message's body, in bytes:
// a longer one is answered 460101 "message too long, exceed 20000 bytes".
// Set [Options.RobotMaxBody] to it to enforce it.
const RobotBodyLimit = 20000

// RobotLimit is DingTalk's limit on a custom robot's messages in any
// minute, and RobotBlockTime how long a robot past it is blocked (each
// message refused with 130101): DingTalk's documents on custom robots
// ("每个机器人每分钟最多发送20条消息 ... 限流10分钟"). The fake's own
// numbers, never the proxy's, so that a wrong limit in the proxy fails
// the tests that send past it.
const (
	RobotLimit     = 20
	RobotBlockTime = 10 * time.Minute
)

// RobotSignWindow is how far a signed robot send's timestamp may be from
// DingTalk's clock, either way, before it is answered 310000 "invalid
// timestamp".
const RobotSignWindow = time.Hour

// Robot error codes and their wording, as DingTalk answers them (HTTP 200).
const (
	// errcodeRobotSecurity is a send refused by the robot's security
	// settings: a bad signature or timestamp, or no keyword in the content.
	errcodeRobotSecurity = 310000
	// errcodeRobotTooLong is a body over the robot's limit.
	errcodeRobotTooLong = 460101

	msgRobotMore         = ", more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq]"
	msgRobotBadTimestamp = "invalid timestamp" + msgRobotMore
	msgRobotSignMismatch = "sign not match" + msgRobotMore
	msgRobotNoKeyword    = "keywords not in content" + msgRobotMore
	msgRobotTooFast      = "send too fast, exceed 20 times per minute"
)

// Query parameters of a signed robot send.
const (
	queryTimestamp = "timestamp"
	querySign      = "sign"
)

// RobotConfig is one robot's security settings, as set in DingTalk's robot
// settings. The zero value has none: any send with the robot's token goes.
type RobotConfig struct {
	// Secret, when set, requires signed sends: timestamp (Unix ms, within
	// RobotSignWindow of Options.Now) and sign (see [SignRobot]) in the
	// query.
	Secret string
	// Keywords, when set, requires the message's content to hold at least
	// one of them.
	Keywords []string
}

// RobotStats is what one robot saw since the last [Server.ResetCounters].
type RobotStats struct {
	// Executed is the messages posted to the robot's group; msgUuid replays
	// and refused sends are not.
	Executed int
	// Throttled is the sends answered 130101: the one past the minute's
	// limit, which starts a block, and every send into the block.
	Throttled int
	// Blocks is how many 10-minute blocks the robot started.
	Blocks int
	// Refused is the sends refused by the robot's settings: 310000 (signature,
	// timestamp, keywords) and 460101 (too long).
	Refused int
}

// SignRobot signs a robot send made at ts with secret, as DingTalk documents
// it: timestamp is ts in Unix milliseconds and sign is
// urlEncode(base64(HmacSHA256(secret, timestamp+"\n"+secret))), already
// URL-encoded, so that a send goes to
// /robot/send?access_token=T&timestamp=<timestamp>&sign=<sign>.
func SignRobot(secret string, ts time.Time) (timestamp, sign string) {
	timestamp = strconv.FormatInt(ts.UnixMilli(), 10)
	return timestamp, url.QueryEscape(robotSign(secret, timestamp))
}

// robotSign is the base64 HMAC-SHA256 of timestamp+"\n"+secret under secret.
func robotSign(secret, timestamp string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(timestamp + "\n" + secret))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// robotConfig is the settings of the robot with token tok, and whether tok
// is a robot's token at all: a key of Options.Robots, Options.RobotToken, or
// Options.RobotToken + "-" + anything.
func (s *Server) robotConfig(tok string) (RobotConfig, bool) {
	if tok == "" {
		return RobotConfig{}, false
	}
	if rc, ok := s.opts.Robots[tok]; ok {
		return rc, true
	}
	if tok == s.opts.RobotToken || strings.HasPrefix(tok, s.opts.RobotToken+"-") {
		return RobotConfig{Secret: s.opts.RobotSecret, Keywords: s.opts.RobotKeywords}, true
	}
	return RobotConfig{}, false
}

// robotMessage is the part of a robot message the fake reads.
type robotMessage struct {
	MsgUUID  string                       `json:"msgUuid"`
	MsgType  string                       `json:"msgtype"`
	Text     struct{ Content string }     `json:"text"`
	Markdown struct{ Title, Text string } `json:"markdown"`
	Link     struct{ Title, Text string } `json:"link"`
	Card     struct {
		Title, Text, SingleTitle string
		Btns                     []struct{ Title string }
	} `json:"actionCard"`
	Feed struct {
		Links []struct{ Title string }
	} `json:"feedCard"`
}

// content is the text of m that a keyword must appear in: that of its
// msgtype; none for a message that is not JSON or of an unknown type.
func (m *robotMessage) content() string {
	switch m.MsgType {
	case "text":
		return m.Text.Content
	case "markdown":
		return m.Markdown.Title + "\n" + m.Markdown.Text
	case "link":
		return m.Link.Title + "\n" + m.Link.Text
	case "actionCard":
		parts := []string{m.Card.Title, m.Card.Text, m.Card.SingleTitle}
		for _, b := range m.Card.Btns {
			parts = append(parts, b.Title)
		}
		return strings.Join(parts, "\n")
	case "feedCard":
		var parts []string
		for _, l := range m.Feed.Links {
			parts = append(parts, l.Title)
		}
		return strings.Join(parts, "\n")
	}
	return ""
}

// robotRefusal checks a send against the robot's settings, in the order
// signature, body length, keywords, and returns the error that refuses it,
// or code 0.
func (s *Server) robotRefusal(rc RobotConfig, q url.Values, body []byte, m *robotMessage, now time.Time) (code int, msg string) {
	if rc.Secret != "" {
		if msg := checkRobotSign(rc.Secret, q, now); msg != "" {
			return errcodeRobotSecurity, msg
		}
	}
	if n := s.opts.RobotMaxBody; n > 0 && len(body) > n {
		return errcodeRobotTooLong, fmt.Sprintf("message too long, exceed %d bytes", n)
	}
	if len(rc.Keywords) > 0 {
		content := m.content()
		found := false
		for _, k := range rc.Keywords {
			if k != "" && strings.Contains(content, k) {
				found = true
				break
			}
		}
		if !found {
			return errcodeRobotSecurity, msgRobotNoKeyword
		}
	}
	return 0, ""
}

// checkRobotSign returns DingTalk's wording for a signed send whose timestamp
// or sign is missing or wrong, or "" if both are good.
func checkRobotSign(secret string, q url.Values, now time.Time) string {
	ts := q.Get(queryTimestamp)
	ms, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return msgRobotBadTimestamp
	}
	if d := now.Sub(time.UnixMilli(ms)); d > RobotSignWindow || d < -RobotSignWindow {
		return msgRobotBadTimestamp
	}
	if !hmac.Equal([]byte(q.Get(querySign)), []byte(robotSign(secret, ts))) {
		return msgRobotSignMismatch
	}
	return ""
}

// robotSend is the custom robot webhook. A send is checked in this order:
// its token (300005), the robot's settings (310000, 460101), the robot's
// minute and block (130101); then it is executed unless its msgUuid was
// executed before. Refused sends do not count towards the minute.
func (s *Server) robotSend(w http.ResponseWriter, r *http.Request, body []byte) {
	path := r.URL.Path
	q := r.URL.Query()
	tok := q.Get(dingtalk.QueryAccessToken)
	rc, ok := s.robotConfig(tok)
	if !ok {
		s.oapiError(w, path, dingtalk.ErrcodeRobotNoToken, msgRobotNoToken)
		return
	}
	var msg robotMessage
	_ = json.Unmarshal(body, &msg) // a body that is not JSON has no msgUuid and no content
	now := s.opts.Now()
	if code, text := s.robotRefusal(rc, q, body, &msg, now); code != 0 {
		s.mu.Lock()
		s.robotStatsLocked(tok).Refused++
		s.mu.Unlock()
		s.oapiError(w, path, code, text)
		return
	}

	s.mu.Lock()
	st := s.robotStatsLocked(tok)
	if limited, blocks := s.robotLimitedLocked(tok, now); limited {
		st.Throttled++
		if blocks {
			st.Blocks++
		}
		s.c.robotThrottled++
		s.mu.Unlock()
		s.oapiError(w, path, dingtalk.ErrcodeRobotTooFast, msgRobotTooFast)
		return
	}
	replay := false
	if msg.MsgUUID != "" {
		_, replay = s.robotIDs[msg.MsgUUID]
		s.robotIDs[msg.MsgUUID] = struct{}{}
	}
	if !replay {
		s.executeLocked(path, body, true, tok, msg.MsgUUID)
		st.Executed++
	}
	s.mu.Unlock()
	s.answerOK(w, path, nil)
}

// robotStatsLocked is robot tok's counters, created on first use.
func (s *Server) robotStatsLocked(tok string) *RobotStats {
	st := s.c.robots[tok]
	if st == nil {
		st = &RobotStats{}
		s.c.robots[tok] = st
	}
	return st
}

// robotMinute is one robot's limiter state.
type robotMinute struct {
	sends   []time.Time // sends let through in the last minute, oldest first
	blocked time.Time   // the end of the robot's block
}

// robotLimitedLocked applies Options.RobotPerMinute to robot tok at now:
// past the limit in any minute (a sliding 60 s window of the sends it let
// through), the robot is blocked for 10 minutes, during which every send is
// refused and the block is not extended. blocks reports that this send
// started the block.
func (s *Server) robotLimitedLocked(tok string, now time.Time) (limited, blocks bool) {
	if s.opts.RobotPerMinute <= 0 {
		return false, false
	}
	rm := s.robotMinutes[tok]
	if rm == nil {
		rm = &robotMinute{}
		s.robotMinutes[tok] = rm
	}
	if now.Before(rm.blocked) {
		return true, false
	}
	i := 0
	for i < len(rm.sends) && now.Sub(rm.sends[i]) >= time.Minute {
		i++
	}
	rm.sends = rm.sends[i:]
	if len(rm.sends) >= s.opts.RobotPerMinute {
		rm.blocked = now.Add(RobotBlockTime)
		rm.sends = nil
		return true, true
	}
	rm.sends = append(rm.sends, now)
	return false, false
}

// Robot is what the robot with access token tok saw since the last
// ResetCounters.
func (s *Server) Robot(tok string) RobotStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.c.robots[tok]; st != nil {
		return *st
	}
	return RobotStats{}
}

// Robots is what each robot sent to saw since the last ResetCounters, by
// access token. A send with a token the fake does not know (300005) counts
// for no robot.
func (s *Server) Robots() map[string]RobotStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]RobotStats, len(s.c.robots))
	for tok, st := range s.c.robots {
		out[tok] = *st
	}
	return out
}

// RobotThrottled is how many robot sends were answered 130101 (past
// Options.RobotPerMinute, or within a robot's 10-minute block), for every
// robot.
func (s *Server) RobotThrottled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.robotThrottled
}

// RobotBlockedUntil is the end of robot tok's current 10-minute block, or
// the zero time when it is not blocked at Options.Now.
func (s *Server) RobotBlockedUntil(tok string) time.Time {
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if rm := s.robotMinutes[tok]; rm != nil && now.Before(rm.blocked) {
		return rm.blocked
	}
	return time.Time{}
}

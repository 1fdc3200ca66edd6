package deferral

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/outbox"
)

// maxMerge bounds the sends read for one merged message.
const maxMerge = 100

// merged is a run of a robot's queued messages sent as one.
type merged struct {
	sends []*outbox.Send
	body  []byte
	query string
}

// robotMessage is the part of a robot message merging reads.
type robotMessage struct {
	MsgType  string                    `json:"msgtype"`
	Text     *struct{ Content string } `json:"text"`
	Markdown *struct {
		Title string `json:"title"`
		Text  string `json:"text"`
	} `json:"markdown"`
	At *robotAt `json:"at"`
	// MsgUUID is the robot's idempotency key: DingTalk drops a repeat of
	// a message carrying one it has seen. Merged, the key would be lost
	// and a repeat shown twice, so such a message goes alone.
	MsgUUID string `json:"msgUuid"`
}

type robotAt struct {
	AtMobiles []string `json:"atMobiles,omitempty"`
	AtUserIds []string `json:"atUserIds,omitempty"`
	IsAtAll   bool     `json:"isAtAll,omitempty"`
}

// merge makes one markdown message of the longest run of text and markdown
// messages (without a msgUuid of their own) at the head of queued (a robot's queue, oldest first) that fits
// DingTalk's body limit: each part under its own heading, the union of
// their @ mentions. Nil when fewer than two would go together. The merged
// message goes with the query of the part whose signature is good the
// longest (every part is to the same robot), byte for byte.
func merge(queued []*outbox.Send, now time.Time) *merged {
	var parts []part
	var at robotAt
	mobiles, users := map[string]bool{}, map[string]bool{}
	var best *outbox.Send
	var bestEnd time.Time
	var body []byte
	for _, s := range queued {
		p, ok := readPart(s)
		if !ok || !s.Due.After(now) {
			break // another type, or unreadable: it goes alone, in its turn
		}
		next := at
		next.AtMobiles, next.AtUserIds = union(at.AtMobiles, p.at.AtMobiles, mobiles), union(at.AtUserIds, p.at.AtUserIds, users)
		next.IsAtAll = at.IsAtAll || p.at.IsAtAll
		b := render(append(parts, p), next)
		if len(b) > dingtalk.RobotMaxBody {
			break
		}
		parts, at, body = append(parts, p), next, b
		end, signed := SignedUntil(s.Query)
		if best == nil || signed && end.After(bestEnd) {
			best, bestEnd = s, end
		}
	}
	if len(parts) < 2 {
		return nil
	}
	sends := make([]*outbox.Send, len(parts))
	for i := range parts {
		sends[i] = queued[i]
	}
	return &merged{sends: sends, body: body, query: best.Query}
}

type part struct {
	title, text string
	at          robotAt
}

// readPart reads a text or markdown robot message.
func readPart(s *outbox.Send) (part, bool) {
	var m robotMessage
	if json.Unmarshal(s.Body, &m) != nil || m.MsgUUID != "" {
		return part{}, false
	}
	var p part
	switch {
	case m.MsgType == "text" && m.Text != nil:
		p.text = m.Text.Content
		p.title, _, _ = strings.Cut(strings.TrimSpace(p.text), "\n")
		if r := []rune(p.title); len(r) > 40 {
			p.title = string(r[:40]) + "…"
		}
	case m.MsgType == "markdown" && m.Markdown != nil:
		p.title, p.text = m.Markdown.Title, m.Markdown.Text
	default:
		return part{}, false
	}
	if m.At != nil {
		p.at = *m.At
	}
	return p, true
}

// render is the merged markdown message of parts.
func render(parts []part, at robotAt) []byte {
	var sb strings.Builder
	for i, p := range parts {
		if i > 0 {
			sb.WriteString("\n\n---\n\n")
		}
		sb.WriteString("#### ")
		sb.WriteString(strconv.Itoa(i + 1))
		sb.WriteString(". ")
		sb.WriteString(p.title)
		sb.WriteString("\n\n")
		sb.WriteString(p.text)
	}
	title := parts[0].title
	if title == "" {
		title = "messages"
	}
	title = strconv.Itoa(len(parts)) + " messages: " + title
	b, _ := json.Marshal(struct {
		MsgType  string `json:"msgtype"`
		Markdown struct {
			Title string `json:"title"`
			Text  string `json:"text"`
		} `json:"markdown"`
		At robotAt `json:"at"`
	}{MsgType: "markdown", Markdown: struct {
		Title string `json:"title"`
		Text  string `json:"text"`
	}{title, sb.String()}, At: at})
	return b
}

// union appends to have the values of add it does not hold yet.
func union(have, add []string, seen map[string]bool) []string {
	out := have
	for _, v := range add {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

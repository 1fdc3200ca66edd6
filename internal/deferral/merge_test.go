package deferral

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/outbox"
)

func robot(i int, body string, query string, due time.Time) *outbox.Send {
	return &outbox.Send{ID: fmt.Sprint("s", i), Queue: "robot:t", Route: "/robot/send", Query: query, Body: []byte(body), Due: due}
}

type mergedMsg struct {
	MsgType  string `json:"msgtype"`
	Markdown struct {
		Title string `json:"title"`
		Text  string `json:"text"`
	} `json:"markdown"`
	At robotAt `json:"at"`
}

func TestMergeTextAndMarkdownWithMentions(t *testing.T) {
	now := time.Now()
	due := now.Add(time.Hour)
	q := []*outbox.Send{
		robot(0, `{"msgtype":"text","text":{"content":"disk full on db-1\nused 99%"},"at":{"atMobiles":["138"],"isAtAll":false}}`, "access_token=t", due),
		robot(1, `{"msgtype":"markdown","markdown":{"title":"cpu","text":"**cpu** high"},"at":{"atMobiles":["138","139"],"atUserIds":["u1"]}}`, "access_token=t", due),
		robot(2, `{"msgtype":"text","text":{"content":"third"},"at":{"isAtAll":true}}`, "access_token=t", due),
		robot(3, `{"msgtype":"link","link":{"title":"x","text":"y","messageUrl":"http://e"}}`, "access_token=t", due),
		robot(4, `{"msgtype":"text","text":{"content":"after the link"}}`, "access_token=t", due),
	}
	m := merge(q, now)
	if m == nil {
		t.Fatal("three text/markdown messages at the head were not merged")
	}
	if got := len(m.sends); got != 3 {
		t.Fatalf("merged %d sends, want the 3 before the link (other types are never merged, nor what follows them)", got)
	}
	var msg mergedMsg
	if err := json.Unmarshal(m.body, &msg); err != nil {
		t.Fatal(err)
	}
	if msg.MsgType != "markdown" {
		t.Fatalf("msgtype %q", msg.MsgType)
	}
	for i, want := range []string{"#### 1. disk full on db-1", "used 99%", "#### 2. cpu", "**cpu** high", "#### 3. third"} {
		if !strings.Contains(msg.Markdown.Text, want) {
			t.Errorf("part %d: merged text lacks %q:\n%s", i, want, msg.Markdown.Text)
		}
	}
	if strings.Index(msg.Markdown.Text, "disk full") > strings.Index(msg.Markdown.Text, "third") {
		t.Error("parts out of their queue order")
	}
	slices.Sort(msg.At.AtMobiles)
	if !slices.Equal(msg.At.AtMobiles, []string{"138", "139"}) || !slices.Equal(msg.At.AtUserIds, []string{"u1"}) || !msg.At.IsAtAll {
		t.Errorf("mentions %+v, want the union of all three", msg.At)
	}
	if !strings.HasPrefix(msg.Markdown.Title, "3 messages") {
		t.Errorf("title %q", msg.Markdown.Title)
	}
}

func TestMergeStaysUnderTheBodyLimit(t *testing.T) {
	now := time.Now()
	var q []*outbox.Send
	for i := range 60 {
		body, _ := json.Marshal(map[string]any{"msgtype": "text", "text": map[string]string{"content": fmt.Sprintf("alert %d %s", i, strings.Repeat("字", 1000))}})
		q = append(q, robot(i, string(body), "access_token=t", now.Add(time.Hour)))
	}
	m := merge(q, now)
	if m == nil {
		t.Fatal("not merged")
	}
	if len(m.body) > dingtalk.RobotMaxBody {
		t.Fatalf("merged body %d bytes, over DingTalk's %d", len(m.body), dingtalk.RobotMaxBody)
	}
	if len(m.sends) < 2 || len(m.sends) >= 60 {
		t.Fatalf("merged %d of 60 sends of ~3 KB each", len(m.sends))
	}
	// The next merge starts where this one stopped.
	if m2 := merge(q[len(m.sends):], now); m2 == nil || len(m2.body) > dingtalk.RobotMaxBody {
		t.Fatal("the rest did not merge under the limit")
	}
	// One message over the limit alone is not merged.
	big, _ := json.Marshal(map[string]any{"msgtype": "text", "text": map[string]string{"content": strings.Repeat("x", dingtalk.RobotMaxBody)}})
	if m := merge([]*outbox.Send{robot(0, string(big), "", now.Add(time.Hour)), q[0]}, now); m != nil {
		t.Fatal("a message over the limit was merged")
	}
}

func TestMergeKeepsTheLongestGoodSignature(t *testing.T) {
	now := time.Now()
	early := fmt.Sprint(now.Add(-50 * time.Minute).UnixMilli())
	late := fmt.Sprint(now.Add(-5 * time.Minute).UnixMilli())
	text := `{"msgtype":"text","text":{"content":"a"}}`
	q := []*outbox.Send{
		robot(0, text, "access_token=t&timestamp="+early+"&sign=s0", now.Add(10*time.Minute)),
		robot(1, text, "access_token=t&timestamp="+late+"&sign=s1", now.Add(55*time.Minute)),
		robot(2, text, "access_token=t&timestamp="+early+"&sign=s2", now.Add(10*time.Minute)),
	}
	m := merge(q, now)
	if m == nil || len(m.sends) != 3 {
		t.Fatal("not merged")
	}
	if m.query != q[1].Query {
		t.Fatalf("merged query %q, want the latest-signed part's, byte for byte", m.query)
	}
	// A part already due is not merged: it is dead, not sent.
	q[0].Due = now.Add(-time.Second)
	if m := merge(q, now); m != nil {
		t.Fatal("a head past its due time was merged")
	}
}

func TestMergeNeedsTwo(t *testing.T) {
	now := time.Now()
	if m := merge([]*outbox.Send{robot(0, `{"msgtype":"text","text":{"content":"a"}}`, "", now.Add(time.Hour))}, now); m != nil {
		t.Fatal("a single message was merged")
	}
	if m := merge([]*outbox.Send{robot(0, `not json`, "", now.Add(time.Hour)), robot(1, `{"msgtype":"text","text":{"content":"a"}}`, "", now.Add(time.Hour))}, now); m != nil {
		t.Fatal("an unreadable head was merged")
	}
}

// A message with its own msgUuid is never merged: the run stops before it,
// and it goes alone in its turn, its key intact.
func TestMergeStopsAtAKeyedMessage(t *testing.T) {
	now := time.Now()
	due := now.Add(time.Hour)
	q := []*outbox.Send{
		robot(0, `{"msgtype":"text","text":{"content":"first"}}`, "access_token=t", due),
		robot(1, `{"msgtype":"text","text":{"content":"second"}}`, "access_token=t", due),
		robot(2, `{"msgtype":"text","text":{"content":"keyed"},"msgUuid":"u-2"}`, "access_token=t", due),
		robot(3, `{"msgtype":"text","text":{"content":"after"}}`, "access_token=t", due),
	}
	m := merge(q, now)
	if m == nil || len(m.sends) != 2 || m.sends[1].ID != "s1" {
		t.Fatalf("merged %v; want the first two only", m)
	}
	if m := merge(q[2:], now); m != nil {
		t.Fatalf("a keyed message at the head was merged: %d parts", len(m.sends))
	}
}

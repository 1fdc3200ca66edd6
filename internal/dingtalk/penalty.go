package dingtalk

import "time"

// Penalty is when what an answer throttled may be called again, as DingTalk
// rules it, from now: zero for an answer that blocks nothing. It is the one
// owner of these rules; pacing, the fleet, the attempt loop and the proxy's
// answers all ask it.
//   - a QPS throttle (90018 and kin, HTTP 429): ThrottlePenalty from now, or
//     the later end a 90002's message names;
//   - a per-minute limit (90006, 90005, api QpmLimit*): the minute's turn;
//   - a custom robot past its minute: RobotBlock from now;
//   - the egress IP's ban: the length the ban answer gave, else
//     IPBanDuration.
func Penalty(r Result, now time.Time) time.Time {
	switch r.Reason {
	case ReasonRateLimited, ReasonHTTP429:
		until := now.Add(ThrottlePenalty * time.Second)
		if r.PenaltyEnd.After(until) {
			until = r.PenaltyEnd
		}
		return until
	case ReasonMinuteLimit:
		return now.Truncate(time.Minute).Add(time.Minute)
	case ReasonRobotThrottled:
		return now.Add(RobotBlock * time.Second)
	case ReasonIPBan:
		if r.Wait > 0 {
			return now.Add(r.Wait)
		}
		return now.Add(IPBanDuration * time.Second)
	}
	return time.Time{}
}

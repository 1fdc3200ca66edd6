package pacing

import "github.com/dingproxy/dingproxy/internal/dingtalk"

// Answered takes the attempt loop's feedback on an attempt on name: a
// throttle answer (90018 and its kin, HTTP 429) cuts the path's rate and
// blocks it for DingTalk's penalty (Throttled); a success raises a cut rate
// again (Succeeded); anything else changes nothing. OnRate, if set, hears
// of every change of a path's rate.
func (p *Pacer) Answered(name string, r dingtalk.Result) {
	switch r.Reason {
	case dingtalk.ReasonRateLimited, dingtalk.ReasonHTTP429:
		p.Throttled(name, r.PenaltyEnd)
		if p.OnRate != nil {
			p.OnRate(name, p.Rate(name))
		}
	case dingtalk.ReasonSuccess:
		if rate, raised := p.Succeeded(name); raised && p.OnRate != nil {
			p.OnRate(name, rate)
		}
	}
}

package main

import "github.com/dingproxy/dingproxy/internal/dingtalktest"

// demoChaos returns the share of calls a fault spec touches.
func demoChaos(spec string) (float64, error) {
	c, err := dingtalktest.ParseChaos(spec)
	if err != nil {
		return 0, err
	}
	var p float64
	for _, w := range c.Faults {
		p += w.P
	}
	return p, nil
}

package dingtalktest

import (
	"context"
	"errors"
	"net"
	"sync"
)

// An outage that refuses connections: StopListening closes the listener and
// every connection, so dials to the fake's address are refused
// (ECONNREFUSED), as when DingTalk is unreachable; ResumeListening listens
// again on the same address, so a client or proxy pointed at it reconnects.

// period is one listening period of a started server, from Start or
// ResumeListening to StopListening.
type period struct {
	// ctx ends with the period; each request's context ends with it.
	ctx    context.Context
	cancel context.CancelFunc
	// handlers counts the handlers that entered during the period; Add only
	// under Server.mu while the server is not down.
	handlers sync.WaitGroup
}

func newPeriod() *period {
	ctx, cancel := context.WithCancel(context.Background())
	return &period{ctx: ctx, cancel: cancel}
}

// StopListening starts an outage: it closes the listener and every
// connection (a client's pooled connection then fails on its next use; Go's
// transport retries only replayable requests, such as a GET, on a new one),
// ends requests in Hang, Latency or EndlessChunked unexecuted,
// and waits for running handlers to return. When it returns no request is
// executed until ResumeListening, and a dial to the fake's address is
// refused. Meanwhile the port stays bound, not listening (on Unix), so that
// no outgoing connection or listener on port 0 is given it. Counters,
// tokens, scripts and limits are kept. It fails before Start, after Close, or when already
// stopped.
func (s *Server) StopListening() error {
	s.listenMu.Lock()
	defer s.listenMu.Unlock()
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return errors.New("dingtalktest: StopListening after Close")
	case !s.started:
		s.mu.Unlock()
		return errors.New("dingtalktest: StopListening before Start")
	case s.down:
		s.mu.Unlock()
		return errors.New("dingtalktest: StopListening: already stopped")
	}
	s.down = true
	p, hs, served, addr := s.period, s.hs, s.served, s.ln.Addr()
	s.mu.Unlock()

	_ = hs.Close() // first, so that requests ended below cannot answer
	<-served
	p.cancel()
	res, err := reserve(addr)
	if err == nil {
		s.mu.Lock()
		if s.closed { // Close ran meanwhile and did not see it
			_ = res.close()
		} else {
			s.reserved = res
		}
		s.mu.Unlock()
	}
	p.handlers.Wait()
	return nil
}

// ResumeListening ends an outage: it listens again on the address the fake
// had, and serves. It fails after Close, when not stopped, or when the
// address cannot be listened on (then the outage goes on and it may be
// called again).
func (s *Server) ResumeListening() error {
	s.listenMu.Lock()
	defer s.listenMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("dingtalktest: ResumeListening after Close")
	}
	if !s.down {
		return errors.New("dingtalktest: ResumeListening: not stopped")
	}
	var (
		ln  net.Listener
		err error
	)
	if s.reserved != nil {
		ln, err = s.reserved.listen()
		s.reserved = nil
	} else {
		ln, err = net.Listen("tcp", s.ln.Addr().String())
	}
	if err != nil {
		return err
	}
	s.down = false
	s.period = newPeriod()
	s.serveLocked(ln)
	return nil
}

// Listening reports whether the fake is listening: started, not closed, and
// not in an outage.
func (s *Server) Listening() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started && !s.closed && !s.down
}

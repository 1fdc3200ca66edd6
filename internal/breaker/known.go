package breaker

// Known says whether route has a breaker here: this proxy has had calls
// on it. The fleet holds the openings other proxies met on such routes
// before those on routes it has never seen.
func (s *Set) Known(route string) bool {
	s.mu.RLock()
	_, ok := s.routes[route]
	s.mu.RUnlock()
	return ok
}

package jwkscache

import "slices"

// A denial (DenyKey) refuses a kid at once, even from a stale set and
// across refreshes, until AllowKey. The set is copied on write so the read
// path checks it without a lock.

// isDenied reports whether kid is denied.
func (p *provider) isDenied(kid string) bool {
	if d := p.denied.Load(); d != nil {
		_, ok := (*d)[kid]
		return ok
	}
	return false
}

// setDenied adds or removes kid from the denied set and reports whether
// that changed it.
func (p *provider) setDenied(kid string, deny bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.isDenied(kid) == deny {
		return false
	}
	next := make(map[string]struct{})
	if d := p.denied.Load(); d != nil {
		for k := range *d {
			next[k] = struct{}{}
		}
	}
	if deny {
		next[kid] = struct{}{}
	} else {
		delete(next, kid)
	}
	if len(next) == 0 {
		p.denied.Store(nil)
		return true
	}
	p.denied.Store(&next)
	return true
}

// deniedKIDs returns the denied kids, sorted.
func (p *provider) deniedKIDs() []string {
	d := p.denied.Load()
	if d == nil {
		return nil
	}
	out := make([]string, 0, len(*d))
	for k := range *d {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

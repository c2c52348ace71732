package controlplane

import (
	"errors"
	"strings"
)

// eachETag calls fn for each entity tag of a comma-separated list
// (RFC 9110, section 8.8.3): `"opaque"` or `W/"opaque"`, where opaque is
// etagc characters (which include the comma). Empty list elements are
// skipped, as RFC 9110 section 5.6.1 asks. It fails on anything else.
func eachETag(list string, fn func(opaque string, weak bool)) error {
	s := list
	for {
		s = strings.TrimLeft(s, " \t,")
		if s == "" {
			return nil
		}
		weak := false
		if strings.HasPrefix(s, "W/") {
			weak, s = true, s[2:]
		}
		if s == "" || s[0] != '"' {
			return errors.New(`an entity tag must be quoted, as "version" or W/"version"`)
		}
		end := 1
		for end < len(s) && s[end] != '"' {
			if c := s[end]; c < 0x21 || c == 0x7f {
				return errors.New("an entity tag holds a control character or a space")
			}
			end++
		}
		if end == len(s) {
			return errors.New("an entity tag lacks its closing quote")
		}
		fn(s[1:end], weak)
		s = strings.TrimLeft(s[end+1:], " \t")
		if s != "" && s[0] != ',' {
			return errors.New("entity tags must be separated by commas")
		}
	}
}

// noneMatch evaluates If-None-Match (RFC 9110, section 13.1.2) against the
// strong entity tag etag (quoted): true when the list is "*" or holds a tag
// whose opaque value equals etag's (the weak comparison). A malformed list
// matches only by its well-formed tags before the fault.
func noneMatch(vals []string, etag string) bool {
	if len(etag) < 2 {
		return false
	}
	opaque := etag[1 : len(etag)-1]
	for _, v := range vals {
		if strings.TrimSpace(v) == "*" {
			return true
		}
		// A fast path for the common case: exactly the tag we sent.
		if v == etag {
			return true
		}
		found := false
		_ = eachETag(v, func(o string, _ bool) {
			found = found || o == opaque
		})
		if found {
			return true
		}
	}
	return false
}

// wantsRevalidation reports whether request Cache-Control values ask for a
// revalidation with the origin (RFC 9111, section 5.2.1): no-cache, or
// max-age=0. Directive names are case-insensitive; values may be quoted;
// other directives are ignored.
func wantsRevalidation(vals []string) bool {
	for _, v := range vals {
		for v != "" {
			var d string
			d, v = nextDirective(v)
			name, arg, hasArg := strings.Cut(d, "=")
			name = strings.TrimSpace(name)
			switch {
			case strings.EqualFold(name, "no-cache"):
				return true
			case strings.EqualFold(name, "max-age") && hasArg:
				arg = strings.TrimSpace(arg)
				if len(arg) >= 2 && arg[0] == '"' && arg[len(arg)-1] == '"' {
					arg = arg[1 : len(arg)-1]
				}
				if arg != "" && strings.Trim(arg, "0") == "" {
					return true
				}
			}
		}
	}
	return false
}

// nextDirective splits the first directive off a Cache-Control list,
// honouring quoted strings (which may hold commas).
func nextDirective(s string) (directive, rest string) {
	inQuote := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && inQuote:
			i++
		case c == '"':
			inQuote = !inQuote
		case c == ',' && !inQuote:
			return s[:i], s[i+1:]
		}
	}
	return s, ""
}

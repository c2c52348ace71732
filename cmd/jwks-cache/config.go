package main

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/store/redisstore"
	"github.com/redis/go-redis/v9"
	yaml "go.yaml.in/yaml/v4"
)

// Defaults of the daemon's configuration.
const (
	defaultListen          = "127.0.0.1:8080"
	defaultBoltPath        = "./jwks-cache.db"
	defaultShutdownTimeout = 15 * time.Second
	defaultRedisPrefix     = redisstore.DefaultPrefix
)

// Environment variables read by serve. They override the file.
const (
	envListen     = "JWKS_CACHE_LISTEN"      // host:port
	envAdminToken = "JWKS_CACHE_ADMIN_TOKEN" // comma-separated; replaces adminTokens
	envStore      = "JWKS_CACHE_STORE"       // bolt:PATH, redis://..., rediss://..., memory
	envStoreKey   = "JWKS_CACHE_STORE_KEY"   // comma-separated base64 HMAC keys, the first signs
)

// Limits of the configuration file, so that a hostile or broken file
// cannot make the loader spend unbounded memory.
const (
	maxConfigBytes = 4 << 20
	maxConfigNodes = 200_000 // nodes visited, aliases expanded
	maxErrors      = 20      // errors reported before giving up
	minTokenLen    = 16
)

// config is the daemon's configuration: the file, with defaults applied
// and the environment's overrides.
type config struct {
	Listen          string
	AdminTokens     []string
	TenantTokens    map[string][]string
	ProtectMetrics  bool
	ShutdownTimeout time.Duration
	LogLevel        slog.Level
	Store           storeConfig
	Security        securityConfig
	Providers       []providerConfig
	TokensInFile    bool // the file has adminTokens or tenantTokens
}

// storeConfig says where registrations and snapshots persist.
type storeConfig struct {
	Kind   string // storeBolt, storeRedis or storeMemory
	Path   string // bolt file
	URL    string // redis URL (may carry a password: never print it whole)
	Prefix string // redis key prefix
	KeyEnv string // the environment variable holding the HMAC keys
	Keys   [][]byte
}

const (
	storeBolt   = "bolt"
	storeRedis  = "redis"
	storeMemory = "memory"
)

// describe names the store for logs and errors, without secrets.
func (s storeConfig) describe() string {
	switch s.Kind {
	case storeBolt:
		return "bolt " + s.Path
	case storeRedis:
		return "redis " + redactURL(s.URL) + " prefix " + strconv.Quote(s.Prefix)
	}
	return s.Kind
}

// securityConfig is the fetch policy applied to every provider.
type securityConfig struct {
	AllowHTTP        bool
	AllowedDomains   []string
	AllowedAddresses []netip.Prefix
	RootCAFile       string
	// RootCAs, when set by code (the demo), replaces RootCAFile.
	RootCAs *x509.CertPool
}

// providerConfig is one provider of the file, defaults applied.
type providerConfig struct {
	Reg  jwkscache.Registration
	Path string // "providers[2]"
	Pos  string // "FILE:LINE:COL" of the entry
}

func (p providerConfig) name() string { return p.Reg.TenantID + "/" + p.Reg.ProviderID }

func defaultConfig() *config {
	return &config{
		Listen:          defaultListen,
		ShutdownTimeout: defaultShutdownTimeout,
		LogLevel:        slog.LevelInfo,
		Store:           storeConfig{Kind: storeBolt, Path: defaultBoltPath},
	}
}

// loadConfigFile reads the file at path (none: defaults) and applies the
// environment.
func loadConfigFile(path string, getenv func(string) string) (*config, error) {
	if path == "" {
		return loadConfig("", nil, getenv)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxConfigBytes)
	}
	return loadConfig(path, data, getenv)
}

// loadConfig parses a configuration file's content (name is used in
// errors) and applies the environment. Every error names the path of the
// key at fault (providers[2].jwksUrll) and its line; all of them are
// reported, up to maxErrors.
func loadConfig(name string, data []byte, getenv func(string) string) (*config, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	if name == "" {
		name = "config"
	}
	l := &loader{file: name, cfg: defaultConfig()}
	if len(bytes.TrimSpace(data)) > 0 {
		l.parse(data)
	}
	if len(l.errs) == 0 {
		l.env(getenv)
	}
	if len(l.errs) > 0 {
		return nil, &configError{errs: l.errs}
	}
	return l.cfg, nil
}

// configError is every problem found in a configuration.
type configError struct{ errs []string }

func (e *configError) Error() string {
	if len(e.errs) == 1 {
		return "invalid configuration: " + e.errs[0]
	}
	return "invalid configuration:\n  " + strings.Join(e.errs, "\n  ")
}

// loader walks the YAML node tree of the file.
type loader struct {
	file  string
	cfg   *config
	errs  []string
	nodes int
}

// errTooMany stops the walk once maxErrors are recorded.
var errTooMany = errors.New("too many errors")

func (l *loader) failAt(n *yaml.Node, path, format string, args ...any) {
	if len(l.errs) >= maxErrors {
		panic(errTooMany)
	}
	msg := fmt.Sprintf(format, args...)
	where := l.file
	if n != nil && n.Line > 0 {
		where = fmt.Sprintf("%s:%d:%d", l.file, n.Line, n.Column)
	}
	if path != "" {
		msg = path + ": " + msg
	}
	e := where + ": " + msg
	if !slices.Contains(l.errs, e) {
		l.errs = append(l.errs, e)
	}
	if len(l.errs) >= maxErrors {
		l.errs = append(l.errs, "(further errors not shown)")
		panic(errTooMany)
	}
}

func (l *loader) envFail(name, format string, args ...any) {
	l.errs = append(l.errs, "environment: "+name+": "+fmt.Sprintf(format, args...))
}

func (l *loader) parse(data []byte) {
	defer func() {
		if r := recover(); r != nil && r != errTooMany {
			panic(r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return // comments only
		}
		l.failAt(nil, "", "not valid YAML: %s", yamlError(err))
		return
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		l.failAt(&extra, "", "only one YAML document is allowed")
		return
	}
	root := l.deref(&doc)
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return
		}
		root = l.deref(root.Content[0])
	}
	if isNull(root) {
		return
	}
	var defaults, providers *yaml.Node
	l.mapping(root, "", func(key string, kn, v *yaml.Node, path string) {
		switch key {
		case "listen":
			if s, ok := l.str(v, path); ok {
				l.cfg.Listen = s
				if err := checkListen(s); err != nil {
					l.failAt(v, path, "%v", err)
				}
			}
		case "adminTokens":
			l.cfg.AdminTokens = l.tokens(v, path)
			l.cfg.TokensInFile = true
		case "tenantTokens":
			l.cfg.TokensInFile = true
			l.cfg.TenantTokens = map[string][]string{}
			l.mapping(v, path, func(tenant string, kn, tv *yaml.Node, tpath string) {
				if msg := checkTenant(tenant); msg != "" {
					l.failAt(kn, tpath, "%s", msg)
				}
				l.cfg.TenantTokens[tenant] = l.tokens(tv, tpath)
			})
		case "protectMetrics":
			if b, ok := l.boolean(v, path); ok {
				l.cfg.ProtectMetrics = b
			}
		case "shutdownTimeout":
			if s, ok := l.str(v, path); ok {
				d, err := parseISODuration(s)
				switch {
				case err != nil:
					l.failAt(v, path, "%v", err)
				case d <= 0:
					l.failAt(v, path, "must be positive")
				default:
					l.cfg.ShutdownTimeout = d
				}
			}
		case "logLevel":
			if s, ok := l.str(v, path); ok {
				if err := l.cfg.LogLevel.UnmarshalText([]byte(s)); err != nil {
					l.failAt(v, path, "must be debug, info, warn or error, got %q", s)
				}
			}
		case "store":
			l.store(v, path)
		case "security":
			l.security(v, path)
		case "defaults":
			defaults = v
		case "providers":
			providers = v
		default:
			l.unknown(kn, path)
		}
	})
	l.providers(defaults, providers)
}

// yamlError shortens the YAML library's error text.
func yamlError(err error) string {
	return strings.TrimPrefix(err.Error(), "yaml: ")
}

// unknown reports an unknown key.
func (l *loader) unknown(kn *yaml.Node, path string) {
	l.failAt(kn, path, "unknown field")
}

// deref follows aliases, counting nodes against maxConfigNodes.
func (l *loader) deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil; i++ {
		if i > 100 {
			l.failAt(n, "", "alias chain too long")
			panic(errTooMany)
		}
		n = n.Alias
	}
	l.nodes++
	if l.nodes > maxConfigNodes {
		l.failAt(n, "", "too many nodes (more than %d, aliases expanded)", maxConfigNodes)
		panic(errTooMany)
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// mapping calls fn for each key of the mapping n, in order, with the
// key's path. Keys must be unique strings.
func (l *loader) mapping(n *yaml.Node, path string, fn func(key string, kn, v *yaml.Node, path string)) {
	n = l.deref(n)
	if n.Kind != yaml.MappingNode {
		l.failAt(n, path, "must be a mapping, got %s", kindName(n))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, v := l.deref(n.Content[i]), n.Content[i+1]
		if kn.Kind != yaml.ScalarNode || kn.ShortTag() != "!!str" && kn.ShortTag() != "!!merge" {
			l.failAt(kn, path, "keys must be strings, got %s", kindName(kn))
			continue
		}
		key := kn.Value
		kpath := joinPath(path, key)
		if kn.ShortTag() == "!!merge" {
			l.failAt(kn, kpath, "merge keys are not supported")
			continue
		}
		if seen[key] {
			l.failAt(kn, kpath, "appears more than once")
			continue
		}
		seen[key] = true
		fn(key, kn, v, kpath)
	}
}

// sequence calls fn for each item of the sequence n.
func (l *loader) sequence(n *yaml.Node, path string, fn func(i int, v *yaml.Node, path string)) {
	n = l.deref(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.SequenceNode {
		l.failAt(n, path, "must be a list, got %s", kindName(n))
		return
	}
	for i, v := range n.Content {
		fn(i, v, fmt.Sprintf("%s[%d]", path, i))
	}
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str":
			return "a string"
		case "!!int", "!!float":
			return "a number"
		case "!!bool":
			return "a boolean"
		case "!!null":
			return "null"
		}
		return "a value of type " + n.ShortTag()
	}
	return "an unexpected node"
}

func (l *loader) str(n *yaml.Node, path string) (string, bool) {
	n = l.deref(n)
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		l.failAt(n, path, "must be a string, got %s (quote it)", kindName(n))
		return "", false
	}
	return n.Value, true
}

func (l *loader) boolean(n *yaml.Node, path string) (bool, bool) {
	n = l.deref(n)
	var b bool
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
		l.failAt(n, path, "must be true or false, got %s", kindName(n))
		return false, false
	}
	return b, true
}

func (l *loader) strList(n *yaml.Node, path string) []string {
	out := []string{}
	l.sequence(n, path, func(_ int, v *yaml.Node, p string) {
		if s, ok := l.str(v, p); ok {
			out = append(out, s)
		}
	})
	return out
}

func (l *loader) tokens(n *yaml.Node, path string) []string {
	out := []string{}
	l.sequence(n, path, func(_ int, v *yaml.Node, p string) {
		if s, ok := l.str(v, p); ok {
			if msg := checkToken(s); msg != "" {
				l.failAt(v, p, "%s", msg) // never the token itself
			}
			out = append(out, s)
		}
	})
	return out
}

func (l *loader) store(n *yaml.Node, path string) {
	var kinds []string
	var where *yaml.Node
	sc := storeConfig{}
	l.mapping(n, path, func(key string, kn, v *yaml.Node, p string) {
		switch key {
		case storeBolt:
			if s, ok := l.str(v, p); ok {
				if s == "" {
					l.failAt(v, p, "must not be empty")
				}
				sc.Kind, sc.Path = storeBolt, s
			}
			kinds, where = append(kinds, key), kn
		case storeRedis:
			if s, ok := l.str(v, p); ok {
				if err := checkRedisURL(s); err != nil {
					l.failAt(v, p, "%v", err)
				}
				sc.Kind, sc.URL = storeRedis, s
			}
			kinds, where = append(kinds, key), kn
		case storeMemory:
			if b, ok := l.boolean(v, p); ok {
				if !b {
					l.failAt(v, p, "must be true (choose bolt or redis otherwise)")
				}
				sc.Kind = storeMemory
			}
			kinds, where = append(kinds, key), kn
		case "prefix":
			if s, ok := l.str(v, p); ok {
				if err := checkPrefix(s); err != nil {
					l.failAt(v, p, "%v", err)
				}
				sc.Prefix = s
			}
		case "keyEnv":
			if s, ok := l.str(v, p); ok {
				if !validEnvName(s) {
					l.failAt(v, p, "must be an environment variable name such as JWKS_CACHE_REDIS_KEY")
				}
				sc.KeyEnv = s
			}
		default:
			l.unknown(kn, p)
		}
	})
	switch {
	case len(kinds) == 0:
		l.failAt(l.deref(n), path, "needs one of bolt, redis or memory")
		return
	case len(kinds) > 1:
		l.failAt(where, path, "has %s: choose one", strings.Join(kinds, " and "))
		return
	}
	if sc.Prefix != "" && sc.Kind != storeRedis {
		l.failAt(l.deref(n), joinPath(path, "prefix"), "only applies to a redis store")
	}
	if sc.KeyEnv != "" && sc.Kind == storeMemory {
		l.failAt(l.deref(n), joinPath(path, "keyEnv"), "a memory store keeps no records to sign")
	}
	if sc.Kind == storeRedis && sc.Prefix == "" {
		sc.Prefix = defaultRedisPrefix
	}
	l.cfg.Store = sc
}

func (l *loader) security(n *yaml.Node, path string) {
	s := &l.cfg.Security
	l.mapping(n, path, func(key string, kn, v *yaml.Node, p string) {
		switch key {
		case "allowHttp":
			if b, ok := l.boolean(v, p); ok {
				s.AllowHTTP = b
			}
		case "allowedDomains":
			s.AllowedDomains = l.strList(v, p)
			l.checkDomains(v, p, s.AllowedDomains)
		case "allowedAddresses":
			l.sequence(v, p, func(_ int, iv *yaml.Node, ip string) {
				if str, ok := l.str(iv, ip); ok {
					pfx, err := parsePrefix(str)
					if err != nil {
						l.failAt(iv, ip, "%v", err)
						return
					}
					s.AllowedAddresses = append(s.AllowedAddresses, pfx)
				}
			})
		case "rootCAFile":
			if str, ok := l.str(v, p); ok {
				if str == "" {
					l.failAt(v, p, "must not be empty")
				}
				s.RootCAFile = str
			}
		default:
			l.unknown(kn, p)
		}
	})
}

// checkDomains applies the library's rule for allowlist entries, through
// Registration.Validate, which checks a registration's allowedDomains
// exactly as New checks Options.AllowedDomains.
func (l *loader) checkDomains(n *yaml.Node, path string, domains []string) {
	n = l.deref(n)
	if n.Kind != yaml.SequenceNode || len(n.Content) != len(domains) {
		return // already reported
	}
	reg := jwkscache.Registration{TenantID: "x", ProviderID: "x", JWKSURL: "https://x.invalid/", AllowedDomains: domains}
	var re *jwkscache.RegistrationError
	if !errors.As(reg.Validate(), &re) {
		return
	}
	for _, f := range re.Fields {
		idx, ok := strings.CutPrefix(f.Field, "allowedDomains[")
		if !ok {
			continue
		}
		if i, err := strconv.Atoi(strings.TrimSuffix(idx, "]")); err == nil && i < len(n.Content) {
			l.failAt(n.Content[i], fmt.Sprintf("%s[%d]", path, i), "%s", f.Message)
		}
	}
}

// parsePrefix reads a CIDR prefix; a bare address is its own /32 or /128.
func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		if p != p.Masked() {
			return netip.Prefix{}, fmt.Errorf("%q has host bits set; did you mean %s?", s, p.Masked())
		}
		return p, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix such as 10.0.0.0/8 or an IP address", s)
}

// providers reads the providers, each under the defaults.
func (l *loader) providers(defaults, list *yaml.Node) {
	var defs []regMember
	if defaults != nil && !isNull(l.deref(defaults)) {
		before := len(l.errs)
		defs = l.regMembers(defaults, "defaults", false)
		if !l.checkMembers(defs) || len(l.errs) > before {
			return // each provider would repeat the defaults' errors
		}
	}
	if list == nil {
		return
	}
	seen := map[string]string{}
	l.sequence(list, "providers", func(i int, v *yaml.Node, path string) {
		v = l.deref(v)
		own := l.regMembers(v, path, true)
		if !l.checkMembers(own) {
			return
		}
		members := mergeMembers(defs, own)
		raw, err := l.membersJSON(members)
		if err != nil {
			l.failAt(v, path, "%v", err)
			return
		}
		var reg jwkscache.Registration
		if err := json.Unmarshal(raw, &reg); err != nil {
			l.failAt(v, path, "%s", regMessage(err, ""))
			return
		}
		name := reg.TenantID + "/" + reg.ProviderID
		if verr := reg.Validate(); verr != nil {
			var re *jwkscache.RegistrationError
			if !errors.As(verr, &re) {
				l.failAt(v, path, "%v (provider %s)", verr, name)
				return
			}
			for _, f := range re.Fields {
				n, p := findMember(members, f.Field)
				if n == nil {
					n, p = v, joinPath(path, f.Field)
				}
				l.failAt(n, p, "%s (provider %s)", f.Message, name)
			}
			return
		}
		if prev, dup := seen[name]; dup {
			l.failAt(v, path, "provider %s is already configured at %s", name, prev)
			return
		}
		seen[name] = path
		l.cfg.Providers = append(l.cfg.Providers, providerConfig{
			Reg: reg, Path: path, Pos: fmt.Sprintf("%s:%d:%d", l.file, v.Line, v.Column),
		})
	})
}

// regMember is one member of a registration in the file.
type regMember struct {
	name string
	path string
	key  *yaml.Node // for positions
	val  *yaml.Node
	sub  []regMember // the members of a nested object (retryPolicy)
}

// regMembers reads a mapping of registration members, refusing the names
// that jwkscache.Registration's JSON form does not have.
func (l *loader) regMembers(n *yaml.Node, path string, ids bool) []regMember {
	return l.regMembersOf(n, path, registrationFields, ids)
}

func (l *loader) regMembersOf(n *yaml.Node, path string, fields fieldSet, ids bool) []regMember {
	out := []regMember{}
	l.mapping(n, path, func(key string, kn, v *yaml.Node, p string) {
		if !fields.names[key] {
			msg := "unknown field"
			for known := range fields.names {
				if strings.EqualFold(known, key) {
					msg += fmt.Sprintf(" (names are case-sensitive: did you mean %s?)", known)
				}
			}
			l.failAt(kn, p, "%s", msg)
			return
		}
		if !ids && (key == "tenantId" || key == "providerId") {
			l.failAt(kn, p, "not allowed in defaults: set it in each provider")
			return
		}
		m := regMember{name: key, path: p, key: kn, val: l.deref(v)}
		if sub, ok := fields.nested[key]; ok && m.val.Kind == yaml.MappingNode {
			m.sub = l.regMembersOf(m.val, p, sub, ids)
		}
		out = append(out, m)
	})
	return out
}

// checkMembers decodes each member on its own, so that a bad value (a
// duration that is not ISO-8601, a string for a number) is reported at its
// own path. It reports whether all were good.
func (l *loader) checkMembers(ms []regMember) bool {
	ok := true
	var check func(ms []regMember, wrap func([]byte) []byte)
	check = func(ms []regMember, wrap func([]byte) []byte) {
		for _, m := range ms {
			if m.sub != nil {
				name := m.name
				check(m.sub, func(b []byte) []byte {
					return wrap(fmt.Appendf(nil, `{%q:%s}`, name, b))
				})
				continue
			}
			v, err := l.toJSON(m.val)
			if err != nil {
				l.failAt(m.val, m.path, "%v", err)
				ok = false
				continue
			}
			raw := wrap(fmt.Appendf(nil, `{%q:%s}`, m.name, v))
			var reg jwkscache.Registration
			if err := json.Unmarshal(raw, &reg); err != nil {
				l.failAt(m.val, m.path, "%s", regMessage(err, m.name))
				ok = false
			}
		}
	}
	check(ms, func(b []byte) []byte { return b })
	return ok
}

// regMessage is the text of a registration decoding error without the
// prefixes that the path already says.
func regMessage(err error, name string) string {
	msg := strings.TrimPrefix(err.Error(), jwkscache.ErrInvalidRegistration.Error()+": ")
	for _, p := range []string{"retryPolicy." + name + ": ", name + ": "} {
		msg = strings.TrimPrefix(msg, p)
	}
	return msg
}

// mergeMembers lays a provider's members over the defaults: a member of
// the provider replaces the default's, except that the members of a nested
// object (retryPolicy) are merged one by one.
func mergeMembers(defs, own []regMember) []regMember {
	out := slices.Clone(defs)
	for _, m := range own {
		i := slices.IndexFunc(out, func(d regMember) bool { return d.name == m.name })
		switch {
		case i < 0:
			out = append(out, m)
		case m.sub != nil && out[i].sub != nil:
			merged := out[i]
			merged.sub = mergeMembers(out[i].sub, m.sub)
			merged.path, merged.key, merged.val = m.path, m.key, m.val
			out[i] = merged
		default:
			out[i] = m
		}
	}
	return out
}

// findMember returns the value node and path of the member a
// RegistrationError field names ("minTtl", "retryPolicy.deadline",
// "allowedDomains[2]").
func findMember(ms []regMember, field string) (*yaml.Node, string) {
	name, rest, nested := strings.Cut(field, ".")
	idx := ""
	if i := strings.IndexByte(name, '['); i >= 0 {
		name, idx = name[:i], name[i:]
	}
	for _, m := range ms {
		if m.name != name {
			continue
		}
		if nested && m.sub != nil {
			return findMember(m.sub, rest)
		}
		if nested {
			return m.val, m.path + "." + rest
		}
		if idx != "" && m.val.Kind == yaml.SequenceNode {
			if k, err := strconv.Atoi(strings.Trim(idx, "[]")); err == nil && k < len(m.val.Content) {
				return m.val.Content[k], m.path + idx
			}
		}
		return m.val, m.path + idx
	}
	return nil, ""
}

// membersJSON writes members as a JSON object.
func (l *loader) membersJSON(ms []regMember) ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range ms {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:", m.name)
		if m.sub != nil {
			sub, err := l.membersJSON(m.sub)
			if err != nil {
				return nil, err
			}
			b.Write(sub)
			continue
		}
		v, err := l.toJSON(m.val)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", m.name, err)
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// toJSON converts a YAML value to JSON, by its resolved tag.
func (l *loader) toJSON(n *yaml.Node) ([]byte, error) {
	n = l.deref(n) // counts the node: aliases cannot expand without bound
	switch n.Kind {
	case yaml.MappingNode:
		var b bytes.Buffer
		b.WriteByte('{')
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
				return nil, errors.New("keys must be strings")
			}
			v, err := l.toJSON(n.Content[i+1])
			if err != nil {
				return nil, err
			}
			if i > 0 {
				b.WriteByte(',')
			}
			kb, _ := json.Marshal(k.Value)
			b.Write(kb)
			b.WriteByte(':')
			b.Write(v)
		}
		b.WriteByte('}')
		return b.Bytes(), nil
	case yaml.SequenceNode:
		var b bytes.Buffer
		b.WriteByte('[')
		for i, c := range n.Content {
			v, err := l.toJSON(c)
			if err != nil {
				return nil, err
			}
			if i > 0 {
				b.WriteByte(',')
			}
			b.Write(v)
		}
		b.WriteByte(']')
		return b.Bytes(), nil
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str":
			return json.Marshal(n.Value)
		case "!!bool":
			var v bool
			if err := n.Decode(&v); err != nil {
				return nil, err
			}
			return json.Marshal(v)
		case "!!int":
			var v int64
			if err := n.Decode(&v); err != nil {
				return nil, fmt.Errorf("integer out of range: %s", n.Value)
			}
			return json.Marshal(v)
		case "!!float":
			var v float64
			if err := n.Decode(&v); err != nil {
				return nil, err
			}
			b, err := json.Marshal(v)
			if err != nil {
				return nil, fmt.Errorf("not a finite number: %s", n.Value)
			}
			return b, nil
		case "!!null":
			return []byte("null"), nil
		}
		return nil, fmt.Errorf("unsupported YAML type %s", n.ShortTag())
	}
	return nil, errors.New("unsupported YAML node")
}

// fieldSet is the member names of a JSON object, and of its nested objects.
type fieldSet struct {
	names  map[string]bool
	nested map[string]fieldSet
}

// registrationFields are the member names of jwkscache.Registration's
// JSON form, learnt from the form itself: a Registration with every field
// set is marshalled, and its members (and those of its nested objects) are
// the names. So the library stays the one source of truth for the names.
var registrationFields = func() fieldSet {
	var r jwkscache.Registration
	fill(reflect.ValueOf(&r).Elem())
	raw, err := json.Marshal(r)
	if err != nil {
		panic("jwks-cache: marshalling a Registration: " + err.Error())
	}
	return namesOf(raw)
}()

func namesOf(raw []byte) fieldSet {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		panic("jwks-cache: registration JSON is not an object: " + err.Error())
	}
	fs := fieldSet{names: map[string]bool{}, nested: map[string]fieldSet{}}
	for name, v := range obj {
		fs.names[name] = true
		if len(v) > 0 && v[0] == '{' {
			fs.nested[name] = namesOf(v)
		}
	}
	return fs
}

// fill sets every settable field of v to a non-zero value.
func fill(v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(1)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(1)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 1, 1)
		fill(s.Index(0))
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(k)
		fill(e)
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fill(p.Elem())
		v.Set(p)
	case reflect.Struct:
		for i := range v.NumField() {
			if f := v.Field(i); f.CanSet() {
				fill(f)
			}
		}
	}
}

// parseISODuration reads an ISO-8601 duration exactly as registrations do
// (jwkscache has the parser; its JSON form is the way in).
func parseISODuration(s string) (time.Duration, error) {
	raw, err := json.Marshal(map[string]any{"retryPolicy": map[string]string{"attemptTimeout": s}})
	if err != nil {
		return 0, err
	}
	var r jwkscache.Registration
	if err := json.Unmarshal(raw, &r); err != nil {
		return 0, errors.New(regMessage(err, "attemptTimeout"))
	}
	return r.Retry.AttemptTimeout, nil
}

// env applies the environment's overrides.
func (l *loader) env(getenv func(string) string) {
	c := l.cfg
	if v := getenv(envListen); v != "" {
		if err := checkListen(v); err != nil {
			l.envFail(envListen, "%v", err)
		}
		c.Listen = v
	}
	if v := getenv(envAdminToken); v != "" {
		c.AdminTokens = nil
		for i, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			if msg := checkToken(t); msg != "" {
				l.envFail(envAdminToken, "token %d: %s", i, msg)
				continue
			}
			c.AdminTokens = append(c.AdminTokens, t)
		}
	}
	if v := getenv(envStore); v != "" {
		s, err := parseStoreSpec(v)
		if err != nil {
			l.envFail(envStore, "%v", err)
		} else {
			s.KeyEnv = c.Store.KeyEnv
			if s.Kind == storeRedis {
				s.Prefix = cmpOr(c.Store.Prefix, defaultRedisPrefix)
			}
			c.Store = s
		}
	}
	keyVar, keys := envStoreKey, getenv(envStoreKey)
	if keys == "" && c.Store.KeyEnv != "" {
		keyVar, keys = c.Store.KeyEnv, getenv(c.Store.KeyEnv)
		if keys == "" && c.Store.Kind != storeMemory {
			l.envFail(keyVar, "not set, but store.keyEnv names it: the store's records are to be signed with it")
			return
		}
	}
	if keys == "" {
		return
	}
	if c.Store.Kind == storeMemory {
		l.envFail(keyVar, "set, but the store is memory: it keeps no records to sign")
		return
	}
	for i, k := range strings.Split(keys, ",") {
		b, err := decodeKey(strings.TrimSpace(k))
		switch {
		case err != nil:
			l.envFail(keyVar, "key %d: not base64", i) // never the key
		case len(b) < 32:
			l.envFail(keyVar, "key %d: %d bytes, at least 32 needed", i, len(b))
		default:
			c.Store.Keys = append(c.Store.Keys, b)
		}
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// decodeKey reads standard or URL-safe base64, padded or not.
func decodeKey(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	s = strings.NewReplacer("-", "+", "_", "/").Replace(s)
	return base64.RawStdEncoding.DecodeString(s)
}

// parseStoreSpec reads JWKS_CACHE_STORE: bolt:PATH, redis://..., rediss://...
// or memory.
func parseStoreSpec(v string) (storeConfig, error) {
	switch {
	case v == storeMemory:
		return storeConfig{Kind: storeMemory}, nil
	case strings.HasPrefix(v, "bolt:"):
		p := strings.TrimPrefix(v, "bolt:")
		if p == "" {
			return storeConfig{}, errors.New("bolt: needs a path, as in bolt:/var/lib/jwks-cache/store.db")
		}
		return storeConfig{Kind: storeBolt, Path: p}, nil
	case strings.HasPrefix(v, "redis://"), strings.HasPrefix(v, "rediss://"):
		if err := checkRedisURL(v); err != nil {
			return storeConfig{}, err
		}
		return storeConfig{Kind: storeRedis, URL: v}, nil
	}
	return storeConfig{}, fmt.Errorf("%q: want bolt:PATH, redis://..., rediss://... or memory", redactURL(v))
}

func checkRedisURL(s string) error {
	if !strings.HasPrefix(s, "redis://") && !strings.HasPrefix(s, "rediss://") {
		return fmt.Errorf("%q: must be a redis:// or rediss:// URL", redactURL(s))
	}
	if _, err := redis.ParseURL(s); err != nil {
		// The parser's error quotes the URL, password included when it
		// holds a reserved character: say only that it is bad.
		return fmt.Errorf("%q: not a valid Redis URL (percent-encode reserved characters such as / ? # @ in the password)", redactURL(s))
	}
	return nil
}

// redactURL hides the password of a URL.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// redactText removes the userinfo of rawURL (user and password) from
// text. It does not rely on rawURL parsing: the text may be the error of a
// URL that does not.
func redactText(text, rawURL string) string {
	_, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return text
	}
	// The userinfo runs to the last '@' of the whole string: a password
	// may hold '/', '?' or '#' where a parser would end the authority.
	if at := strings.LastIndexByte(rest, '@'); at > 0 {
		userinfo := rest[:at]
		text = strings.ReplaceAll(text, userinfo, "xxxxx")
		if _, pw, ok := strings.Cut(userinfo, ":"); ok && pw != "" {
			text = strings.ReplaceAll(text, pw, "xxxxx")
		}
	}
	return text
}

// checkPrefix applies redisstore's rule for prefixes: 1 to 256 printable
// ASCII characters, no spaces or braces.
func checkPrefix(p string) error {
	if p == "" || len(p) > 256 {
		return fmt.Errorf("must be 1 to 256 characters, got %d", len(p))
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c <= ' ' || c > '~' || c == '{' || c == '}' {
			return errors.New("only printable ASCII without spaces or braces")
		}
	}
	return nil
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func checkListen(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q: want host:port, such as 127.0.0.1:8080", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: bad port", s)
	}
	return nil
}

// checkTenant applies the tenant ID rule: 1-64 of [A-Za-z0-9-].
func checkTenant(t string) string {
	if t == "" || len(t) > 64 {
		return "a tenant ID has 1 to 64 characters"
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return "a tenant ID has only [A-Za-z0-9-]"
		}
	}
	return ""
}

// checkToken applies the bearer token rules (RFC 6750 b64token) and a
// minimum length. The message never quotes the token.
func checkToken(t string) string {
	if len(t) < minTokenLen {
		return fmt.Sprintf("a token needs at least %d characters, got %d", minTokenLen, len(t))
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~+/=", c) >= 0
		if !ok {
			return fmt.Sprintf("character %d of the token is not allowed in a bearer token (A-Z a-z 0-9 - . _ ~ + / =)", i+1)
		}
	}
	return ""
}

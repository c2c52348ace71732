package main

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jwkscache/jwkscache"
)

func envOf(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

const (
	tokA = "admin-token-aaaaaaaaaaaaaaaa"
	tokB = "admin-token-bbbbbbbbbbbbbbbb"
)

// key32 is a 32-byte HMAC key, base64.
var key32 = base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))

func TestConfigDefaults(t *testing.T) {
	for name, data := range map[string]string{
		"no file":       "",
		"comments only": "# nothing here\n",
		"null document": "~\n",
		"empty mapping": "{}\n",
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := loadConfig("c.yaml", []byte(data), nil)
			if err != nil {
				t.Fatal(err)
			}
			want := defaultConfig()
			if !reflect.DeepEqual(cfg, want) {
				t.Fatalf("got %+v\nwant %+v", cfg, want)
			}
			if cfg.Listen != "127.0.0.1:8080" || cfg.Store.Kind != storeBolt || cfg.Store.Path != "./jwks-cache.db" {
				t.Fatalf("defaults: %+v", cfg)
			}
			if len(cfg.AdminTokens) != 0 {
				t.Fatal("admin tokens by default; serve generates one")
			}
		})
	}
}

// full is a configuration with every section.
const full = `
listen: 0.0.0.0:9090
adminTokens: [` + tokA + `]
tenantTokens:
  acme: [tenant-token-acme-111111]
protectMetrics: true
shutdownTimeout: PT20S
logLevel: debug
store:
  redis: redis://:secret@127.0.0.1:6379/2
  prefix: "jc:"
  keyEnv: MY_KEY
security:
  allowHttp: true
  allowedDomains: [example.com, idp.test]
  allowedAddresses: [10.0.0.0/8, 192.168.1.7]
  rootCAFile: /etc/ssl/idp-ca.pem
defaults:
  minTtl: PT1M
  staleWhileError: PT2H
  retryPolicy:
    maxRetries: 4
    deadline: PT10S
providers:
  - tenantId: acme
    providerId: auth0
    jwksUrl: https://acme.example.com/.well-known/jwks.json
    issuer: https://acme.example.com/
    minTtl: PT5M
    retryPolicy:
      jitter: decorrelated
  - tenantId: globex
    providerId: okta
    issuer: https://globex.example.com/oauth2/default
    allowedDomains: [example.com]
    staleWhileError: PT0S
    maxRedirects: 0
`

func TestConfigFull(t *testing.T) {
	cfg, err := loadConfig("c.yaml", []byte(full), envOf("MY_KEY", key32))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "0.0.0.0:9090" || !slices.Equal(cfg.AdminTokens, []string{tokA}) ||
		!slices.Equal(cfg.TenantTokens["acme"], []string{"tenant-token-acme-111111"}) ||
		!cfg.ProtectMetrics || cfg.ShutdownTimeout != 20*time.Second || cfg.LogLevel.String() != "DEBUG" {
		t.Errorf("top level: %+v", cfg)
	}
	s := cfg.Store
	if s.Kind != storeRedis || s.URL != "redis://:secret@127.0.0.1:6379/2" || s.Prefix != "jc:" || s.KeyEnv != "MY_KEY" || len(s.Keys) != 1 {
		t.Errorf("store: %+v", s)
	}
	if strings.Contains(s.describe(), "secret") {
		t.Errorf("describe shows the password: %s", s.describe())
	}
	sec := cfg.Security
	wantAddrs := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.7/32")}
	if !sec.AllowHTTP || !slices.Equal(sec.AllowedDomains, []string{"example.com", "idp.test"}) ||
		!slices.Equal(sec.AllowedAddresses, wantAddrs) || sec.RootCAFile != "/etc/ssl/idp-ca.pem" {
		t.Errorf("security: %+v", sec)
	}
	if len(cfg.Providers) != 2 {
		t.Fatalf("providers: %+v", cfg.Providers)
	}
	a := cfg.Providers[0].Reg
	// Own minTtl, the defaults' staleWhileError, retryPolicy merged member by member.
	if a.TenantID != "acme" || a.ProviderID != "auth0" || a.MinTTL != 5*time.Minute || a.StaleWhileError != 2*time.Hour ||
		a.Retry.MaxRetries != 4 || a.Retry.Deadline != 10*time.Second || a.Retry.Jitter != jwkscache.JitterDecorrelated {
		t.Errorf("acme: %+v", a)
	}
	g := cfg.Providers[1].Reg
	// PT0S and 0 mean "off" in the JSON form: negative in Go.
	if g.JWKSURL != "" || g.Issuer == "" || g.MinTTL != time.Minute || g.StaleWhileError >= 0 || g.MaxRedirects >= 0 ||
		!slices.Equal(g.AllowedDomains, []string{"example.com"}) || g.Retry.MaxRetries != 4 {
		t.Errorf("globex: %+v", g)
	}
	if cfg.Providers[1].Path != "providers[1]" || !strings.HasPrefix(cfg.Providers[1].Pos, "c.yaml:") {
		t.Errorf("position: %+v", cfg.Providers[1])
	}
}

func TestConfigStore(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		env  []string
		want storeConfig
	}{
		{"store: {bolt: /var/lib/jc.db}", nil, storeConfig{Kind: storeBolt, Path: "/var/lib/jc.db"}},
		{"store: {memory: true}", nil, storeConfig{Kind: storeMemory}},
		{"store: {redis: 'rediss://h:6380'}", nil, storeConfig{Kind: storeRedis, URL: "rediss://h:6380", Prefix: "jwkscache:"}},
		{"store: {bolt: /x.db, keyEnv: K}", []string{"K", key32}, storeConfig{Kind: storeBolt, Path: "/x.db", KeyEnv: "K", Keys: [][]byte{[]byte("0123456789abcdef0123456789abcdef")}}},
		// The environment.
		{"", []string{envStore, "bolt:/data/s.db"}, storeConfig{Kind: storeBolt, Path: "/data/s.db"}},
		{"", []string{envStore, "memory"}, storeConfig{Kind: storeMemory}},
		{"store: {redis: 'redis://a', prefix: 'p:'}", []string{envStore, "redis://b:1/3"}, storeConfig{Kind: storeRedis, URL: "redis://b:1/3", Prefix: "p:"}},
		{"", []string{envStore, "rediss://b"}, storeConfig{Kind: storeRedis, URL: "rediss://b", Prefix: "jwkscache:"}},
		{"", []string{envStoreKey, key32 + ", " + strings.TrimRight(base64.URLEncoding.EncodeToString(make([]byte, 40)), "=")},
			storeConfig{Kind: storeBolt, Path: defaultBoltPath, Keys: [][]byte{[]byte("0123456789abcdef0123456789abcdef"), make([]byte, 40)}}},
		// JWKS_CACHE_STORE_KEY wins over keyEnv.
		{"store: {bolt: /x.db, keyEnv: K}", []string{envStoreKey, key32, "K", "!!"}, storeConfig{Kind: storeBolt, Path: "/x.db", KeyEnv: "K", Keys: [][]byte{[]byte("0123456789abcdef0123456789abcdef")}}},
	} {
		cfg, err := loadConfig("c.yaml", []byte(tc.yaml), envOf(tc.env...))
		if err != nil {
			t.Errorf("%q %v: %v", tc.yaml, tc.env, err)
			continue
		}
		if !reflect.DeepEqual(cfg.Store, tc.want) {
			t.Errorf("%q %v:\n got %+v\nwant %+v", tc.yaml, tc.env, cfg.Store, tc.want)
		}
	}
}

func TestConfigEnv(t *testing.T) {
	cfg, err := loadConfig("c.yaml", []byte("listen: 127.0.0.1:1\nadminTokens: ["+tokA+"]\n"),
		envOf(envListen, "[::1]:9000", envAdminToken, tokB+" , "+tokA))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "[::1]:9000" {
		t.Errorf("listen %q", cfg.Listen)
	}
	// The environment's list replaces the file's.
	if !slices.Equal(cfg.AdminTokens, []string{tokB, tokA}) {
		t.Errorf("admin tokens %q", cfg.AdminTokens)
	}
}

// TestConfigErrors checks that each error names the path of the key at
// fault, and the provider for registrations.
func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		env  []string
		want []string // substrings of the error
	}{
		{"unknown top-level key", "listne: x\n", nil, []string{"c.yaml:1:1: listne: unknown field"}},
		{"unknown security key", "security:\n  allowHtttp: true\n", nil, []string{"c.yaml:2:3: security.allowHtttp: unknown field"}},
		{"unknown store key", "store:\n  bolt: /x\n  path: /y\n", nil, []string{"store.path: unknown field"}},
		{"unknown defaults key", "defaults:\n  minTTL: PT1M\n", nil, []string{"defaults.minTTL: unknown field", "did you mean minTtl?"}},
		{"unknown provider key", `providers:
  - {tenantId: a, providerId: p, jwksUrl: "https://a.example/j"}
  - {tenantId: b, providerId: p, jwksUrl: "https://b.example/j"}
  - tenantId: c
    providerId: p
    jwksUrll: https://c.example/j
`, nil, []string{"c.yaml:6:5: providers[2].jwksUrll: unknown field"}},
		{"unknown nested retryPolicy key", `providers:
  - tenantId: a
    providerId: p
    jwksUrl: https://a.example/j
    retryPolicy:
      maxRetry: 3
`, nil, []string{"c.yaml:6:7: providers[0].retryPolicy.maxRetry: unknown field"}},
		{"unknown retryPolicy key in defaults", "defaults:\n  retryPolicy: {jitters: full}\n", nil, []string{"defaults.retryPolicy.jitters: unknown field"}},
		{"ids in defaults", "defaults:\n  tenantId: a\n", nil, []string{"defaults.tenantId: not allowed in defaults"}},
		{"bad duration", `providers:
  - {tenantId: a, providerId: p, jwksUrl: "https://a.example/j", minTtl: 30s}
`, nil, []string{"providers[0].minTtl:", "ISO"}},
		{"bad nested duration", `providers:
  - tenantId: a
    providerId: p
    jwksUrl: https://a.example/j
    retryPolicy: {deadline: 10}
`, nil, []string{"c.yaml:5:29: providers[0].retryPolicy.deadline:"}},
		{"bad duration in defaults", "defaults: {maxTtl: P1M}\nproviders:\n  - {tenantId: a, providerId: p, jwksUrl: 'https://a.example/j'}\n", nil,
			[]string{"defaults.maxTtl:"}},
		{"bad shutdown timeout", "shutdownTimeout: 10s\n", nil, []string{"shutdownTimeout:"}},
		{"invalid registration names the provider", `providers:
  - tenantId: acme
    providerId: main
    jwksUrl: https://a.example/j
    minTtl: PT10S
`, nil, []string{"c.yaml:5:13: providers[0].minTtl: must be at least 30s, got 10s (provider acme/main)"}},
		{"rule broken by a default", "defaults: {maxTtl: PT40S}\nproviders:\n  - {tenantId: acme, providerId: main, jwksUrl: 'https://a.example/j', minTtl: PT1M}\n", nil,
			[]string{"defaults.maxTtl: must be at least minTtl (1m0s), got 40s (provider acme/main)"}},
		{"missing URL", "providers:\n  - {tenantId: acme, providerId: main}\n", nil, []string{"providers[0].jwksUrl: required unless issuer is set (provider acme/main)"}},
		{"bad tenant", "providers:\n  - {tenantId: 'ac me', providerId: main, jwksUrl: 'https://a.example/j'}\n", nil, []string{"providers[0].tenantId:", "(provider ac me/main)"}},
		{"http refused", "providers:\n  - {tenantId: a, providerId: p, jwksUrl: 'http://a.example/j'}\n", nil, []string{"providers[0].jwksUrl:", "http is refused"}},
		{"bad allowedDomains item", "providers:\n  - tenantId: a\n    providerId: p\n    jwksUrl: https://a.example/j\n    allowedDomains: [ok.example, Bad.Example]\n", nil,
			[]string{"c.yaml:5:34: providers[0].allowedDomains[1]: ", "lower-case"}},
		{"duplicate provider", "providers:\n  - {tenantId: a, providerId: p, jwksUrl: 'https://a.example/j'}\n  - {tenantId: a, providerId: p, jwksUrl: 'https://b.example/j'}\n", nil,
			[]string{"providers[1]: provider a/p is already configured at providers[0]"}},
		{"duplicate key", "listen: a:1\nlisten: b:2\n", nil, []string{"c.yaml:2:1: listen: appears more than once"}},
		{"wrong type", "adminTokens: " + tokA + "\n", nil, []string{"adminTokens: must be a list, got a string"}},
		{"string for a bool", "security: {allowHttp: 'yes'}\n", nil, []string{"security.allowHttp: must be true or false"}},
		{"number for a string", "listen: 8080\n", nil, []string{"listen: must be a string, got a number"}},
		{"bad listen", "listen: localhost\n", nil, []string{"listen:", "host:port"}},
		{"short token", "adminTokens: [short]\n", nil, []string{"adminTokens[0]: a token needs at least 16 characters"}},
		{"token with a space", "adminTokens: ['0123456789 abcdef']\n", nil, []string{"adminTokens[0]: character 11"}},
		{"bad tenant in tenantTokens", "tenantTokens: {'a.b': [" + tokA + "]}\n", nil, []string{"tenantTokens.a.b: a tenant ID has only"}},
		{"bad allowed domain", "security: {allowedDomains: [example.com, '*.example.org']}\n", nil, []string{"c.yaml:1:42: security.allowedDomains[1]: ", "bare host name"}},
		{"bad CIDR", "security: {allowedAddresses: [10.0.0.1/8, nope]}\n", nil, []string{"security.allowedAddresses[0]: ", "host bits", "security.allowedAddresses[1]: \"nope\""}},
		{"two stores", "store: {bolt: /x, memory: true}\n", nil, []string{"store: has bolt and memory: choose one"}},
		{"no store kind", "store: {prefix: 'a:'}\n", nil, []string{"store: needs one of bolt, redis or memory"}},
		{"memory false", "store: {memory: false}\n", nil, []string{"store.memory: must be true"}},
		{"prefix for bolt", "store: {bolt: /x, prefix: 'a:'}\n", nil, []string{"store.prefix: only applies to a redis store"}},
		{"redis URL scheme", "store: {redis: 'http://u:pw@h'}\n", nil, []string{"store.redis:", "redis:// or rediss://"}},
		{"bad redis prefix", "store: {redis: 'redis://h', prefix: 'a {b}'}\n", nil, []string{"store.prefix:"}},
		{"keyEnv unset", "store: {bolt: /x, keyEnv: NOPE}\n", nil, []string{"environment: NOPE: not set"}},
		{"short store key", "", []string{envStoreKey, base64.StdEncoding.EncodeToString([]byte("short"))}, []string{"JWKS_CACHE_STORE_KEY: key 0: 5 bytes, at least 32"}},
		{"store key not base64", "", []string{envStoreKey, "not*base64"}, []string{"JWKS_CACHE_STORE_KEY: key 0: not base64"}},
		{"store key with memory", "store: {memory: true}\n", []string{envStoreKey, key32}, []string{"the store is memory"}},
		{"bad env store", "", []string{envStore, "postgres://x"}, []string{"JWKS_CACHE_STORE:", "want bolt:PATH"}},
		{"bad env listen", "", []string{envListen, "nope"}, []string{"JWKS_CACHE_LISTEN:"}},
		{"bad env token", "", []string{envAdminToken, "short"}, []string{"JWKS_CACHE_ADMIN_TOKEN: token 0: a token needs at least 16"}},
		{"two documents", "listen: a:1\n---\nlisten: b:2\n", nil, []string{"only one YAML document"}},
		{"not YAML", "listen: [\n", nil, []string{"not valid YAML"}},
		{"not a mapping", "- a\n- b\n", nil, []string{"must be a mapping, got a list"}},
		{"merge key", "base: &b {listen: 'a:1'}\n<<: *b\n", nil, []string{"base: unknown field", "<<: merge keys are not supported"}},
		{"unsupported YAML type", "providers:\n  - {tenantId: a, providerId: p, jwksUrl: !!binary aGVsbG8=}\n", nil, []string{"providers[0].jwksUrl: unsupported YAML type !!binary"}},
		{"bad log level", "logLevel: loud\n", nil, []string{"logLevel: must be debug, info, warn or error"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadConfig("c.yaml", []byte(tc.yaml), envOf(tc.env...))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestConfigSecretsNotShown checks that errors never quote tokens, keys
// or passwords.
func TestConfigSecretsNotShown(t *testing.T) {
	for _, tc := range []struct {
		yaml, secret string
		env          []string
	}{
		{"adminTokens: ['s3cret-but-has space']\n", "s3cret", nil},
		{"tenantTokens: {acme: ['s3cret']}\n", "s3cret", nil},
		{"store: {redis: 'redis://u:s3cretpw@h/notadb'}\n", "s3cretpw", nil},
		{"", "s3cretpw", []string{envStore, "redis://u:s3cretpw@h:x"}},
		// Reserved characters in the password end a URL parser's authority
		// early; the error must still not quote it.
		{"store: {redis: 'redis://user:s3cr/etpw@redis.internal:6379/0'}\n", "s3cr", nil},
		{"store: {redis: 'redis://user:s3cr?etpw@h:6379'}\n", "s3cr", nil},
		{"", "s3cr", []string{envStore, "redis://user:s3cr#etpw@h:6379"}},
		{"", "s3cret", []string{envStoreKey, "s3cret"}},
		{"", "s3cret", []string{envAdminToken, "s3cret"}},
	} {
		_, err := loadConfig("c.yaml", []byte(tc.yaml), envOf(tc.env...))
		if err == nil {
			t.Errorf("%q %v: no error", tc.yaml, tc.env)
			continue
		}
		if strings.Contains(err.Error(), tc.secret) {
			t.Errorf("the error shows the secret: %v", err)
		}
	}
}

// TestConfigErrorsAreCapped: a file with many errors reports the first
// ones, then says there are more.
func TestConfigErrorsAreCapped(t *testing.T) {
	var b strings.Builder
	for i := range 100 {
		b.WriteString("k")
		b.WriteString(strings.Repeat("x", i+1))
		b.WriteString(": 1\n")
	}
	_, err := loadConfig("c.yaml", []byte(b.String()), nil)
	if err == nil {
		t.Fatal("no error")
	}
	ce := err.(*configError)
	if len(ce.errs) != maxErrors+1 || !strings.Contains(ce.errs[maxErrors], "further errors") {
		t.Fatalf("%d errors: %v", len(ce.errs), err)
	}
}

// TestConfigAliasBomb: aliases expanded without bound would take
// exponential time and memory.
func TestConfigAliasBomb(t *testing.T) {
	// One value holding 10 levels of 10 aliases of the level below: 10^10
	// strings once expanded.
	var b strings.Builder
	b.WriteString("defaults:\n  pinnedSpki: [&l0 [x, x, x, x, x, x, x, x, x, x]")
	for i := 1; i <= 10; i++ {
		fmt.Fprintf(&b, ", &l%d [", i)
		for j := range 10 {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "*l%d", i-1)
		}
		b.WriteString("]")
	}
	b.WriteString("]\n")
	start := time.Now()
	_, err := loadConfig("c.yaml", []byte(b.String()), nil)
	if err == nil || !strings.Contains(err.Error(), "too many nodes") {
		t.Fatalf("got %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("took %v", time.Since(start))
	}
}

// TestConfigAliases: a plain alias is followed.
func TestConfigAliases(t *testing.T) {
	cfg, err := loadConfig("c.yaml", []byte(`
x-domains: &d [example.com]
security:
  allowedDomains: *d
`), nil)
	if err == nil {
		t.Fatalf("x-domains accepted: %+v", cfg)
	}
	cfg, err = loadConfig("c.yaml", []byte(`
security:
  allowedDomains: &d [example.com]
providers:
  - {tenantId: a, providerId: p, jwksUrl: 'https://a.example.com/j', allowedDomains: *d}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Providers[0].Reg.AllowedDomains, []string{"example.com"}) {
		t.Fatalf("%+v", cfg.Providers[0].Reg)
	}
}

// TestRegistrationFields: the names come from the library's JSON form.
func TestRegistrationFields(t *testing.T) {
	for _, n := range []string{"tenantId", "providerId", "jwksUrl", "issuer", "allowHttp", "allowedDomains", "refreshEarly",
		"staleWhileError", "minTtl", "maxTtl", "maxResponseBytes", "negativeCacheTtl", "maxRedirects", "pinnedSpki", "prefetchJitter", "retryPolicy"} {
		if !registrationFields.names[n] {
			t.Errorf("%s missing from %v", n, registrationFields.names)
		}
	}
	rp := registrationFields.nested["retryPolicy"]
	for _, n := range []string{"maxRetries", "attemptTimeout", "initialBackoff", "maxBackoff", "deadline", "jitter"} {
		if !rp.names[n] {
			t.Errorf("retryPolicy.%s missing from %v", n, rp.names)
		}
	}
}

func TestParseISODuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"PT30S": 30 * time.Second, "PT1H30M": 90 * time.Minute, "P1D": 24 * time.Hour, "PT0.5S": 500 * time.Millisecond} {
		if got, err := parseISODuration(in); err != nil || got != want {
			t.Errorf("%s: %v %v", in, got, err)
		}
	}
	for _, in := range []string{"30s", "", "P1M", "-PT1S"} {
		if _, err := parseISODuration(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

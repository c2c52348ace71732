package main

import (
	"strings"
	"testing"
)

// FuzzConfig: the loader never panics, whatever the file and the store
// environment variable, and a configuration it accepts is complete.
// Seeds: testdata/fuzz/FuzzConfig.
func FuzzConfig(f *testing.F) {
	f.Add([]byte(full), "")
	f.Add([]byte("listen: 127.0.0.1:0\nstore: {memory: true}\n"), "bolt:/tmp/x.db")
	f.Add([]byte("providers:\n  - {tenantId: a, providerId: p, jwksUrl: 'https://a.example/j', retryPolicy: {deadline: PT9S}}\n"), "redis://h:1/2")
	f.Add([]byte("defaults: &d {minTtl: PT1M}\nproviders: [*d]\n"), "memory")
	f.Fuzz(func(t *testing.T, data []byte, store string) {
		env := envOf(envStore, store)
		cfg, err := loadConfig("f.yaml", data, env)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if cfg.Listen == "" || cfg.ShutdownTimeout <= 0 {
			t.Fatalf("incomplete: %+v", cfg)
		}
		switch cfg.Store.Kind {
		case storeBolt:
			if cfg.Store.Path == "" {
				t.Fatal("bolt store without a path")
			}
		case storeRedis:
			if !strings.HasPrefix(cfg.Store.URL, "redis") || cfg.Store.Prefix == "" {
				t.Fatalf("redis store: %+v", cfg.Store)
			}
		case storeMemory:
		default:
			t.Fatalf("store kind %q", cfg.Store.Kind)
		}
		seen := map[string]bool{}
		for _, p := range cfg.Providers {
			if err := p.Reg.Validate(); err != nil {
				t.Fatalf("accepted an invalid registration: %v", err)
			}
			if seen[p.name()] {
				t.Fatalf("%s twice", p.name())
			}
			seen[p.name()] = true
		}
	})
}

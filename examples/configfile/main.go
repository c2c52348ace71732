// Command configfile registers the identity providers listed in a JSON
// file, as a service does at start-up with its tenants' providers, and
// prints what the cache loaded for each. An entry that cannot be
// registered is reported with its position and the reason, and does not
// stop the others.
//
//	go run ./examples/configfile                # demo: a generated file, two local test IdPs
//	go run ./examples/configfile -config FILE   # your file: fetches from the IdPs it names
//
// The file lists registrations in the JSON form of jwkscache.Registration:
// camelCase member names, matched exactly, and ISO-8601 durations.
//
//	{"providers": [
//	  {"tenantId": "acme", "providerId": "auth0",
//	   "jwksUrl": "https://acme.eu.auth0.com/.well-known/jwks.json",
//	   "issuer": "https://acme.eu.auth0.com/",
//	   "minTtl": "PT5M"},
//	  {"tenantId": "globex", "providerId": "okta",
//	   "issuer": "https://globex.okta.com/oauth2/default"}
//	]}
//
// An entry with only an issuer finds its JWKS URL by OpenID Connect
// discovery. See docs/providers.md for the URLs and issuers of common
// identity providers.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/jwkscachetest"
)

func main() {
	config := flag.String("config", "", "the JSON file of providers; none runs the demo")
	flag.Parse()
	var err error
	if *config == "" {
		err = demo(os.Stdout)
	} else {
		err = run(jwkscache.Options{}, *config, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "configfile:", err)
		os.Exit(1)
	}
}

// run registers the providers of the file at path with a new Manager,
// waits for their keys and prints their status to out.
func run(opts jwkscache.Options, path string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := jwkscache.New(opts)
	if err != nil {
		return err
	}
	defer m.Close()

	regs, errs := registerFile(ctx, m, path)
	fmt.Fprintf(out, "registered %d of %d providers\n", len(regs), len(regs)+len(errs))
	for _, err := range errs {
		fmt.Fprintln(out, "  refused:", err)
	}

	// Register returns at once and loads keys in the background; Resolve
	// waits for the first load. A service need not wait: the first
	// lookup of each provider does.
	for _, reg := range regs {
		name := reg.TenantID + "/" + reg.ProviderID
		if _, err := m.Resolve(ctx, reg.TenantID, reg.ProviderID); err != nil {
			fmt.Fprintf(out, "%s: no keys: %v\n", name, err)
			continue
		}
		st, err := m.Status(reg.TenantID, reg.ProviderID)
		if err != nil {
			return err
		}
		var kids []string
		for _, k := range st.Keys {
			kids = append(kids, k.KID)
		}
		fmt.Fprintf(out, "%s: %s, keys [%s], fresh for %s (%s)\n", name, st.State,
			strings.Join(kids, " "), st.ExpiresAt.Sub(st.LastRefresh).Round(time.Second), st.TTLSource)
	}
	return nil
}

// registerFile registers every provider listed in the file at path. It
// returns the registrations that succeeded and one error per entry that
// failed, naming the entry.
//
// Each entry is decoded on its own: decoding the whole list at once into a
// []jwkscache.Registration would refuse every provider of the file for
// one misspelt member name.
func registerFile(ctx context.Context, m *jwkscache.Manager, path string) ([]jwkscache.Registration, []error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, []error{err}
	}
	var file struct {
		Providers []json.RawMessage `json:"providers"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields() // "provider" for "providers" is an error, not an empty list
	if err := dec.Decode(&file); err != nil {
		return nil, []error{fmt.Errorf("%s: %w", path, err)}
	}
	var (
		regs []jwkscache.Registration
		errs []error
	)
	for i, raw := range file.Providers {
		var reg jwkscache.Registration
		if err := json.Unmarshal(raw, &reg); err != nil {
			// Name the entry by its IDs when they can be read.
			var id struct{ TenantID, ProviderID string }
			_ = json.Unmarshal(raw, &id)
			errs = append(errs, fmt.Errorf("providers[%d] %s/%s: %w", i, id.TenantID, id.ProviderID, err))
			continue
		}
		// Register validates every field first and reports all the bad
		// ones in one error (errors.Is ErrInvalidRegistration, or
		// ErrSecurityPolicy for a URL the policy refuses).
		if err := m.Register(ctx, reg); err != nil {
			errs = append(errs, fmt.Errorf("providers[%d]: %w", i, err))
			continue
		}
		regs = append(regs, reg)
	}
	return regs, errs
}

// demoConfig is the file of the demo. {{acme}} and {{globex}} stand for the
// URLs of its two local test IdPs, known once they are started.
const demoConfig = `{"providers": [
  {"tenantId": "acme", "providerId": "auth0",
   "jwksUrl": "{{acme}}/jwks.json", "issuer": "{{acme}}",
   "minTtl": "PT5M", "retryPolicy": {"deadline": "PT5S"}},
  {"tenantId": "globex", "providerId": "keycloak",
   "issuer": "{{globex}}"},
  {"tenantId": "globex", "providerId": "legacy",
   "jwksUrl": "http://sso.globex.example/jwks.json"},
  {"tenantId": "initech", "providerId": "okta",
   "jwksUrl": "https://initech.okta.example/oauth2/default/v1/keys", "minTTL": "PT1H"},
  {"tenantId": "initech", "providerId": "entra",
   "jwksUrl": "https://login.microsoftonline.example/initech/discovery/v2.0/keys", "staleWhileError": "1h"}
]}`

// demo runs the program on demoConfig against two test identity providers
// serving on 127.0.0.1: acme's sends Auth0's cache header, globex's
// Keycloak's.
func demo(out io.Writer) error {
	acme, globex := jwkscachetest.New(), jwkscachetest.New()
	for _, idp := range []*jwkscachetest.IdP{acme, globex} {
		if err := idp.Start(); err != nil {
			return err
		}
		defer idp.Close()
	}
	acme.SetHeader(jwkscachetest.JWKSPath, "Cache-Control", "public, max-age=15, stale-while-revalidate=15, stale-if-error=86400")
	globex.SetHeader(jwkscachetest.JWKSPath, "Cache-Control", "no-cache")

	dir, err := os.MkdirTemp("", "configfile")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "providers.json")
	config := strings.NewReplacer("{{acme}}", acme.URL(), "{{globex}}", globex.URL()).Replace(demoConfig)
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		return err
	}

	// The test IdPs' certificates come from a test CA, and they listen on
	// loopback: both are refused by default. With real IdPs, the zero
	// Options are right.
	return run(jwkscache.Options{
		RootCAs:          acme.CertPool(),
		AllowedAddresses: acme.AllowedAddresses(),
	}, path, out)
}

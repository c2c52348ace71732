package idpconfig_test

import (
	"slices"
	"testing"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/jwkscachetest"
	"github.com/jwkscache/jwkscache/jwkscachetest/idpconfig"
)

func TestManagerOptions(t *testing.T) {
	p := jwkscachetest.New()
	o := idpconfig.ManagerOptions(p)
	if o.HTTPClient == nil || o.HTTPClient.Transport != p || o.RootCAs != nil || o.AllowedAddresses != nil || o.AllowHTTP {
		t.Errorf("not started: %+v", o)
	}

	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	o = idpconfig.ManagerOptions(p)
	if o.HTTPClient != nil || o.RootCAs == nil || !o.RootCAs.Equal(p.CertPool()) || o.AllowHTTP ||
		!slices.Equal(o.AllowedAddresses, p.AllowedAddresses()) {
		t.Errorf("TLS: %+v", o)
	}

	plain := jwkscachetest.New()
	if err := plain.StartHTTP(); err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if o := idpconfig.ManagerOptions(plain); !o.AllowHTTP || o.HTTPClient != nil {
		t.Errorf("HTTP: %+v", o)
	}
	if r := idpconfig.Registration(plain, "t", "p"); !r.AllowHTTP {
		t.Errorf("HTTP registration: %+v", r)
	}
}

func TestRegistration(t *testing.T) {
	p := jwkscachetest.New()
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	got := idpconfig.Registration(p, "acme", "main")
	want := jwkscache.Registration{TenantID: "acme", ProviderID: "main", JWKSURL: p.JWKSURL(), Issuer: p.Issuer()}
	if got.TenantID != want.TenantID || got.ProviderID != want.ProviderID || got.JWKSURL != want.JWKSURL ||
		got.Issuer != want.Issuer || got.AllowHTTP || got.AllowedDomains != nil {
		t.Errorf("Registration = %+v, want %+v", got, want)
	}
	m, err := jwkscache.New(idpconfig.ManagerOptions(p))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Register(t.Context(), got); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Key(t.Context(), "acme", "main", p.SigningKey().KID); err != nil {
		t.Error(err)
	}
}

package jwkscachetest_test

import (
	"net/http"
	"slices"
	"testing"

	jwt "github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache/jwkscachetest"
)

// state returns the published kids of ks, as served, and the kid of its
// signing key ("" if none).
func state(t *testing.T, p *jwkscachetest.IdP, ks *jwkscachetest.KeySet) ([]string, string) {
	t.Helper()
	_, body := mustGet(t, p.Client(), ks.URL())
	served := kids(parseJWKS(t, body))
	if want := kidsOf(ks.Keys()); !slices.Equal(served, want) {
		t.Fatalf("served kids %v, Keys() %v", served, want)
	}
	signer := ""
	if k := ks.SigningKey(); k != nil {
		signer = k.KID
	}
	return served, signer
}

func kidsOf(keys []*jwkscachetest.Key) []string {
	out := []string{}
	for _, k := range keys {
		out = append(out, k.KID)
	}
	return out
}

func TestNewServesOneSigningKey(t *testing.T) {
	p := jwkscachetest.New()
	got, signer := state(t, p, p.JWKS())
	if !slices.Equal(got, []string{"k1"}) || signer != "k1" || p.SigningKey().Alg != "RS256" {
		t.Errorf("New: kids %v signer %q", got, signer)
	}
	resp, _ := mustGet(t, p.Client(), p.JWKSURL())
	if cc := resp.Header.Get("Cache-Control"); cc != "max-age=300" {
		t.Errorf("Cache-Control = %q", cc)
	}
	if p.JWKS().Path() != jwkscachetest.JWKSPath || p.JWKS().URL() != "https://idp.test/jwks.json" || p.JWKSURL() != p.JWKS().URL() {
		t.Errorf("path %q URL %q", p.JWKS().Path(), p.JWKS().URL())
	}
	if resp, _ := mustGet(t, p.Client(), p.URL()+"/other"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("other path: %d", resp.StatusCode)
	}
	// NewEmpty serves nothing, not even the discovery document.
	e := jwkscachetest.NewEmpty()
	for _, path := range []string{jwkscachetest.JWKSPath, jwkscachetest.DiscoveryPath} {
		if resp, _ := mustGet(t, e.Client(), e.URL()+path); resp.StatusCode != http.StatusNotFound {
			t.Errorf("NewEmpty %s: %d", path, resp.StatusCode)
		}
	}
	if e.SigningKey() != nil || e.JWKS().Keys() != nil {
		t.Error("NewEmpty has keys")
	}
}

func TestRotateImmediate(t *testing.T) {
	p := jwkscachetest.New()
	ks := p.JWKS()
	old := p.Token(jwt.MapClaims{})
	etag := p.ETag(jwkscachetest.JWKSPath)

	k2 := ks.Rotate("ES256")
	if k2.KID != "k2" || k2.Alg != "ES256" {
		t.Errorf("Rotate returned %q %q", k2.KID, k2.Alg)
	}
	got, signer := state(t, p, ks)
	if !slices.Equal(got, []string{"k1", "k2"}) || signer != "k2" {
		t.Errorf("after one rotation: kids %v signer %q", got, signer)
	}
	if p.ETag(jwkscachetest.JWKSPath) == etag {
		t.Error("ETag unchanged by the rotation")
	}
	set := fetchJWKS(t, p)
	if tok := verifyJWT(t, p.Token(jwt.MapClaims{}), "ES256", set); tok.Header["kid"] != "k2" {
		t.Errorf("new token kid = %v", tok.Header["kid"])
	}
	verifyJWT(t, old, "RS256", set) // the previous key is still published

	ks.Rotate("EdDSA")
	if got, signer := state(t, p, ks); !slices.Equal(got, []string{"k2", "k3"}) || signer != "k3" {
		t.Errorf("after two rotations: kids %v signer %q", got, signer)
	}

	// SetSigningKey with a new key is an immediate rotation keeping every
	// published key.
	mine := jwkscachetest.NewKey("PS256", "mine")
	ks.SetSigningKey(mine)
	if got, signer := state(t, p, ks); !slices.Equal(got, []string{"k2", "k3", "mine"}) || signer != "mine" {
		t.Errorf("SetSigningKey(new): kids %v signer %q", got, signer)
	}
	verifyJWT(t, p.Token(jwt.MapClaims{}), "PS256", fetchJWKS(t, p))
}

func TestRotatePrePublished(t *testing.T) {
	p := jwkscachetest.New()
	ks := p.JWKS()
	next := ks.PrePublish("ES256")
	if next.KID != "k2" {
		t.Errorf("PrePublish kid = %q", next.KID)
	}
	got, signer := state(t, p, ks)
	if !slices.Equal(got, []string{"k1", "k2"}) || signer != "k1" {
		t.Errorf("pre-published: kids %v signer %q", got, signer)
	}
	etag := p.ETag(jwkscachetest.JWKSPath)

	// Switching to the pre-published key does not change the document.
	ks.SetSigningKey(next)
	got, signer = state(t, p, ks)
	if !slices.Equal(got, []string{"k1", "k2"}) || signer != "k2" || p.ETag(jwkscachetest.JWKSPath) != etag {
		t.Errorf("activated: kids %v signer %q", got, signer)
	}
	verifyJWT(t, p.Token(jwt.MapClaims{}), "ES256", fetchJWKS(t, p))

	// RemoveOld drops the keys before the signing key, not those after.
	after := ks.PrePublish("EdDSA")
	ks.RemoveOld()
	if got, signer := state(t, p, ks); !slices.Equal(got, []string{"k2", "k3"}) || signer != "k2" || after.KID != "k3" {
		t.Errorf("RemoveOld: kids %v signer %q", got, signer)
	}
}

func TestKeySetEdits(t *testing.T) {
	p := jwkscachetest.NewEmpty()
	ks := p.KeySet("/tenants/acme/keys")
	a, b, c := jwkscachetest.NewKey("ES256", "a"), jwkscachetest.NewKey("EdDSA", "b"), jwkscachetest.NewKey("ES256", "c")

	ks.Add(a) // the first key added becomes the signing key
	if got, signer := state(t, p, ks); !slices.Equal(got, []string{"a"}) || signer != "a" {
		t.Errorf("Add to empty: %v %q", got, signer)
	}
	ks.Add(b)
	if got, signer := state(t, p, ks); !slices.Equal(got, []string{"a", "b"}) || signer != "a" {
		t.Errorf("Add: %v %q", got, signer)
	}
	ks.Set(c, a)
	if got, signer := state(t, p, ks); !slices.Equal(got, []string{"c", "a"}) || signer != "c" {
		t.Errorf("Set: %v %q", got, signer)
	}
	ks.Remove("c")
	if got, signer := state(t, p, ks); !slices.Equal(got, []string{"a"}) || signer != "" {
		t.Errorf("Remove signer: %v %q", got, signer)
	}
	ks.RemoveOld() // no signing key: nothing to do
	ks.SetSigningKey(a)
	if got, signer := state(t, p, ks); !slices.Equal(got, []string{"a"}) || signer != "a" {
		t.Errorf("SetSigningKey(published): %v %q", got, signer)
	}
	_, body := mustGet(t, p.Client(), ks.URL())
	verifyJWT(t, ks.Token(jwt.MapClaims{}), "ES256", parseJWKS(t, body))
	ks.Set()
	if got, signer := state(t, p, ks); len(got) != 0 || signer != "" {
		t.Errorf("Set(): %v %q", got, signer)
	}

	// Raw content replaces the key set, and a key set replaces raw content.
	p.SetBody(ks.Path(), []byte(`{"keys":"nope"}`), "")
	if ks.Keys() != nil || ks.SigningKey() != nil {
		t.Error("raw body still has keys")
	}
	ks.Add(b)
	if got, signer := state(t, p, ks); !slices.Equal(got, []string{"b"}) || signer != "b" {
		t.Errorf("Add after SetBody: %v %q", got, signer)
	}
	// The main key set is unaffected by another path.
	if p.SigningKey() != nil {
		t.Error("main key set has a signing key")
	}

	defer func() {
		if recover() == nil {
			t.Error("SetSigningKey(nil) did not panic")
		}
	}()
	ks.SetSigningKey(nil)
}

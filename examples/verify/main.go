// Command verify shows jwkscache at work against a local identity
// provider: it verifies tokens through the cache, routing each by its
// issuer, catches a key rotation on first sight, prints the provider's
// status and refuses a denied key.
//
//	go run ./examples/verify
//
// The identity provider is jwkscachetest's test IdP, serving over TLS on
// 127.0.0.1: no internet access is needed. With a real IdP you would
// register its JWKS URL and issuer and drop RootCAs and AllowedAddresses
// from the Options.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/jwkscachetest"
)

const (
	tenant   = "acme"
	provider = "demo"
	audience = "https://api.example.com"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "verify: FAILED:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// 1. A local identity provider over TLS on a random port, with one
	//    RS256 signing key (kid "k1"), its JWKS cacheable for 5 minutes.
	idp := jwkscachetest.New()
	if err := idp.Start(); err != nil {
		return err
	}
	defer idp.Close()
	k1 := idp.SigningKey()
	fmt.Printf("test IdP %s serving key %q at %s\n", idp.Issuer(), k1.KID, idp.JWKSURL())

	// 2. A Manager that trusts the IdP's test CA and may dial loopback
	//    (both refused by default), and the IdP registered for tenant acme
	//    with its issuer.
	m, err := jwkscache.New(jwkscache.Options{
		RootCAs:          idp.CertPool(),
		AllowedAddresses: idp.AllowedAddresses(),
	})
	if err != nil {
		return err
	}
	defer m.Close()
	err = m.Register(ctx, jwkscache.Registration{
		TenantID:   tenant,
		ProviderID: provider,
		JWKSURL:    idp.JWKSURL(),
		Issuer:     idp.Issuer(),
	})
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	fmt.Printf("registered %s/%s\n", tenant, provider)

	// The token's iss picks the tenant's provider: a tenant may have
	// several (Auth0 and Okta, say), and a token from any other issuer is
	// refused without a fetch. KeyfuncContext / TenantKeyfuncContext also
	// bound the waits for keys by a request's context.
	keyfunc := m.TenantKeyfuncContext(ctx, tenant)
	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{"RS256", "ES256"}),
		jwt.WithAudience(audience),
		jwt.WithExpirationRequired(),
	)
	verify := func(raw string) (*jwt.Token, error) { return parser.Parse(raw, keyfunc) }

	// 3. Verify a token signed with k1. The first lookup waits for the
	//    keys to load.
	tok, err := verify(idp.Token(idp.Claims("alice", audience)))
	if err != nil {
		return fmt.Errorf("token signed by %s: %w", k1.KID, err)
	}
	fmt.Printf("verified token  kid=%s alg=%s sub=%s\n", tok.Header["kid"], tok.Method.Alg(), subject(tok))
	fmt.Printf("upstream requests so far: %d\n", idp.Requests(jwkscachetest.JWKSPath))

	// 4. The IdP rotates to a new ES256 key "k2" without notice
	//    (publishing k1 and k2). The cache still holds only k1, for
	//    minutes; the unknown kid triggers one rate-limited refresh and the
	//    token verifies at once.
	before := idp.Requests(jwkscachetest.JWKSPath)
	k2 := idp.JWKS().Rotate("ES256")
	fmt.Printf("IdP rotated: now publishing %s\n", strings.Join(kidsOf(idp.JWKS().Keys()), ", "))
	tok, err = verify(idp.Token(idp.Claims("bob", audience)))
	if err != nil {
		return fmt.Errorf("token signed by the new key %s: %w", k2.KID, err)
	}
	fmt.Printf("verified token  kid=%s alg=%s sub=%s (new key caught on first sight, %d extra request)\n",
		tok.Header["kid"], tok.Method.Alg(), subject(tok), idp.Requests(jwkscachetest.JWKSPath)-before)
	if _, err := verify(k1.Sign(idp.Claims("alice", audience))); err != nil {
		return fmt.Errorf("token signed by the previous key %s: %w", k1.KID, err)
	}
	fmt.Printf("verified token  kid=%s (previous key still valid)\n", k1.KID)
	fmt.Printf("upstream requests so far: %d\n", idp.Requests(jwkscachetest.JWKSPath))

	// 5. A token from an issuer no provider of acme has, even signed with
	//    a published key, is refused without a fetch.
	forged := idp.Claims("mallory", audience)
	forged.Issuer = "https://evil.example"
	_, err = verify(k2.Sign(forged))
	if !errors.Is(err, jwt.ErrTokenInvalidIssuer) {
		return fmt.Errorf("token from another issuer: got error %v, want ErrTokenInvalidIssuer", err)
	}
	fmt.Printf("refused token   iss=%s (no provider of %s has this issuer)\n", forged.Issuer, tenant)

	// 6. What the cache knows about the provider.
	st, err := m.Status(tenant, provider)
	if err != nil {
		return err
	}
	var keys []string
	for _, k := range st.Keys {
		keys = append(keys, k.KID+" ("+k.KTY+" "+k.Alg+")")
	}
	fmt.Printf("status: state=%s stale=%v keys=[%s] expires in %s\n",
		st.State, st.Stale, strings.Join(keys, ", "), time.Until(st.ExpiresAt).Round(time.Second))

	// 7. An operator denies k2 (say it leaked): its tokens are refused at
	//    once, without waiting for the IdP to drop it.
	if err := m.DenyKey(tenant, provider, k2.KID); err != nil {
		return err
	}
	_, err = verify(k2.Sign(idp.Claims("mallory", audience)))
	if !errors.Is(err, jwkscache.ErrKeyDenied) {
		return fmt.Errorf("token signed by denied key %s: got error %v, want ErrKeyDenied", k2.KID, err)
	}
	fmt.Printf("refused token   kid=%s (denied by the operator)\n  error: %v\n", k2.KID, err)

	if err := m.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	fmt.Println("ok")
	return nil
}

func subject(tok *jwt.Token) string {
	s, _ := tok.Claims.GetSubject()
	return s
}

func kidsOf(keys []*jwkscachetest.Key) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.KID
	}
	return out
}

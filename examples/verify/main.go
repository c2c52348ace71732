// Command verify shows jwkscache at work against a local test identity
// provider: it verifies a token, catches a key rotation on first sight,
// prints the provider's status and refuses a denied key.
//
//	go run ./examples/verify
//
// Everything runs on 127.0.0.1: no internet access is needed. With a real
// IdP you would register its JWKS URL and drop RootCAs and
// AllowedAddresses from the Options.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/jwkscache/jwkscache"
	"github.com/jwkscache/jwkscache/internal/testidp"
)

const (
	tenant   = "acme"
	provider = "demo"
	jwksPath = "/jwks.json"
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
	//    RS256 signing key (kid "k1").
	idp := testidp.New()
	k1 := idp.Rotate(jwksPath, "RS256")
	idp.SetHeader(jwksPath, "Cache-Control", "max-age=300")
	jwksURL, stop, err := serveTLS(idp)
	if err != nil {
		return err
	}
	defer stop()
	fmt.Printf("test IdP serving key %q at %s\n", k1.KID, jwksURL)

	// 2. A Manager that trusts the IdP's test CA and may dial loopback
	//    (both refused by default), and the IdP registered for tenant acme.
	m, err := jwkscache.New(jwkscache.Options{
		RootCAs:          idp.CertPool(),
		AllowedAddresses: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	})
	if err != nil {
		return err
	}
	defer m.Close()
	err = m.Register(ctx, jwkscache.Registration{TenantID: tenant, ProviderID: provider, JWKSURL: jwksURL})
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	fmt.Printf("registered %s/%s\n", tenant, provider)

	keyfunc := m.Keyfunc(tenant, provider)
	verify := func(raw string) (*jwt.Token, error) {
		return jwt.Parse(raw, keyfunc, jwt.WithValidMethods([]string{"RS256", "ES256"}))
	}

	// 3. Verify a token signed with k1. The first lookup loads the keys.
	tok, err := verify(k1.Sign(claims("alice")))
	if err != nil {
		return fmt.Errorf("token signed by %s: %w", k1.KID, err)
	}
	fmt.Printf("verified token  kid=%s alg=%s sub=%s\n", tok.Header["kid"], tok.Method.Alg(), subject(tok))
	fmt.Printf("upstream requests so far: %d\n", idp.Requests(jwksPath))

	// 4. The IdP rotates to a new ES256 key "k2" (publishing k1 and k2).
	//    The cache still holds only k1, for minutes; the unknown kid
	//    triggers one rate-limited refresh and the token verifies at once.
	before := idp.Requests(jwksPath)
	k2 := idp.Rotate(jwksPath, "ES256")
	fmt.Printf("IdP rotated: now publishing %s\n", strings.Join(kidsOf(idp.Keys(jwksPath)), ", "))
	tok, err = verify(k2.Sign(claims("bob")))
	if err != nil {
		return fmt.Errorf("token signed by the new key %s: %w", k2.KID, err)
	}
	fmt.Printf("verified token  kid=%s alg=%s sub=%s (new key caught on first sight, %d extra request)\n",
		tok.Header["kid"], tok.Method.Alg(), subject(tok), idp.Requests(jwksPath)-before)
	if _, err := verify(k1.Sign(claims("alice"))); err != nil {
		return fmt.Errorf("token signed by the previous key %s: %w", k1.KID, err)
	}
	fmt.Printf("verified token  kid=%s (previous key still valid)\n", k1.KID)
	fmt.Printf("upstream requests so far: %d\n", idp.Requests(jwksPath))

	// 5. What the cache knows about the provider.
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

	// 6. An operator denies k2 (say it leaked): its tokens are refused at
	//    once, without waiting for the IdP to drop it.
	if err := m.DenyKey(tenant, provider, k2.KID); err != nil {
		return err
	}
	_, err = verify(k2.Sign(claims("mallory")))
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

// serveTLS serves idp over HTTPS on 127.0.0.1 with a random port and
// returns its JWKS URL and a function that stops the server.
func serveTLS(idp *testidp.IdP) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler:           idp,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{idp.Certificate()}},
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}
	return "https://" + ln.Addr().String() + jwksPath, stop, nil
}

func claims(sub string) jwt.RegisteredClaims {
	return jwt.RegisteredClaims{Subject: sub, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}
}

func subject(tok *jwt.Token) string {
	s, _ := tok.Claims.GetSubject()
	return s
}

func kidsOf(keys []*testidp.Key) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.KID
	}
	return out
}

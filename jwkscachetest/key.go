package jwkscachetest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	jwt "github.com/golang-jwt/jwt/v5"
)

// rsaPoolSize is the number of distinct RSA private keys NewKey hands out
// before it starts reusing key material.
const rsaPoolSize = 4

// rsaPool holds lazily generated RSA 2048 keys shared by every NewKey call in
// the process, because generating RSA keys is slow (especially under -race).
var rsaPool struct {
	mu   sync.Mutex
	keys []*rsa.PrivateKey
	next int
}

// pooledRSAKey returns the next RSA private key from the process-wide pool,
// generating it if the pool is not yet full.
func pooledRSAKey() *rsa.PrivateKey {
	rsaPool.mu.Lock()
	defer rsaPool.mu.Unlock()
	i := rsaPool.next % rsaPoolSize
	rsaPool.next++
	if i < len(rsaPool.keys) {
		return rsaPool.keys[i]
	}
	k := mustRSA()
	rsaPool.keys = append(rsaPool.keys, k)
	return k
}

func mustRSA() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(fmt.Sprintf("jwkscachetest: generating RSA key: %v", err))
	}
	return k
}

// Key is a signing key pair an IdP can publish and sign with.
//
// Signer holds the private key (*rsa.PrivateKey, *ecdsa.PrivateKey or
// ed25519.PrivateKey) and Public is the public JWK exactly as the IdP
// publishes it in a JWKS document. Tests may build or modify Keys by hand,
// for example to publish a JWK whose "alg" disagrees with the signing key,
// but must not modify a Key while an IdP publishes it.
type Key struct {
	// KID is the key ID: the "kid" of the published JWK and of the
	// tokens Sign produces.
	KID string
	// Alg is the JWS algorithm the key signs with: "RS256", "RS384",
	// "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512" or
	// "EdDSA".
	Alg string
	// Signer is the private key.
	Signer crypto.Signer
	// Public is the public JWK as published: Key is the public key, and
	// KeyID, Algorithm and Use ("sig") are set.
	Public jose.JSONWebKey
}

// NewKey returns a key for algorithm alg with key ID kid: RSA 2048 for
// RS*/PS*, P-256/P-384/P-521 for ES256/ES384/ES512 and Ed25519 for EdDSA.
// It panics on an unknown algorithm (HMAC algorithms included: an IdP
// publishes only asymmetric keys; see Key.SignHMACWithPublicKey).
//
// RSA key material comes from a small process-wide pool of pre-generated
// keys (4 of them) so that NewKey stays cheap: the first four RSA keys
// requested in a process are distinct, later ones reuse that material in
// round-robin order. Two RSA Keys can therefore share a private key while
// having different KIDs; use NewUniqueKey when a test depends on the key
// material being different (for example, that a token signed by one key
// does not verify under another).
func NewKey(alg, kid string) *Key {
	return newKey(alg, kid, false)
}

// NewUniqueKey is like NewKey but always generates fresh key material, even
// for RSA algorithms, bypassing the shared RSA pool.
func NewUniqueKey(alg, kid string) *Key {
	return newKey(alg, kid, true)
}

func newKey(alg, kid string, unique bool) *Key {
	var signer crypto.Signer
	var err error
	switch alg {
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		if unique {
			signer = mustRSA()
		} else {
			signer = pooledRSAKey()
		}
	case "ES256":
		signer, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ES384":
		signer, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ES512":
		signer, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "EdDSA":
		_, signer, err = ed25519.GenerateKey(rand.Reader)
	default:
		panic(fmt.Sprintf("jwkscachetest: unknown algorithm %q", alg))
	}
	if err != nil {
		panic(fmt.Sprintf("jwkscachetest: generating %s key: %v", alg, err))
	}
	return &Key{
		KID:    kid,
		Alg:    alg,
		Signer: signer,
		Public: jose.JSONWebKey{
			Key:       signer.Public(),
			KeyID:     kid,
			Algorithm: alg,
			Use:       "sig",
		},
	}
}

// Sign returns a compact JWT carrying claims, signed with the key, whose
// header has "alg" set to k.Alg, "typ" set to "JWT" and "kid" set to
// k.KID. It panics on error.
//
// claims is usually a jwt.MapClaims or a jwt.RegisteredClaims (see
// IdP.Claims); an expired token, a wrong audience or a wrong issuer are a
// matter of claims, and a token from an unknown key is one signed by a key
// the IdP does not publish.
func (k *Key) Sign(claims jwt.Claims) string {
	return k.SignWith(claims, map[string]any{"kid": k.KID})
}

// SignWithoutKID is like Sign but the token header carries no "kid".
func (k *Key) SignWithoutKID(claims jwt.Claims) string {
	return k.SignWith(claims, nil)
}

// SignWith signs claims with the key's algorithm and merges header into
// the token header, which otherwise holds only "alg" and "typ" (pass
// "kid": k.KID to keep the key ID); a nil value removes that member.
// Overriding "alg" changes only the header, not the algorithm used to
// sign, which is handy for algorithm-confusion tests. It panics on error.
func (k *Key) SignWith(claims jwt.Claims, header map[string]any) string {
	m := jwt.GetSigningMethod(k.Alg)
	if m == nil {
		panic(fmt.Sprintf("jwkscachetest: no signing method for %q", k.Alg))
	}
	tok := jwt.NewWithClaims(m, claims)
	for name, v := range header {
		if v == nil {
			delete(tok.Header, name)
		} else {
			tok.Header[name] = v
		}
	}
	s, err := tok.SignedString(k.Signer)
	if err != nil {
		panic(fmt.Sprintf("jwkscachetest: signing with %s key %q: %v", k.Alg, k.KID, err))
	}
	return s
}

// PublicKeyPEM returns the public key in PEM form ("PUBLIC KEY", a DER
// SubjectPublicKeyInfo), as a verifier configured by hand would hold it.
func (k *Key) PublicKeyPEM() []byte {
	der, err := x509.MarshalPKIXPublicKey(k.Signer.Public())
	if err != nil {
		panic(fmt.Sprintf("jwkscachetest: marshaling %s public key %q: %v", k.Alg, k.KID, err))
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// SignHMACWithPublicKey returns an algorithm-confusion token: a JWT
// carrying claims whose header says "alg": "HS256" and "kid": k.KID, MACed
// with HMAC-SHA256 under PublicKeyPEM as the secret. A verifier that lets
// the token pick the algorithm, and hands the published public key to an
// HMAC check, accepts it; a correct one refuses it.
func (k *Key) SignHMACWithPublicKey(claims jwt.Claims) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	tok.Header["kid"] = k.KID
	s, err := tok.SignedString(k.PublicKeyPEM())
	if err != nil {
		panic(fmt.Sprintf("jwkscachetest: HS256 with %s public key %q: %v", k.Alg, k.KID, err))
	}
	return s
}

// UnsignedToken returns an unsecured JWT (RFC 7519 section 6): claims
// under a header with "alg": "none" and "typ": "JWT", merged with header
// (a nil value removes a member), and an empty signature. A verifier must
// refuse it.
func UnsignedToken(claims jwt.Claims, header map[string]any) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodNone, claims)
	for name, v := range header {
		if v == nil {
			delete(tok.Header, name)
		} else {
			tok.Header[name] = v
		}
	}
	s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		panic("jwkscachetest: unsigned token: " + err.Error())
	}
	return s
}

// Claims returns registered claims for a token the IdP issues now: "iss"
// is the IdP's Issuer, "sub" is subject, "aud" is audience (none if
// empty), "iat" is the current time and "exp" one hour later, per
// time.Now (the fake clock inside a synctest bubble). Modify the result
// for negative tests, for example:
//
//	c := idp.Claims("alice", "api")
//	c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute)) // expired
//	c.Issuer = "https://evil.test"                                 // wrong issuer
//	c.Audience = jwt.ClaimStrings{"other"}                         // wrong audience
func (p *IdP) Claims(subject string, audience ...string) jwt.RegisteredClaims {
	now := time.Now()
	c := jwt.RegisteredClaims{
		Issuer:    p.Issuer(),
		Subject:   subject,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)),
	}
	if len(audience) > 0 {
		c.Audience = slices.Clone(audience)
	}
	return c
}

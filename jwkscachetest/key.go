package jwkscachetest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"sync"

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

// Key is a signing key pair the IdP publishes.
//
// Signer holds the private key (*rsa.PrivateKey, *ecdsa.PrivateKey or
// ed25519.PrivateKey) and Public is the public JWK exactly as the IdP
// publishes it in a JWKS document. Tests may build or modify Keys by hand,
// for example to publish a JWK whose "alg" disagrees with the signing key.
type Key struct {
	KID    string
	Alg    string          // "RS256","RS384","RS512","PS256","PS384","PS512","ES256","ES384","ES512","EdDSA"
	Signer crypto.Signer   // private key
	Public jose.JSONWebKey // public JWK as published (Key=public key, KeyID, Algorithm, Use "sig")
}

// NewKey returns a key for algorithm alg with key ID kid: RSA 2048 for
// RS*/PS*, P-256/P-384/P-521 for ES256/ES384/ES512 and Ed25519 for EdDSA.
// It panics on an unknown algorithm.
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
// header has "alg" set to k.Alg and "kid" set to k.KID. It panics on error.
func (k *Key) Sign(claims jwt.Claims) string {
	return k.SignWith(claims, map[string]any{"kid": k.KID})
}

// SignWithoutKID is like Sign but the token header carries no "kid".
func (k *Key) SignWithoutKID(claims jwt.Claims) string {
	return k.SignWith(claims, nil)
}

// SignWith signs claims with the key's algorithm and adds header to the
// token header; a nil value removes that header parameter. Overriding "alg"
// changes only the header, not the algorithm used to sign, which is handy
// for algorithm-confusion tests. It panics on error.
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

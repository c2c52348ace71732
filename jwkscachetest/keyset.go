package jwkscachetest

import (
	"cmp"
	"slices"

	jwt "github.com/golang-jwt/jwt/v5"
)

// KeySet is the key set an IdP serves at one path: an ordered list of
// published keys, served as a JWKS document ({"keys":[...]}, Content-Type
// application/jwk-set+json), and a signing key, the key Token signs with.
//
// A KeySet is a handle: it holds no state of its own, and any number of
// handles for the same path may be used, concurrently too. Every change
// replaces the served document at once, so a client sees either the old
// set or the new one. Keys are published in order, and the signing key,
// when there is one, is always one of the published keys.
//
// # Rotation
//
// Rotate is an immediate rotation: the new key is published and starts
// signing in the same step, as with providers that rotate without notice;
// the key it replaces stays published. A pre-published rotation takes two
// steps, as with providers that announce the next key ahead of time:
// PrePublish publishes the next key without signing with it, and
// SetSigningKey later makes it the signing key. Remove and RemoveOld
// unpublish keys.
type KeySet struct {
	p    *IdP
	path string
}

// KeySet returns the key set served at path. Reading it does not create
// content; the first change makes path serve a key set, replacing any
// other content (SetBody, SetDiscovery).
func (p *IdP) KeySet(path string) *KeySet { return &KeySet{p: p, path: path} }

// JWKS returns the IdP's main key set, at JWKSPath: the one whose URL is
// JWKSURL and that Token signs with.
func (p *IdP) JWKS() *KeySet { return p.KeySet(JWKSPath) }

// Path returns the path of the key set.
func (ks *KeySet) Path() string { return ks.path }

// URL returns the URL of the key set: the IdP's URL followed by Path.
func (ks *KeySet) URL() string { return ks.p.URL() + ks.path }

// Keys returns the published keys, in order: nil if the path serves
// nothing, raw bytes or a discovery document.
func (ks *KeySet) Keys() []*Key {
	var keys []*Key
	ks.p.view(ks.path, func(rt *route) {
		if rt != nil {
			keys = slices.Clone(rt.keys)
		}
	})
	return keys
}

// SigningKey returns the signing key, or nil if there is none.
func (ks *KeySet) SigningKey() *Key {
	var k *Key
	ks.p.view(ks.path, func(rt *route) {
		if rt != nil {
			k = rt.signer
		}
	})
	return k
}

// edit replaces the published keys with f(keys) and the signing key with
// signer(newKeys, oldSigner), in one step.
func (ks *KeySet) edit(f func(keys []*Key, signer *Key) ([]*Key, *Key)) {
	ks.p.update(ks.path, func(rt *route) {
		keys, signer := f(slices.Clone(rt.keys), rt.signer)
		rt.signer = signer
		rt.regenerate(keys)
	})
}

// Set publishes exactly keys, in that order, and makes the first one the
// signing key. With no keys it serves an empty key set ({"keys":[]}) and
// there is no signing key.
func (ks *KeySet) Set(keys ...*Key) {
	keys = slices.Clone(keys)
	ks.edit(func([]*Key, *Key) ([]*Key, *Key) {
		if len(keys) == 0 {
			return keys, nil
		}
		return keys, keys[0]
	})
}

// Add publishes k after the published keys. The signing key does not
// change, unless there was none: then k becomes the signing key.
func (ks *KeySet) Add(k *Key) {
	ks.edit(func(keys []*Key, signer *Key) ([]*Key, *Key) {
		return append(keys, k), cmp.Or(signer, k)
	})
}

// Remove unpublishes every key whose key ID is kid. If the signing key is
// among them, there is no signing key until Set, Add, SetSigningKey or
// Rotate provides one.
func (ks *KeySet) Remove(kid string) {
	ks.edit(func(keys []*Key, signer *Key) ([]*Key, *Key) {
		return slices.DeleteFunc(keys, func(k *Key) bool { return k.KID == kid }), signer
	})
}

// RemoveOld unpublishes the keys published before the signing key, the
// last step of a rotation once the tokens they signed have expired. Keys
// published after it (pre-published keys) stay. Without a signing key it
// does nothing.
func (ks *KeySet) RemoveOld() {
	ks.edit(func(keys []*Key, signer *Key) ([]*Key, *Key) {
		if i := slices.Index(keys, signer); i > 0 {
			keys = keys[i:]
		}
		return keys, signer
	})
}

// PrePublish generates a key for alg (see NewKey) with the next key ID of
// the IdP ("k1", "k2", ...), publishes it after the published keys and
// returns it. The signing key does not change, unless there was none;
// call SetSigningKey with the returned key to start signing with it.
func (ks *KeySet) PrePublish(alg string) *Key {
	k := NewKey(alg, ks.p.nextKID())
	ks.Add(k)
	return k
}

// SetSigningKey makes k the signing key. If k is not published (compared
// by pointer, not by key ID), it is published after the published keys in
// the same step: SetSigningKey(NewKey(alg, kid)) is an immediate rotation
// that keeps every published key. It panics if k is nil.
func (ks *KeySet) SetSigningKey(k *Key) {
	if k == nil {
		panicf("SetSigningKey(nil) at %s", ks.path)
	}
	ks.edit(func(keys []*Key, _ *Key) ([]*Key, *Key) {
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
		return keys, k
	})
}

// Rotate performs an immediate rotation and returns the new key: it
// generates a key for alg (see NewKey) with the next key ID of the IdP
// ("k1", "k2", ...), publishes it after the published keys and makes it the
// signing key, then unpublishes all but the last two keys. After a series
// of rotations the set therefore holds the previous key, so that tokens
// it signed keep verifying, and the new one.
func (ks *KeySet) Rotate(alg string) *Key {
	k := NewKey(alg, ks.p.nextKID()) // outside the lock: RSA generation may be slow
	ks.edit(func(keys []*Key, _ *Key) ([]*Key, *Key) {
		keys = append(keys, k)
		return keys[max(len(keys)-2, 0):], k
	})
	return k
}

// mustSigner returns the signing key or panics.
func (ks *KeySet) mustSigner() *Key {
	k := ks.SigningKey()
	if k == nil {
		panicf("no signing key at %s", ks.path)
	}
	return k
}

// Token returns a compact JWT carrying claims, signed by the signing key
// with its algorithm, whose header holds "alg", "typ": "JWT" and the
// signing key's "kid". It panics if there is no signing key.
func (ks *KeySet) Token(claims jwt.Claims) string { return ks.mustSigner().Sign(claims) }

// TokenWithoutKID is like Token but the token header carries no "kid".
func (ks *KeySet) TokenWithoutKID(claims jwt.Claims) string {
	return ks.mustSigner().SignWithoutKID(claims)
}

// TokenWithHeader is like Token with header merged into the token header
// (see Key.SignWith).
func (ks *KeySet) TokenWithHeader(claims jwt.Claims, header map[string]any) string {
	k := ks.mustSigner()
	h := map[string]any{"kid": k.KID}
	for name, v := range header {
		h[name] = v
	}
	return k.SignWith(claims, h)
}

// SigningKey returns the signing key of the main key set (JWKS), or nil.
func (p *IdP) SigningKey() *Key { return p.JWKS().SigningKey() }

// Token returns a JWT carrying claims signed by the current signing key of
// the main key set (JWKS), with its key ID. See KeySet.Token.
func (p *IdP) Token(claims jwt.Claims) string { return p.JWKS().Token(claims) }

// TokenWithoutKID is like Token but the token header carries no "kid".
func (p *IdP) TokenWithoutKID(claims jwt.Claims) string { return p.JWKS().TokenWithoutKID(claims) }

// TokenWithHeader is like Token with header merged into the token header:
// a nil value removes a member, and overriding "alg" changes only the
// header, not the signature algorithm (see Key.SignWith).
func (p *IdP) TokenWithHeader(claims jwt.Claims, header map[string]any) string {
	return p.JWKS().TokenWithHeader(claims, header)
}

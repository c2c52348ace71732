package bench

import "testing"

func withIdP(b *testing.B, alg string) *IdP {
	p, err := StartIdP(alg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.Close)
	return p
}

// BenchmarkWarmKeyfunc is workload 1: the warm key lookup for a parsed
// RS256 token, per peer. go-oidc has none and is skipped (see
// BenchmarkVerify).
func BenchmarkWarmKeyfunc(b *testing.B) {
	p := withIdP(b, "RS256")
	for _, peer := range Peers {
		b.Run(peer.Name, func(b *testing.B) { BenchWarm(b, peer, p) })
	}
}

// BenchmarkVerify is workload 2: verifying a token through each peer and
// with the raw public key (golang-jwt and go-jose baselines).
func BenchmarkVerify(b *testing.B) {
	for _, alg := range []string{"RS256", "ES256"} {
		p := withIdP(b, alg)
		b.Run(alg+"/raw-golang-jwt", func(b *testing.B) { BenchRawJWT(b, p) })
		b.Run(alg+"/raw-go-jose", func(b *testing.B) { BenchRawJOSE(b, p) })
		for _, peer := range Peers {
			b.Run(alg+"/"+peer.Name, func(b *testing.B) { BenchVerify(b, peer, p) })
		}
	}
}

package jwkscachetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"math/big"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Validity window of the generated certificates. It is wide enough to cover
// both the real clock and the fake clock of testing/synctest bubbles, which
// starts at 2000-01-01 00:00:00 UTC.
var (
	certNotBefore = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)
	certNotAfter  = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
)

// loopback are the address ranges of a started IdP.
var loopback = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
}

// AllowedAddresses returns the address ranges a started IdP listens in,
// the IPv4 and IPv6 loopback ranges 127.0.0.0/8 and ::1/128, as a new
// slice. They are refused by jwkscache's dial guard by default; use them
// as jwkscache.Options.AllowedAddresses.
func (p *IdP) AllowedAddresses() []netip.Prefix { return slices.Clone(loopback) }

// pki is the process-wide TLS material shared by every IdP.
var pki struct {
	once sync.Once
	ca   *x509.Certificate
	leaf *x509.Certificate
	cert tls.Certificate
}

// loadPKI generates, once per process, an ECDSA P-256 CA and a leaf
// certificate signed by it for localhost, idp.test, *.idp.test, 127.0.0.1
// and ::1.
func loadPKI() {
	pki.once.Do(func() {
		caKey, leafKey := mustECDSA(), mustECDSA()
		ca := mustCert(&x509.Certificate{
			Subject:               pkix.Name{CommonName: "jwkscachetest CA"},
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
			BasicConstraintsValid: true,
			IsCA:                  true,
			MaxPathLenZero:        true,
		}, nil, caKey, caKey)
		leaf := mustCert(&x509.Certificate{
			Subject:     pkix.Name{CommonName: "idp.test"},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames:    []string{"localhost", "idp.test", "*.idp.test"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		}, ca, caKey, leafKey)
		pki.ca, pki.leaf = ca, leaf
		pki.cert = tls.Certificate{Certificate: [][]byte{leaf.Raw, ca.Raw}, PrivateKey: leafKey, Leaf: leaf}
	})
}

func mustECDSA() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic("jwkscachetest: generating ECDSA key: " + err.Error())
	}
	return k
}

// mustCert issues a certificate from tmpl for subject's public key, signed
// by signer as parent (self-signed if parent is nil), with a random serial
// number and the fixed validity window.
func mustCert(tmpl, parent *x509.Certificate, signer, subject *ecdsa.PrivateKey) *x509.Certificate {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic("jwkscachetest: serial number: " + err.Error())
	}
	tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = serial, certNotBefore, certNotAfter
	tmpl.Subject.Organization = []string{"jwkscachetest"}
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &subject.PublicKey, signer)
	if err != nil {
		panic("jwkscachetest: creating certificate: " + err.Error())
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		panic("jwkscachetest: parsing certificate: " + err.Error())
	}
	return cert
}

// CA returns the certificate authority that issued the IdP's TLS
// certificate. It is shared by all IdPs in the process.
func (p *IdP) CA() *x509.Certificate {
	loadPKI()
	return pki.ca
}

// Leaf returns the IdP's TLS server certificate, valid from 1970 to 2100 for
// localhost, idp.test, *.idp.test, 127.0.0.1 and ::1. It is shared by all
// IdPs in the process.
func (p *IdP) Leaf() *x509.Certificate {
	loadPKI()
	return pki.leaf
}

// CertPool returns a new pool containing only the IdP's CA (see CA),
// suitable as tls.Config.RootCAs for clients of an IdP started with Start,
// and as jwkscache.Options.RootCAs.
func (p *IdP) CertPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.CA())
	return pool
}

// Certificate returns the IdP's TLS certificate chain (leaf then CA) with
// its private key, as Start serves it. Use it to serve the IdP (an
// http.Handler) from a server of your own, such as an httptest.Server.
func (p *IdP) Certificate() tls.Certificate {
	loadPKI()
	return pki.cert
}

// SPKIPin returns the standard, padded base64 encoding of the SHA-256 digest
// of cert's DER-encoded SubjectPublicKeyInfo, the usual form of a public key
// pin.
func SPKIPin(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

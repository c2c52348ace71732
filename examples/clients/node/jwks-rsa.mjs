import jwksClient from 'jwks-rsa'
import jwt from 'jsonwebtoken'

// daemonClient returns a jwks-rsa client for one provider's keys, served by
// the daemon at jwksURL: http://jwks-cache:8080/tenants/acme/providers/main/jwks, say.
export function daemonClient(jwksURL) {
  return jwksClient({
    jwksUri: jwksURL,
    // jwks-rsa fetches the set only for a kid its cache lacks (a kid first
    // seen, or cached for longer than cacheMaxAge): each fetch asks the
    // daemon to revalidate with the IdP first.
    requestHeaders: { 'Cache-Control': 'no-cache' },
    cache: true,              // default: keys cached per kid
    cacheMaxAge: 600_000,     // default: 10 min
    rateLimit: true,          // at most jwksRequestsPerMinute fetches
    jwksRequestsPerMinute: 60,
    timeout: 5_000,           // the daemon waits at most 2 s for the IdP
  })
}

// Verify a token with jsonwebtoken, its key found by kid.
export async function verify(client, token, { issuer, audience }) {
  const decoded = jwt.decode(token, { complete: true })
  if (!decoded) throw new Error('not a JWT')
  const key = await client.getSigningKey(decoded.header.kid)
  const payload = jwt.verify(token, key.getPublicKey(), {
    issuer,
    audience,
    algorithms: ['RS256', 'ES256'],
  })
  return { kid: decoded.header.kid, sub: payload.sub }
}

// ---- end of the code shown in docs/clients.md ----

// Test harness, run by ../clients_test.go:
//
//	JWT_ISSUER=... JWT_AUDIENCE=... node jwks-rsa.mjs JWKS_URL TOKEN1 TOKEN2
//
// It verifies TOKEN1, prints "verified token1 ...", then waits for a line on
// standard input (the test publishes TOKEN2's key at the IdP meanwhile), and
// verifies TOKEN2.
import { createInterface } from 'node:readline'

const [jwksURL, token1, token2] = process.argv.slice(2)
const claims = { issuer: process.env.JWT_ISSUER, audience: process.env.JWT_AUDIENCE }
const client = daemonClient(jwksURL)

const v1 = await verify(client, token1, claims)
console.log(`verified token1 kid=${v1.kid} sub=${v1.sub}`)

const input = createInterface({ input: process.stdin })
for await (const _ of input) break
input.close()

const v2 = await verify(client, token2, claims)
console.log(`verified token2 kid=${v2.kid} sub=${v2.sub}`)

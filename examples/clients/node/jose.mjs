import { createRemoteJWKSet, customFetch, jwtVerify } from 'jose'

// daemonKeys returns jose's key resolver for one provider's keys, served by
// the daemon at jwksURL: http://jwks-cache:8080/tenants/acme/providers/main/jwks, say.
export function daemonKeys(jwksURL) {
  const keys = createRemoteJWKSet(new URL(jwksURL), {
    cacheMaxAge: 60_000,    // reloads come from the daemon's memory: cheap
    cooldownDuration: 0,    // a reload came from memory: refetch at once
    timeoutDuration: 5_000, // the daemon waits at most 2 s for the IdP
    [customFetch]: (url, init) => {
      // jose refetches a set that is still fresh only when no key matched
      // a token's kid: then the daemon must ask the IdP before answering.
      if (keys.fresh) {
        const headers = new Headers(init.headers)
        headers.set('Cache-Control', 'no-cache')
        init = { ...init, headers }
      }
      return fetch(url, init)
    },
  })
  return keys
}

// Verify a token: jwtVerify(token, keys, { issuer, audience, algorithms })
export async function verify(keys, token, { issuer, audience }) {
  const { payload, protectedHeader } = await jwtVerify(token, keys, {
    issuer,
    audience,
    algorithms: ['RS256', 'ES256'],
  })
  return { kid: protectedHeader.kid, sub: payload.sub }
}

// ---- end of the code shown in docs/clients.md ----

// Test harness, run by ../clients_test.go:
//
//	JWT_ISSUER=... JWT_AUDIENCE=... node jose.mjs JWKS_URL TOKEN1 TOKEN2
//
// It verifies TOKEN1, prints "verified token1 ...", then waits for a line on
// standard input (the test publishes TOKEN2's key at the IdP meanwhile), and
// verifies TOKEN2. With JOSE_ADVANCE_MS, jose's clock jumps that far ahead
// before TOKEN2, as if it came later: past cacheMaxAge, jose first reloads
// the set, which the daemon answers from memory, then refetches for the kid.
import { createInterface } from 'node:readline'

const [jwksURL, token1, token2] = process.argv.slice(2)
const claims = { issuer: process.env.JWT_ISSUER, audience: process.env.JWT_AUDIENCE }
const keys = daemonKeys(jwksURL)

const v1 = await verify(keys, token1, claims)
console.log(`verified token1 kid=${v1.kid} sub=${v1.sub}`)

const input = createInterface({ input: process.stdin })
for await (const _ of input) break
input.close()

const advance = Number(process.env.JOSE_ADVANCE_MS ?? 0)
if (advance > 0) {
  const now = Date.now
  Date.now = () => now() + advance
}
const v2 = await verify(keys, token2, claims)
console.log(`verified token2 kid=${v2.kid} sub=${v2.sub}`)

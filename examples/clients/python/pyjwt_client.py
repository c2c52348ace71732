import jwt
from jwt import PyJWKClient

# One provider's keys, served by the daemon.
JWKS_URL = "http://jwks-cache:8080/tenants/acme/providers/main/jwks"

jwks_client = PyJWKClient(
    JWKS_URL,
    # PyJWKClient refetches the whole set when a token's kid matches no key
    # in it: with no-cache the daemon revalidates with the IdP first. Every
    # fetch sends the header, the one each `lifespan` included.
    headers={"Cache-Control": "no-cache"},
    cache_jwk_set=True,  # default: keep the set between fetches
    lifespan=300,  # default, seconds: the routine refetch
    cache_keys=False,  # default; its per-kid cache would never expire
    timeout=5,  # seconds; the daemon waits at most 2 s for the IdP
)


def verify(token: str, issuer: str, audience: str) -> dict:
    signing_key = jwks_client.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        signing_key.key,
        algorithms=["RS256", "ES256"],
        issuer=issuer,
        audience=audience,
    )

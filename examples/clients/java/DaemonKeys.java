import java.net.URI;
import java.net.URL;
import java.util.List;
import java.util.Map;
import java.util.Set;

import com.nimbusds.jose.JWSAlgorithm;
import com.nimbusds.jose.jwk.source.JWKSource;
import com.nimbusds.jose.jwk.source.JWKSourceBuilder;
import com.nimbusds.jose.proc.JWSVerificationKeySelector;
import com.nimbusds.jose.proc.SecurityContext;
import com.nimbusds.jose.util.DefaultResourceRetriever;
import com.nimbusds.jwt.JWTClaimsSet;
import com.nimbusds.jwt.proc.ConfigurableJWTProcessor;
import com.nimbusds.jwt.proc.DefaultJWTClaimsVerifier;
import com.nimbusds.jwt.proc.DefaultJWTProcessor;

public final class DaemonKeys {

	/**
	 * A JWT processor whose keys come from the daemon, at jwksURL:
	 * http://jwks-cache:8080/tenants/acme/providers/main/jwks, say.
	 */
	public static ConfigurableJWTProcessor<SecurityContext> processor(
			String jwksURL, String issuer, String audience) throws Exception {

		DefaultResourceRetriever retriever = new DefaultResourceRetriever(
			1_000,      // connect timeout, ms
			5_000,      // read timeout, ms: the daemon waits at most 2 s for the IdP
			256 * 1024  // size limit, bytes
		);
		// Nimbus refetches the set when no key matches a token's kid; with
		// no-cache the daemon revalidates with the IdP first. Every fetch
		// sends the header, the routine ones included.
		retriever.setHeaders(Map.of("Cache-Control", List.of("no-cache")));

		URL url = URI.create(jwksURL).toURL();
		JWKSource<SecurityContext> keys = JWKSourceBuilder.<SecurityContext>create(url, retriever)
			.cache(JWKSourceBuilder.DEFAULT_CACHE_TIME_TO_LIVE,    // 5 min
				JWKSourceBuilder.DEFAULT_CACHE_REFRESH_TIMEOUT) // 15 s
			.rateLimited(5_000) // at most 2 fetches per 5 s (default 30 s)
			.build();

		DefaultJWTProcessor<SecurityContext> processor = new DefaultJWTProcessor<>();
		processor.setJWSKeySelector(new JWSVerificationKeySelector<>(
			Set.of(JWSAlgorithm.RS256, JWSAlgorithm.ES256), keys));
		processor.setJWTClaimsSetVerifier(new DefaultJWTClaimsVerifier<>(
			audience,
			new JWTClaimsSet.Builder().issuer(issuer).build(),
			Set.of("sub", "exp")));
		return processor;
	}

	// Verify: JWTClaimsSet claims = processor.process(token, null);
}

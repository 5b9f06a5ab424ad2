package com.bbsso.bitbucket;

import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.util.Base64;
import java.util.List;
import java.util.Map;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * Verifies the identity assertion the proxy sends: a compact HS256 JWS under the shared secret, with
 * {@code aud = "bitbucket"}, the configured {@code iss}, an unexpired {@code exp} (at most 60 s leeway) and
 * {@code sub} equal to the username header. Only the JDK is used; the signature comparison is constant-time.
 */
public final class AssertionVerifier {
    /** The audience the proxy puts in every assertion. */
    public static final String AUDIENCE = "bitbucket";
    /** Clock leeway for {@code exp}, {@code nbf} and {@code iat}, in seconds. */
    public static final long LEEWAY_SECONDS = 60;

    private final byte[] secret;
    private final String issuer;

    /** {@code secret} may be null or empty: then every assertion is refused (closed by default). */
    public AssertionVerifier(String secret, String issuer) {
        this.secret = secret == null ? new byte[0] : secret.getBytes(StandardCharsets.UTF_8);
        this.issuer = issuer;
    }

    /** The outcome: {@code ok}, or a reason code for the log. */
    public static final class Result {
        public final boolean ok;
        public final String reason;

        private Result(boolean ok, String reason) {
            this.ok = ok;
            this.reason = reason;
        }

        static Result ok() {
            return new Result(true, "ok");
        }

        static Result refused(String reason) {
            return new Result(false, reason);
        }

        @Override
        public String toString() {
            return ok ? "ok" : "refused: " + reason;
        }
    }

    /** Checks {@code token} for {@code username} at {@code nowSeconds} (unix time). */
    public Result verify(String token, String username, long nowSeconds) {
        if (secret.length == 0) {
            return Result.refused("no_secret_configured");
        }
        if (token == null || token.isEmpty()) {
            return Result.refused("missing_assertion");
        }
        if (username == null || username.isEmpty()) {
            return Result.refused("missing_username");
        }
        String[] parts = token.split("\\.", -1);
        if (parts.length != 3) {
            return Result.refused("malformed");
        }
        Map<String, Object> header;
        Map<String, Object> claims;
        byte[] signature;
        try {
            header = Json.parseObject(decode(parts[0]));
            claims = Json.parseObject(decode(parts[1]));
            signature = Base64.getUrlDecoder().decode(parts[2]);
        } catch (IllegalArgumentException e) {
            return Result.refused("malformed");
        }
        if (!"HS256".equals(header.get("alg"))) {
            return Result.refused("algorithm_not_hs256");
        }
        byte[] expected;
        try {
            Mac mac = Mac.getInstance("HmacSHA256");
            mac.init(new SecretKeySpec(secret, "HmacSHA256"));
            expected = mac.doFinal((parts[0] + "." + parts[1]).getBytes(StandardCharsets.US_ASCII));
        } catch (GeneralSecurityException e) {
            return Result.refused("crypto_unavailable");
        }
        if (!MessageDigest.isEqual(expected, signature)) {
            return Result.refused("bad_signature");
        }
        if (!audienceMatches(claims.get("aud"))) {
            return Result.refused("wrong_audience");
        }
        if (issuer == null || !issuer.equals(claims.get("iss"))) {
            return Result.refused("wrong_issuer");
        }
        Object exp = claims.get("exp");
        if (!(exp instanceof Long)) {
            return Result.refused("missing_exp");
        }
        if (nowSeconds > (Long) exp + LEEWAY_SECONDS) {
            return Result.refused("expired");
        }
        Object nbf = claims.get("nbf");
        if (nbf instanceof Long && nowSeconds + LEEWAY_SECONDS < (Long) nbf) {
            return Result.refused("not_yet_valid");
        }
        Object iat = claims.get("iat");
        if (iat instanceof Long && nowSeconds + LEEWAY_SECONDS < (Long) iat) {
            return Result.refused("issued_in_future");
        }
        if (!username.equals(claims.get("sub"))) {
            return Result.refused("subject_mismatch");
        }
        return Result.ok();
    }

    private static boolean audienceMatches(Object aud) {
        if (AUDIENCE.equals(aud)) {
            return true;
        }
        if (aud instanceof List) {
            for (Object a : (List<?>) aud) {
                if (AUDIENCE.equals(a)) {
                    return true;
                }
            }
        }
        return false;
    }

    private static String decode(String part) {
        return new String(Base64.getUrlDecoder().decode(part), StandardCharsets.UTF_8);
    }
}

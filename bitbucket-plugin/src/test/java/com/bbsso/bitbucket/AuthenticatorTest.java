package com.bbsso.bitbucket;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import com.atlassian.bitbucket.auth.AuthenticationResult;
import com.atlassian.bitbucket.auth.ExpiredAuthenticationException;
import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.HashMap;
import java.util.Map;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;
import org.junit.Test;

public class AuthenticatorTest {
    static final String SECRET = "test-assertion-secret-0123456789abcdef";
    static final String ISSUER = "https://bitbucket.example.com/sso";
    static final long NOW = 1_800_000_000L;

    static String jws(String headerJson, String claimsJson, String secret) throws Exception {
        Base64.Encoder enc = Base64.getUrlEncoder().withoutPadding();
        String signing = enc.encodeToString(headerJson.getBytes(StandardCharsets.UTF_8)) + "." + enc.encodeToString(claimsJson.getBytes(StandardCharsets.UTF_8));
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(secret.getBytes(StandardCharsets.UTF_8), "HmacSHA256"));
        return signing + "." + enc.encodeToString(mac.doFinal(signing.getBytes(StandardCharsets.US_ASCII)));
    }

    static String assertion(String sub, long exp) throws Exception {
        return jws("{\"alg\":\"HS256\",\"typ\":\"JWT\"}",
                "{\"iss\":\"" + ISSUER + "\",\"aud\":\"bitbucket\",\"sub\":\"" + sub + "\",\"iat\":" + (exp - 60) + ",\"exp\":" + exp + ",\"jti\":\"j\"}", SECRET);
    }

    static BbssoConfig config(String secret, String trusted) {
        Map<String, String> p = new HashMap<>();
        p.put("plugin.bbsso.secret", secret);
        p.put("plugin.bbsso.issuer", ISSUER);
        p.put("plugin.bbsso.trusted-networks", trusted);
        return new BbssoConfig(p::get);
    }

    BbssoAuthenticationHandler handler(BbssoConfig config) {
        return new BbssoAuthenticationHandler(name -> "alice".equalsIgnoreCase(name) || "bob".equals(name) ? Fakes.user(name, true) : null, config, () -> NOW);
    }

    static Map<String, String> headers(String user, String assertion) {
        Map<String, String> h = new HashMap<>();
        if (user != null) h.put("X-Forwarded-User", user);
        if (assertion != null) h.put("X-Bbsso-Assertion", assertion);
        return h;
    }

    @Test
    public void aVerifiedIdentityFromATrustedAddressLogsTheUserIn() throws Exception {
        Fakes.Session session = new Fakes.Session();
        AuthenticationResult r = handler(config(SECRET, "127.0.0.0/8, ::1"))
                .performAuthentication(Fakes.context(Fakes.request(headers("alice", assertion("alice", NOW + 60)), "127.0.0.1", session)));
        assertNotNull(r);
        assertEquals("alice", r.getUser().getName());
        assertEquals("alice", session.attributes.get(BbssoAuthenticationHandler.SESSION_USER));
    }

    @Test
    public void everythingElseFallsThrough() throws Exception {
        BbssoAuthenticationHandler h = handler(config(SECRET, "127.0.0.0/8"));
        String good = assertion("alice", NOW + 60);
        assertNull("no headers", h.performAuthentication(Fakes.context(Fakes.request(headers(null, null), "127.0.0.1", new Fakes.Session()))));
        assertNull("untrusted address", h.performAuthentication(Fakes.context(Fakes.request(headers("alice", good), "10.1.2.3", new Fakes.Session()))));
        assertNull("other user", h.performAuthentication(Fakes.context(Fakes.request(headers("bob", good), "127.0.0.1", new Fakes.Session()))));
        assertNull("unknown user", h.performAuthentication(Fakes.context(Fakes.request(headers("ghost", assertion("ghost", NOW + 60)), "127.0.0.1", new Fakes.Session()))));
        assertNull("expired", h.performAuthentication(Fakes.context(Fakes.request(headers("alice", assertion("alice", NOW - 61)), "127.0.0.1", new Fakes.Session()))));
        assertNotNull("within the 60 s leeway", h.performAuthentication(Fakes.context(Fakes.request(headers("alice", assertion("alice", NOW - 59)), "127.0.0.1", new Fakes.Session()))));
        assertNull("no trusted networks: closed by default", handler(config(SECRET, "")).performAuthentication(Fakes.context(Fakes.request(headers("alice", good), "127.0.0.1", new Fakes.Session()))));
        assertNull("no secret", handler(config("", "127.0.0.0/8")).performAuthentication(Fakes.context(Fakes.request(headers("alice", good), "127.0.0.1", new Fakes.Session()))));
    }

    @Test
    public void aSessionEndsWhenALaterRequestNamesNobodyOrSomeoneElse() throws Exception {
        BbssoAuthenticationHandler h = handler(config(SECRET, "127.0.0.0/8"));
        Fakes.Session session = new Fakes.Session();
        session.attributes.put(BbssoAuthenticationHandler.SESSION_USER, "alice");
        h.validateAuthentication(Fakes.context(Fakes.request(headers("alice", assertion("alice", NOW + 60)), "127.0.0.1", session)));
        for (Map<String, String> later : new Map[] {headers(null, null), headers("bob", assertion("bob", NOW + 60))}) {
            try {
                h.validateAuthentication(Fakes.context(Fakes.request(later, "127.0.0.1", session)));
                fail("expected the session to end");
            } catch (ExpiredAuthenticationException expected) {
                // ok
            }
        }
        Fakes.Session passwordSession = new Fakes.Session();
        h.validateAuthentication(Fakes.context(Fakes.request(headers(null, null), "127.0.0.1", passwordSession)));
    }

    @Test
    public void logoutSendsTheBrowserToTheProxy() throws Exception {
        String[] sent = new String[1];
        javax.servlet.http.HttpServletResponse response = (javax.servlet.http.HttpServletResponse) java.lang.reflect.Proxy.newProxyInstance(
                getClass().getClassLoader(), new Class<?>[] {javax.servlet.http.HttpServletResponse.class}, (p, m, a) -> {
                    if (m.getName().equals("sendRedirect")) sent[0] = (String) a[0];
                    return m.getName().equals("isCommitted") ? Boolean.FALSE : null;
                });
        new BbssoLogoutHandler("/sso/logout").logout(null, null, response);
        assertEquals("/sso/logout", sent[0]);
    }

    @Test
    public void trustedNetworksMatchCidrsAndMappedAddresses() {
        TrustedNetworks t = TrustedNetworks.parse("10.0.0.0/8,192.168.1.5 fd00::/8");
        assertTrue(t.contains("10.200.3.4"));
        assertTrue(t.contains("192.168.1.5"));
        assertTrue(t.contains("::ffff:10.1.1.1"));
        assertTrue(t.contains("fd12::1"));
        assertFalse(t.contains("11.0.0.1"));
        assertFalse(t.contains("192.168.1.6"));
        assertFalse(t.contains("not-an-address.example"));
        assertTrue(TrustedNetworks.parse("").isEmpty());
    }

    @Test
    public void malformedTokensAreRefusedWithoutExceptions() {
        AssertionVerifier v = new AssertionVerifier(SECRET, ISSUER);
        for (String bad : new String[] {"", "a", "a.b", "a.b.c", "e30.e30.", "!!.!!.!!", "eyJhbGciOiJIUzI1NiJ9.eyJ9.x"}) {
            assertFalse(bad, v.verify(bad, "alice", NOW).ok);
        }
    }
}

package com.bbsso.bitbucket;

import com.atlassian.bitbucket.auth.AuthenticationResult;
import com.atlassian.bitbucket.auth.ExpiredAuthenticationException;
import com.atlassian.bitbucket.auth.HttpAuthenticationContext;
import com.atlassian.bitbucket.auth.HttpAuthenticationHandler;
import com.atlassian.bitbucket.server.ApplicationPropertiesService;
import com.atlassian.bitbucket.user.ApplicationUser;
import com.atlassian.bitbucket.user.UserService;
import java.util.logging.Logger;
import javax.servlet.http.HttpServletRequest;
import javax.servlet.http.HttpSession;

/**
 * Logs a request in as the user bitbucket-sso-proxy names, but only when the signed assertion verifies for that
 * user and the request comes from a trusted address. Anything else falls through to the next handler (so Basic
 * and access-token logins keep working). A session this handler started ends when a later request of it names
 * nobody or someone else.
 */
public class BbssoAuthenticationHandler implements HttpAuthenticationHandler {
    /** Session attribute holding the username this handler authenticated. */
    static final String SESSION_USER = "com.bbsso.bitbucket.user";

    private static final Logger LOG = Logger.getLogger(BbssoAuthenticationHandler.class.getName());

    private final UserService userService;
    private final BbssoConfig config;
    private final AssertionVerifier verifier;
    private final Clock clock;

    /** The clock, replaceable in tests. */
    interface Clock {
        long nowSeconds();
    }

    /** The constructor Bitbucket's plugin system injects. */
    public BbssoAuthenticationHandler(UserService userService, ApplicationPropertiesService properties) {
        this(userService, new BbssoConfig(properties::getPluginProperty), () -> System.currentTimeMillis() / 1000);
    }

    BbssoAuthenticationHandler(UserService userService, BbssoConfig config, Clock clock) {
        this.userService = userService;
        this.config = config;
        this.verifier = new AssertionVerifier(config.secret, config.issuer);
        this.clock = clock;
        for (String problem : config.problems) {
            LOG.warning("bitbucket-sso-proxy authenticator: " + problem);
        }
    }

    /** The username the request proves, or null (with the reason logged). */
    String verifiedUser(HttpServletRequest request) {
        String user = request.getHeader(config.userHeader);
        String assertion = request.getHeader(config.assertionHeader);
        if (user == null && assertion == null) {
            return null;
        }
        if (!config.trusted.contains(request.getRemoteAddr())) {
            LOG.warning("bitbucket-sso-proxy authenticator: identity headers from untrusted address " + request.getRemoteAddr() + " ignored");
            return null;
        }
        AssertionVerifier.Result result = verifier.verify(assertion, user, clock.nowSeconds());
        if (!result.ok) {
            LOG.warning("bitbucket-sso-proxy authenticator: assertion for '" + user + "' refused: " + result.reason);
            return null;
        }
        return user;
    }

    @Override
    public AuthenticationResult performAuthentication(HttpAuthenticationContext context) {
        HttpServletRequest request = context.getRequest();
        String name = verifiedUser(request);
        if (name == null) {
            return null;
        }
        ApplicationUser user = userService.getUserByName(name);
        if (user == null || !user.isActive()) {
            LOG.warning("bitbucket-sso-proxy authenticator: no active Bitbucket user '" + name + "'");
            return null;
        }
        HttpSession session = request.getSession(true);
        session.setAttribute(SESSION_USER, user.getName());
        return new AuthenticationResult.Builder(user).build();
    }

    @Override
    public void validateAuthentication(HttpAuthenticationContext context) {
        HttpSession session = context.getRequest().getSession(false);
        Object bound = session == null ? null : session.getAttribute(SESSION_USER);
        if (bound == null) {
            return;
        }
        String named = verifiedUser(context.getRequest());
        if (named == null || !named.equalsIgnoreCase(bound.toString())) {
            throw new ExpiredAuthenticationException("the SSO identity of this session ended or changed");
        }
    }
}

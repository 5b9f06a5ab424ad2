package com.atlassian.bitbucket.auth;

/** Stand-in: the http-auth-handler module type. */
public interface HttpAuthenticationHandler {
    /** The authenticated user, or null to let the next handler try. */
    AuthenticationResult performAuthentication(HttpAuthenticationContext context);

    /** Runs on later requests of an authenticated session; throws to end the session. */
    void validateAuthentication(HttpAuthenticationContext context);
}

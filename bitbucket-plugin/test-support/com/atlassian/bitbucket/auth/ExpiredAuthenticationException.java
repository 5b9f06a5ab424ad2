package com.atlassian.bitbucket.auth;

/** Stand-in: the session's authentication is no longer valid. */
public class ExpiredAuthenticationException extends AuthenticationException {
    private static final long serialVersionUID = 1L;

    public ExpiredAuthenticationException(String message) {
        super(message);
    }
}

package com.atlassian.bitbucket.auth;

import javax.servlet.http.HttpServletRequest;
import javax.servlet.http.HttpServletResponse;

/** Stand-in: the request being authenticated. */
public interface HttpAuthenticationContext {
    HttpServletRequest getRequest();
    HttpServletResponse getResponse();
}

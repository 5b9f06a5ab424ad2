package com.atlassian.bitbucket.auth;

import com.atlassian.bitbucket.user.ApplicationUser;
import java.io.IOException;
import javax.servlet.http.HttpServletRequest;
import javax.servlet.http.HttpServletResponse;

/** Stand-in: the http-logout-handler module type. */
public interface HttpLogoutHandler {
    void logout(ApplicationUser user, HttpServletRequest request, HttpServletResponse response) throws IOException;
}

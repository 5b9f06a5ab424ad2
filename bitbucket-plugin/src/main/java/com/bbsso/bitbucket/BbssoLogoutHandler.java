package com.bbsso.bitbucket;

import com.atlassian.bitbucket.auth.HttpLogoutHandler;
import com.atlassian.bitbucket.server.ApplicationPropertiesService;
import com.atlassian.bitbucket.user.ApplicationUser;
import java.io.IOException;
import javax.servlet.http.HttpServletRequest;
import javax.servlet.http.HttpServletResponse;

/** Sends the browser to the proxy's logout, so leaving Bitbucket also ends the proxy's and the provider's sessions. */
public class BbssoLogoutHandler implements HttpLogoutHandler {
    private final String logoutUrl;

    /** The constructor Bitbucket's plugin system injects. */
    public BbssoLogoutHandler(ApplicationPropertiesService properties) {
        this(new BbssoConfig(properties::getPluginProperty).logoutUrl);
    }

    BbssoLogoutHandler(String logoutUrl) {
        this.logoutUrl = logoutUrl;
    }

    @Override
    public void logout(ApplicationUser user, HttpServletRequest request, HttpServletResponse response) throws IOException {
        if (!response.isCommitted()) {
            response.sendRedirect(logoutUrl);
        }
    }
}

package com.bbsso.bitbucket;

import com.atlassian.bitbucket.auth.HttpAuthenticationContext;
import com.atlassian.bitbucket.user.ApplicationUser;
import java.lang.reflect.Proxy;
import java.util.HashMap;
import java.util.Map;
import javax.servlet.http.HttpServletRequest;
import javax.servlet.http.HttpServletResponse;
import javax.servlet.http.HttpSession;

/** Minimal servlet objects for the tests, built with java.lang.reflect.Proxy. */
final class Fakes {
    private Fakes() {}

    static final class Session {
        final Map<String, Object> attributes = new HashMap<>();
        final HttpSession proxy = (HttpSession) Proxy.newProxyInstance(
                Fakes.class.getClassLoader(), new Class<?>[] {HttpSession.class}, (p, m, a) -> {
                    switch (m.getName()) {
                        case "getAttribute": return attributes.get((String) a[0]);
                        case "setAttribute": attributes.put((String) a[0], a[1]); return null;
                        case "removeAttribute": attributes.remove((String) a[0]); return null;
                        default: return null;
                    }
                });
    }

    static HttpServletRequest request(Map<String, String> headers, String remoteAddr, Session session) {
        return (HttpServletRequest) Proxy.newProxyInstance(
                Fakes.class.getClassLoader(), new Class<?>[] {HttpServletRequest.class}, (p, m, a) -> {
                    switch (m.getName()) {
                        case "getHeader":
                            for (Map.Entry<String, String> e : headers.entrySet()) {
                                if (e.getKey().equalsIgnoreCase((String) a[0])) {
                                    return e.getValue();
                                }
                            }
                            return null;
                        case "getRemoteAddr": return remoteAddr;
                        case "getSession":
                            boolean create = a == null || a.length == 0 || (Boolean) a[0];
                            return session != null && (create || !session.attributes.isEmpty()) ? session.proxy : null;
                        default: return null;
                    }
                });
    }

    static HttpAuthenticationContext context(HttpServletRequest request) {
        return new HttpAuthenticationContext() {
            @Override
            public HttpServletRequest getRequest() {
                return request;
            }

            @Override
            public HttpServletResponse getResponse() {
                return null;
            }
        };
    }

    static ApplicationUser user(String name, boolean active) {
        return (ApplicationUser) Proxy.newProxyInstance(
                Fakes.class.getClassLoader(), new Class<?>[] {ApplicationUser.class}, (p, m, a) -> {
                    switch (m.getName()) {
                        case "getName": case "getSlug": return name;
                        case "isActive": return active;
                        default: return null;
                    }
                });
    }
}

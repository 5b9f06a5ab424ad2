package com.atlassian.bitbucket.auth;

import com.atlassian.bitbucket.user.ApplicationUser;
import java.util.HashMap;
import java.util.Map;

/** Stand-in: the user an authentication handler authenticated. */
public class AuthenticationResult {
    private final ApplicationUser user;
    private final Map<String, Object> properties;

    protected AuthenticationResult(Builder builder) {
        this.user = builder.user;
        this.properties = builder.properties;
    }

    public ApplicationUser getUser() {
        return user;
    }

    public Map<String, Object> getProperties() {
        return properties;
    }

    /** Stand-in builder. */
    public static class Builder {
        private final ApplicationUser user;
        private final Map<String, Object> properties = new HashMap<>();

        public Builder(ApplicationUser user) {
            this.user = user;
        }

        public Builder property(String key, Object value) {
            properties.put(key, value);
            return this;
        }

        public AuthenticationResult build() {
            return new AuthenticationResult(this);
        }
    }
}

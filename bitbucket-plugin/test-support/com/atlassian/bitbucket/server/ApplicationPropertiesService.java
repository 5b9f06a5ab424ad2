package com.atlassian.bitbucket.server;

/** Stand-in: reads {@code plugin.*} keys of bitbucket.properties. */
public interface ApplicationPropertiesService {
    String getPluginProperty(String key);
}

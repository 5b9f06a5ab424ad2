package com.atlassian.bitbucket.user;

/** Stand-in: a Bitbucket user. */
public interface ApplicationUser {
    String getName();
    String getSlug();
    String getDisplayName();
    String getEmailAddress();
    boolean isActive();
}

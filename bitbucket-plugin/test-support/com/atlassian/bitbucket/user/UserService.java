package com.atlassian.bitbucket.user;

/** Stand-in: the part of Bitbucket's UserService the plugin calls. */
public interface UserService {
    ApplicationUser getUserByName(String username);
}

package com.bbsso.bitbucket;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.function.Function;

/**
 * Configuration from {@code plugin.bbsso.*} keys of bitbucket.properties, read once at start:
 * {@code plugin.bbsso.user-header} (X-Forwarded-User), {@code plugin.bbsso.assertion-header} (X-Bbsso-Assertion),
 * {@code plugin.bbsso.secret} or {@code plugin.bbsso.secret-file}, {@code plugin.bbsso.issuer}
 * ({@code {public_url}/sso}), {@code plugin.bbsso.trusted-networks} (comma-separated CIDRs; empty trusts nobody),
 * {@code plugin.bbsso.logout-url} (default {@code /sso/logout}).
 */
public final class BbssoConfig {
    public final String userHeader;
    public final String assertionHeader;
    public final String secret;
    public final String issuer;
    public final TrustedNetworks trusted;
    public final String logoutUrl;
    /** Problems found while reading; each is logged at start. */
    public final java.util.List<String> problems = new java.util.ArrayList<>();

    /** Reads the configuration through {@code property} (Bitbucket's getPluginProperty). */
    public BbssoConfig(Function<String, String> property) {
        this.userHeader = orDefault(property.apply("plugin.bbsso.user-header"), "X-Forwarded-User");
        this.assertionHeader = orDefault(property.apply("plugin.bbsso.assertion-header"), "X-Bbsso-Assertion");
        String inline = property.apply("plugin.bbsso.secret");
        String file = property.apply("plugin.bbsso.secret-file");
        String s = inline;
        if ((s == null || s.isEmpty()) && file != null && !file.isEmpty()) {
            try {
                s = new String(Files.readAllBytes(Paths.get(file)), StandardCharsets.UTF_8).replaceAll("[\\r\\n]+$", "");
            } catch (IOException e) {
                problems.add("cannot read plugin.bbsso.secret-file " + file + ": " + e.getMessage());
            }
        }
        if (s == null || s.isEmpty()) {
            problems.add("no plugin.bbsso.secret or plugin.bbsso.secret-file: every identity is refused");
        }
        this.secret = s;
        this.issuer = property.apply("plugin.bbsso.issuer");
        if (issuer == null || issuer.isEmpty()) {
            problems.add("no plugin.bbsso.issuer ({public_url}/sso): every identity is refused");
        }
        TrustedNetworks networks;
        try {
            networks = TrustedNetworks.parse(property.apply("plugin.bbsso.trusted-networks"));
        } catch (IllegalArgumentException e) {
            problems.add("plugin.bbsso.trusted-networks: " + e.getMessage() + ": every identity is refused");
            networks = TrustedNetworks.parse("");
        }
        if (networks.isEmpty()) {
            problems.add("plugin.bbsso.trusted-networks is empty: every identity is refused until the proxy's address is listed");
        }
        this.trusted = networks;
        this.logoutUrl = orDefault(property.apply("plugin.bbsso.logout-url"), "/sso/logout");
    }

    private static String orDefault(String value, String fallback) {
        return value == null || value.trim().isEmpty() ? fallback : value.trim();
    }
}

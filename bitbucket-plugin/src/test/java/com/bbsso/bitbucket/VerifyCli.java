package com.bbsso.bitbucket;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;

/**
 * For the cross-language test: reads lines {@code token<TAB>username<TAB>remote-address} and prints, per line,
 * what the authenticator decides: {@code ok} or {@code refused: reason}. Arguments: secret ("-" for none),
 * issuer, trusted networks.
 */
public final class VerifyCli {
    private VerifyCli() {}

    public static void main(String[] args) throws Exception {
        Map<String, String> p = new HashMap<>();
        if (!"-".equals(args[0])) p.put("plugin.bbsso.secret", args[0]);
        p.put("plugin.bbsso.issuer", args[1]);
        p.put("plugin.bbsso.trusted-networks", args.length > 2 ? args[2] : "");
        BbssoConfig config = new BbssoConfig(p::get);
        AssertionVerifier verifier = new AssertionVerifier(config.secret, config.issuer);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String[] f = line.split("\t", -1);
            if (!config.trusted.contains(f[2])) {
                System.out.println("refused: untrusted_address");
                continue;
            }
            System.out.println(verifier.verify(f[0], f[1], System.currentTimeMillis() / 1000));
        }
    }
}

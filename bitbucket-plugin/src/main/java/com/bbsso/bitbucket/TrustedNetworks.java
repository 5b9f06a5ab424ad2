package com.bbsso.bitbucket;

import java.net.InetAddress;
import java.net.UnknownHostException;
import java.util.ArrayList;
import java.util.List;

/** The addresses allowed to send identities (the proxy's). An empty list trusts nobody. */
public final class TrustedNetworks {
    private final List<byte[]> networks = new ArrayList<>();
    private final List<Integer> prefixes = new ArrayList<>();

    /** Parses a comma- or space-separated list of CIDRs or addresses; throws IllegalArgumentException on a bad entry. */
    public static TrustedNetworks parse(String list) {
        TrustedNetworks t = new TrustedNetworks();
        if (list == null) {
            return t;
        }
        for (String entry : list.split("[,\\s]+")) {
            if (entry.isEmpty()) {
                continue;
            }
            String[] parts = entry.split("/", 2);
            byte[] address = literal(parts[0]);
            int prefix = parts.length == 2 ? Integer.parseInt(parts[1]) : address.length * 8;
            if (prefix < 0 || prefix > address.length * 8) {
                throw new IllegalArgumentException("bad prefix length in " + entry);
            }
            t.networks.add(address);
            t.prefixes.add(prefix);
        }
        return t;
    }

    /** Whether {@code remoteAddress} (an IP literal, as the servlet container reports it) is trusted. */
    public boolean contains(String remoteAddress) {
        byte[] address;
        try {
            address = literal(remoteAddress);
        } catch (IllegalArgumentException e) {
            return false;
        }
        for (int i = 0; i < networks.size(); i++) {
            if (matches(networks.get(i), prefixes.get(i), address)) {
                return true;
            }
        }
        return false;
    }

    /** Whether no network is trusted. */
    public boolean isEmpty() {
        return networks.isEmpty();
    }

    private static boolean matches(byte[] network, int prefix, byte[] address) {
        byte[] a = address;
        if (network.length == 4 && address.length == 16 && isMapped(address)) {
            a = new byte[] {address[12], address[13], address[14], address[15]};
        }
        if (network.length != a.length) {
            return false;
        }
        for (int bit = 0; bit < prefix; bit++) {
            int mask = 0x80 >> (bit % 8);
            if ((network[bit / 8] & mask) != (a[bit / 8] & mask)) {
                return false;
            }
        }
        return true;
    }

    private static boolean isMapped(byte[] a) {
        for (int i = 0; i < 10; i++) {
            if (a[i] != 0) {
                return false;
            }
        }
        return (a[10] & 0xff) == 0xff && (a[11] & 0xff) == 0xff;
    }

    /** Parses an IP literal without any name lookup. */
    private static byte[] literal(String text) {
        String s = text == null ? "" : text.trim();
        if (s.startsWith("[") && s.endsWith("]")) {
            s = s.substring(1, s.length() - 1);
        }
        boolean v4 = s.matches("\\d{1,3}(\\.\\d{1,3}){3}");
        boolean v6 = s.contains(":") && s.matches("[0-9a-fA-F:.%]+");
        if (!v4 && !v6) {
            throw new IllegalArgumentException("not an IP address: " + text);
        }
        if (v4) {
            for (String octet : s.split("\\.")) {
                if (Integer.parseInt(octet) > 255) {
                    throw new IllegalArgumentException("not an IP address: " + text);
                }
            }
        }
        try {
            return InetAddress.getByName(s).getAddress();
        } catch (UnknownHostException e) {
            throw new IllegalArgumentException("not an IP address: " + text);
        }
    }
}

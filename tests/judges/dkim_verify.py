#!/usr/bin/env python3
"""Verifies every DKIM signature of the message on stdin with dkimpy (RSA, and Ed25519
through PyNaCl), resolving each key as the internet would: the signing domain's names at
its DNS server, and names under mailroom's DKIM zone (where the domain's CNAME points) at
mailroom's own DNS server.

usage: dkim_verify.py DOMAIN_DNS ZONE ZONE_DNS < message
       (servers as 127.0.0.1:PORT). Prints a JSON list of each signature's algorithm and
       selector, top first; exits 0 only when there is one and every one verifies.
"""
import json
import re
import sys

import dkim
import dns.message
import dns.name
import dns.query
import dns.rdatatype


def server(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def ask(name, where):
    host, port = where
    query = dns.message.make_query(name, dns.rdatatype.TXT, use_edns=0, payload=4096)
    # Over TCP when the answer does not fit a datagram, as resolvers do.
    answer, _ = dns.query.udp_with_fallback(query, host, port=port, timeout=5)
    return answer


def main():
    domain_dns, zone, zone_dns = server(sys.argv[1]), dns.name.from_text(sys.argv[2]), server(sys.argv[3])

    def txt(name, timeout=5):
        name = dns.name.from_text(name.decode() if isinstance(name, bytes) else name)
        for _ in range(8):
            where = zone_dns if name.is_subdomain(zone) else domain_dns
            answer = ask(name, where)
            texts = [r for rrset in answer.answer if rrset.name == name for r in rrset
                     if r.rdtype == dns.rdatatype.TXT]
            if texts:
                return b"".join(texts[0].strings)
            cnames = [r for rrset in answer.answer if rrset.name == name for r in rrset
                      if r.rdtype == dns.rdatatype.CNAME]
            if not cnames:
                return None
            print(f"{name} is a CNAME for {cnames[0].target}", file=sys.stderr)
            name = cnames[0].target
        return None

    message = sys.stdin.buffer.read()
    head = message.split(b"\r\n\r\n", 1)[0]
    count = len(re.findall(rb"(?im)^dkim-signature:", head))
    verified = []
    all_ok = count > 0
    for index in range(count):
        verifier = dkim.DKIM(message)
        try:
            ok = verifier.verify(idx=index, dnsfunc=txt)
        except dkim.DKIMException as error:
            print(f"DKIM error in signature {index}: {error}", file=sys.stderr)
            ok = False
        tags = verifier.signature_fields
        algorithm = tags.get(b"a", b"").decode()
        selector = tags.get(b"s", b"").decode()
        print(f"signature {index} ({algorithm}, s={selector}): {'verifies' if ok else 'does not verify'}",
              file=sys.stderr)
        verified.append({"algorithm": algorithm, "selector": selector, "ok": ok})
        all_ok = all_ok and ok
    print(json.dumps(verified))
    if not all_ok:
        sys.exit(1)


if __name__ == "__main__":
    main()

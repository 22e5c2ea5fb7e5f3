#!/usr/bin/env python3
"""Checks a sender's SPF with pyspf, as a receiving mail server would.

Names in mailroom's zone are asked of mailroom's DNS server, every other name of the test's
DNS server, as a recursive resolver following the delegation would.

    spf_check.py --zone Z --zone-dns HOST:PORT --dns HOST:PORT --sender ADDR IP...

Prints JSON: {IP: {"result": ..., "explanation": ...}}.
"""

import argparse
import json
import sys

import dns.exception
import dns.resolver
import spf


def resolver(address: str) -> dns.resolver.Resolver:
    host, port = address.rsplit(":", 1)
    answer = dns.resolver.Resolver(configure=False)
    answer.nameservers = [host.strip("[]")]
    answer.port = int(port)
    answer.use_edns(0, 0, 1232)
    answer.cache = None
    return answer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zone", required=True)
    parser.add_argument("--zone-dns", required=True)
    parser.add_argument("--dns", required=True)
    parser.add_argument("--sender", required=True)
    parser.add_argument("ips", nargs="+")
    args = parser.parse_args()

    zone = args.zone.rstrip(".").lower()
    zone_resolver = resolver(args.zone_dns)
    other_resolver = resolver(args.dns)

    # pyspf's own lookup with the resolver chosen by name; its handling of answers,
    # NXDOMAIN and timeouts is kept.
    def lookup(name, qtype, strict=True, timeout=10):
        owner = name.rstrip(".").lower()
        chosen = zone_resolver if owner == zone or owner.endswith("." + zone) else other_resolver
        found = []
        try:
            for rdata in chosen.resolve(name, qtype, lifetime=timeout, search=False):
                if qtype in ("A", "AAAA"):
                    found.append(((name, qtype), rdata.address))
                elif qtype == "MX":
                    found.append(((name, qtype), (rdata.preference, rdata.exchange)))
                elif qtype == "PTR":
                    found.append(((name, qtype), rdata.target.to_text(True)))
                elif qtype in ("TXT", "SPF"):
                    found.append(((name, qtype), rdata.strings))
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            pass
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as error:
            raise spf.TempError("DNS " + str(error))
        return found

    spf.DNSLookup = lookup
    helo = args.sender.rsplit("@", 1)[-1]
    results = {}
    for ip in args.ips:
        result, explanation = spf.check2(i=ip, s=args.sender, h=helo, querytime=10)
        results[ip] = {"result": result, "explanation": explanation}
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

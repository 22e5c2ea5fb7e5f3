#!/usr/bin/env python3
"""Verifies the DKIM signature of the message on stdin with dkimpy against one public key,
as if DNS published it at SELECTOR._domainkey.DOMAIN and nothing else.

usage: dkim_check_key.py DOMAIN SELECTOR PUBLIC_KEY_BASE64 < message
       Exits 0 only when the signature verifies.
"""
import sys

import dkim


def main():
    domain, selector, public = sys.argv[1], sys.argv[2], sys.argv[3]
    published = f"{selector}._domainkey.{domain}.".lower()

    def txt(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        if name.lower().rstrip(".") + "." != published:
            print(f"asked for {name}, only {published} is published", file=sys.stderr)
            return None
        return f"v=DKIM1; k=rsa; p={public}".encode()

    message = sys.stdin.buffer.read()
    try:
        ok = dkim.DKIM(message).verify(dnsfunc=txt)
    except dkim.DKIMException as error:
        print(f"DKIM error: {error}", file=sys.stderr)
        ok = False
    if not ok:
        print("DKIM signature does not verify", file=sys.stderr)
        sys.exit(1)
    print("DKIM signature verifies", file=sys.stderr)


if __name__ == "__main__":
    main()

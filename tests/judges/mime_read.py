#!/usr/bin/env python3
"""Reads the message on stdin with Python's `email` package, the way a mail client would,
and prints what it found as JSON: the header fields (decoded), the addresses of From, To,
Cc and Reply-To, the tree of parts, and every leaf part with its decoded bytes' sha256.

usage: mime_read.py < message
"""
import email
import email.policy
import hashlib
import json
import sys


def addresses(message, name):
    header = message[name]
    if header is None:
        return None
    return [{"name": a.display_name, "email": a.addr_spec} for a in header.addresses]


def tree(part):
    node = {"type": part.get_content_type()}
    if part.is_multipart():
        node["children"] = [tree(child) for child in part.iter_parts()]
    return node


def leaves(message):
    found = []
    for part in message.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True) or b""
        leaf = {
            "type": part.get_content_type(),
            "disposition": part.get_content_disposition(),
            "filename": part.get_filename(),
            "content_id": part.get("Content-ID"),
            "transfer_encoding": part.get("Content-Transfer-Encoding"),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size": len(payload),
        }
        if part.get_content_maintype() == "text":
            # As a reader shows it: lines, whatever ends them on the wire.
            leaf["text"] = part.get_content().replace("\r\n", "\n")
        found.append(leaf)
    return found


def defects(message):
    return [f"{part.get_content_type()}: {d!r}" for part in message.walk() for d in part.defects]


def main():
    raw = sys.stdin.buffer.read()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    print(json.dumps({
        "headers": [[name, str(value)] for name, value in message.items()],
        "subject": str(message["Subject"]) if message["Subject"] is not None else None,
        "from": addresses(message, "From"),
        "to": addresses(message, "To"),
        "cc": addresses(message, "Cc"),
        "reply_to": addresses(message, "Reply-To"),
        "tree": tree(message),
        "parts": leaves(message),
        "defects": defects(message),
        "longest_line": max((len(line) for line in raw.split(b"\r\n")), default=0),
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()

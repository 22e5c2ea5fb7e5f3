"""After the test suite: no database file or server log the tests left behind holds, in
clear, a secret mailroom made (API keys, access tokens, one-time tokens: all carry a
prefix and 64 hex digits; webhook signing secrets: `whsec_` and 32 bytes in base64) or one the tests used (passwords, SMTP passwords: listed by
the tests in secrets.txt).

Usage: python3 .ci/scan-secrets.py ARTIFACTS_DIR [MORE_DIRS...]
"""

import os
import re
import sys

MADE = re.compile(rb"\b(?:(?:mrk|mrt|ev|inv)_[0-9a-f]{64}\b|whsec_[A-Za-z0-9+/]{43}=)")


def main():
    roots = sys.argv[1:]
    secrets_file = os.path.join(roots[0], "secrets.txt")
    used = set()
    if os.path.exists(secrets_file):
        with open(secrets_file, encoding="utf-8") as listed:
            used = {line.rstrip("\n").encode() for line in listed if line.strip()}
    files = 0
    findings = []
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                # Delivered mail (the file transport's .eml) carries its links by design.
                if path == secrets_file or name.endswith(".eml") or not os.path.isfile(path):
                    continue
                try:
                    with open(path, "rb") as file:
                        data = file.read()
                except OSError:
                    continue
                files += 1
                for match in MADE.finditer(data):
                    findings.append(f"{path}: a generated secret {match.group(0)[:12].decode()}…")
                for secret in used:
                    if secret in data:
                        findings.append(f"{path}: the password {secret[:3].decode(errors='replace')}…")
    print(f"secrets scan: {files} files, {len(used)} passwords and every generated secret looked for")
    if findings:
        for finding in findings[:50]:
            print("  " + finding)
        print(f"secrets scan: 0 passed, {len(findings)} failed")
        sys.exit(1)
    print("secrets scan: 1 passed, 0 failed")


if __name__ == "__main__":
    main()

"""A bounded soak: mixed reads and writes against a live `mailroom serve` on loopback,
from several client threads as fast as they go, for SOAK_SECONDS (default 120).

Fails when any answer is a 5xx, when the server's memory grows after warm-up beyond
the bound (RSS at the end at most 1.5 x RSS after warm-up + 32 MiB), or when the outbox
does not drain within 60 s of the end.
"""

import http.client
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time

SECONDS = int(os.environ.get("SOAK_SECONDS", "120"))
WARM_UP = min(30, SECONDS // 4)
THREADS = 8
BINARY = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "target", "debug", "mailroom"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Client:
    def __init__(self, port, key):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self, method, path, body=None):
        try:
            return self.send(method, path, body)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closes connections left idle; as HTTP clients do, a read is
            # sent again on a new one.
            if method != "GET":
                raise
            self.connection.close()
            return self.send(method, path, body)

    def send(self, method, path, body):
        payload = None if body is None else json.dumps(body)
        self.connection.request(method, path, body=payload, headers=self.headers)
        response = self.connection.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data else None)


def main():
    workdir = tempfile.mkdtemp(prefix="mailroom-soak-")
    port = 18000 + random.randint(0, 999)
    env = dict(os.environ, MAILROOM_LISTEN=f"127.0.0.1:{port}", MAILROOM_LOG="warn")
    server = subprocess.Popen([BINARY, "serve"], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        key = None
        while key is None:
            line = server.stdout.readline()
            if not line:
                sys.exit("mailroom exited before printing its key")
            match = re.search(r"mrk_[0-9a-f]{64}", line)
            key = match.group(0) if match else None
        time.sleep(0.5)
        setup = Client(port, key)
        setup.call("POST", "/v2/domains", {"domain": "soak.example"})
        subprocess.run([BINARY, "admin", "activate-domain", "soak.example"], cwd=workdir, env=env, check=True, capture_output=True)
        status, created = setup.call("POST", "/v2/email-accounts/create", {"domain": "soak.example", "local_part": "reader", "password": "a soak password"})
        assert status == 201, (status, created)
        mailbox = created["account"]["id"]

        counts = {"requests": 0, "server_errors": [], "by_status": {}}
        lock = threading.Lock()
        deadline = time.time() + SECONDS

        def work(number):
            client = Client(port, key)
            i = 0
            while time.time() < deadline:
                i += 1
                roll = random.random()
                if roll < 0.55:
                    call = ("GET", f"/v2/email-accounts/{mailbox}", None)
                elif roll < 0.75:
                    call = ("GET", "/v2/domains?limit=10", None)
                elif roll < 0.85:
                    call = ("GET", "/v2/messages?limit=20", None)
                elif roll < 0.95:
                    call = ("POST", "/entities/invitations", {"email": f"soak{number}-{i}@example.org", "role": "viewer"})
                elif roll < 0.98:
                    call = ("PUT", f"/v2/email-accounts/{mailbox}", {"display_name": f"Reader {i}"})
                else:
                    call = ("POST", "/v2/email-accounts/create", {"domain": "soak.example", "local_part": f"box{number}-{i}"})
                status, body = client.call(*call)
                with lock:
                    counts["requests"] += 1
                    counts["by_status"][status] = counts["by_status"].get(status, 0) + 1
                    if status >= 500:
                        counts["server_errors"].append((call[0], call[1], status, body))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
        started = time.time()
        for thread in threads:
            thread.start()
        time.sleep(WARM_UP)
        warm = rss_kib(server.pid)
        for thread in threads:
            thread.join()
        end = rss_kib(server.pid)
        elapsed = time.time() - started

        drained_at = None
        drain_deadline = time.time() + 60
        while time.time() < drain_deadline:
            status, page = setup.call("GET", "/v2/messages?status=queued&limit=1")
            status2, sending = setup.call("GET", "/v2/messages?status=sending&limit=1")
            if not page["items"] and not sending["items"]:
                drained_at = time.time()
                break
            time.sleep(0.5)

        bound = warm * 1.5 + 32 * 1024
        print(f"soak: {counts['requests']} requests in {elapsed:.0f} s ({counts['requests'] / elapsed:.0f}/s) "
              f"from {THREADS} clients; statuses {counts['by_status']}")
        print(f"soak: RSS {warm // 1024} MiB after warm-up, {end // 1024} MiB at the end (bound {bound // 1024:.0f} MiB)")
        failures = []
        if counts["server_errors"]:
            failures.append(f"{len(counts['server_errors'])} server errors, first: {counts['server_errors'][:3]}")
        if end > bound:
            failures.append(f"memory grew from {warm} KiB to {end} KiB")
        if drained_at is None:
            failures.append("the outbox did not drain within 60 s")
        else:
            print("soak: the outbox drained")
        if failures:
            sys.exit("soak failed: " + "; ".join(failures))
        print("soak: 1 passed, 0 failed")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()

"""A webhook receiver built on Python's http.server that verifies every request with the
`standardwebhooks` package (PyPI), an implementation independent of mailroom's.

Usage: webhook_receiver.py [CERT_PEM KEY_PEM]   (with both: https)
Prints `port N` once it listens on 127.0.0.1, then serves until killed.

Every request outside /__receiver/ is recorded: method, path, headers, body, which of the
configured secrets verify it, when it arrived and on which connection (numbered from 1 as
they are accepted: connections kept alive carry several requests); it is answered as the
script for its path says (each request takes the next answer; the last one repeats; by
default 200 "ok"). An answer is {"status": N, "body": "...", "body_size": N,
"headers": {...}, "delay": SECONDS, "close": true} (`delay`: wait before answering;
`close`: hang up after the reply without saying so in a header) or {"hang": true} (no
answer at all; the connection stays open a minute).

Control, over the same port:
  PUT /__receiver/secrets   ["whsec_...", ...]      the secrets to verify with
  PUT /__receiver/clock     {"ahead_seconds": N}    how far mailroom's clock is ahead of
                                                    this machine's (tests move it forward)
  PUT /__receiver/script    {"path": "/p", "answers": [...]}
  GET /__receiver/received  the records, oldest first
"""

import json
import ssl
import sys
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import standardwebhooks.webhooks as standard
from standardwebhooks import Webhook, WebhookVerificationError

LOCK = threading.Lock()
SECRETS = []
SCRIPTS = {}
RECEIVED = []
AHEAD = [0.0]
CONNECTIONS = [0]


class ShiftedClock(datetime):
    """The library's "now", moved as far ahead as mailroom's clock: its timestamp
    tolerance (five minutes) is then checked against mailroom's time."""

    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) + timedelta(seconds=AHEAD[0])


standard.datetime = ShiftedClock


def verify(body, headers):
    """The indices of the secrets that verify the request, and why the others do not."""
    verified, errors = [], []
    for index, secret in enumerate(SECRETS):
        try:
            Webhook(secret).verify(body, headers)
            verified.append(index)
        except (WebhookVerificationError, ValueError) as error:
            errors.append(f"secret {index}: {error}")
    return verified, errors


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with LOCK:
            CONNECTIONS[0] += 1
            self.connection_number = CONNECTIONS[0]

    def log_message(self, format, *args):
        sys.stderr.write("receiver: " + (format % args) + "\n")

    def log_request(self, code="-", size="-"):
        # Every request is in the record the tests read; only errors are logged.
        pass

    def read_body(self):
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length)

    def answer(self, status, body=b"", headers=None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def control(self, method, body):
        what = self.path[len("/__receiver/"):]
        with LOCK:
            if method == "GET" and what == "received":
                return self.answer(200, json.dumps(RECEIVED).encode())
            value = json.loads(body or b"null")
            if method == "PUT" and what == "secrets":
                SECRETS[:] = value
            elif method == "PUT" and what == "clock":
                AHEAD[0] = float(value["ahead_seconds"])
            elif method == "PUT" and what == "script":
                SCRIPTS[value["path"]] = list(value["answers"])
            else:
                return self.answer(404, b"unknown control")
        self.answer(204)

    def handle_any(self):
        body = self.read_body()
        if self.path.startswith("/__receiver/"):
            return self.control(self.command, body)
        headers = {name.lower(): value for name, value in self.headers.items()}
        with LOCK:
            verified, errors = verify(body, headers)
            RECEIVED.append({
                "method": self.command,
                "path": self.path,
                "headers": headers,
                "body": body.decode("utf-8", "replace"),
                "verified": verified,
                "errors": errors,
                "arrived": time.time(),
                "connection": self.connection_number,
            })
            answers = SCRIPTS.get(self.path) or [{}]
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer.get("hang"):
            time.sleep(60)
            self.close_connection = True
            return
        if answer.get("delay"):
            time.sleep(float(answer["delay"]))
        if "body_size" in answer:
            reply = b"x" * int(answer["body_size"])
        else:
            reply = answer.get("body", "ok").encode()
        self.answer(int(answer.get("status", 200)), reply, answer.get("headers"))
        if answer.get("close"):
            self.close_connection = True

    do_GET = handle_any
    do_POST = handle_any
    do_PUT = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many endpoints' connections may come at once.
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # mailroom reads the first KiB of a long reply and hangs up: not an error.
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


def main():
    server = Server(("127.0.0.1", 0), Handler)
    if len(sys.argv) == 3:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[1], sys.argv[2])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

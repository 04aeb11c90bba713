"""A local HTTP server on 127.0.0.1 that records the webhook posts it gets (the notify tests' Slack/Discord)."""

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hook(BaseHTTPRequestHandler):
    posts = None  # the JSON bodies received, in order
    status = 200  # what it answers

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.posts.append({"json": json.loads(body), "content_type": self.headers.get("Content-Type")})
        self.send_response(self.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


class Webhook:
    def __init__(self, server):
        self.server, self.url = server, f"http://127.0.0.1:{server.server_address[1]}/hooks/test"

    @property
    def posts(self):
        return [p["json"] for p in Hook.posts]

    def events(self):
        return [p["event"] for p in self.posts]

    def answer(self, status):
        Hook.status = status


@contextlib.contextmanager
def serve():
    """The server, started; conftest's `webhook` fixture."""
    Hook.posts, Hook.status = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Webhook(server)
    server.shutdown()
    server.server_close()

"""A real HTTP file server on 127.0.0.1 standing in for the internet: a `--mirror` serving ROOT/HOST/PATH.

Faults per URL path (`faults[path] = ...`): "corrupt" (the file with its first byte changed), "drop" (the
full Content-Length announced, half the body sent, then the connection closed), "404", "stall" (half the body
sent, then nothing more), "trickle" (one byte every 0.2 s). Every request path is recorded. The server only
listens on the loopback interface and shuts itself down after `max_seconds`.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class MirrorServer:
    def __init__(self, root, max_seconds: float = 300):
        self.root = Path(root)
        self.faults: dict[str, str] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the name http.server calls)
                server.requests.append(self.path)
                fault = server.faults.get(self.path)
                path = (server.root / self.path.lstrip("/")).resolve()
                if fault == "404" or server.root.resolve() not in path.parents or not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                if fault == "corrupt":
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "drop":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if fault in ("stall", "trickle"):
                    sent = len(body) // 2 if fault == "stall" else 0
                    self.wfile.write(body[:sent])
                    self.wfile.flush()
                    while not server.stopping.wait(0.2):  # until the client gives up or the server stops
                        if fault == "trickle" and sent < len(body):
                            try:
                                self.wfile.write(body[sent : sent + 1])
                                self.wfile.flush()
                            except OSError:
                                break
                            sent += 1
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._timer = threading.Timer(max_seconds, self.stop)
        self._timer.daemon = True
        self._stopped = threading.Lock()
        self.stopping = threading.Event()

    def __enter__(self):
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if not self._stopped.acquire(blocking=False):
            return  # already stopped (by the timer or the caller)
        self._timer.cancel()
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

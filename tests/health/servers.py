"""Small real HTTP servers on 127.0.0.1 for the health tests: a hung endpoint, a scripted
endpoint, and an alert receiver that records every POST (as Slack, PagerDuty or an
Alertmanager webhook receiver would get it)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HungServer:
    """Accepts connections and never answers, until closed."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # read nothing, answer nothing

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


class _Server:
    def __init__(self, handler_cls):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class ScriptedServer(_Server):
    """Answers GETs with the next status of its script (then the last one forever)."""

    def __init__(self, statuses: list[int]):
        self.statuses, self.served = list(statuses), 0

        class Handler(_Quiet):
            def do_GET(self):
                owner = self.server.owner
                status = owner.statuses[min(owner.served, len(owner.statuses) - 1)]
                owner.served += 1
                body = json.dumps({"status": "ready" if status == 200 else "broken"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


class Receiver(_Server):
    """Records every POST as (path, JSON body); answers 500 on paths containing 'fail'."""

    def __init__(self):
        self.posts: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

        class Handler(_Quiet):
            def do_POST(self):
                owner = self.server.owner
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.posts.append((self.path, body))
                self.send_response(500 if "fail" in self.path else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        super().__init__(Handler)

    def at(self, path: str) -> list[dict]:
        with self.lock:
            return [body for p, body in self.posts if p == path]

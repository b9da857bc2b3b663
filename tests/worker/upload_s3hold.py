"""A tiny HTTP forwarder in front of the S3 endpoint (moto) for one worker: a flaky network
that can hold chosen requests (e.g. CompleteMultipartUpload) until the test releases them."""
from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Hold:
    """A request held before it is forwarded (`answer=False`), or forwarded and its answer held
    (`answer=True`: S3 has done it, the worker has not heard); `arrived` is set then."""

    def __init__(self, name, match, answer=False):
        self.name, self.match, self.answer = name, match, answer
        self.arrived, self.release = threading.Event(), threading.Event()
        self.status = None


class S3Hold:
    def __init__(self, upstream_port: int):
        self.upstream_port, self.holds, self.log, self.fails = upstream_port, [], [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                q = parse_qs(urlparse(self.path).query, keep_blank_values=True)
                kind = outer.kind(self.command, q)
                outer.log.append((kind, self.path))
                for f in list(outer.fails):
                    if f[0](kind, self.path) and f[1] > 0:
                        f[1] -= 1
                        status, code = f[2] if len(f) > 2 else (500, "InternalError")
                        body = f"<Error><Code>{code}</Code><Message>refused</Message></Error>".encode()
                        self.send_response(status)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                held = next((h for h in list(outer.holds) if h.match(kind, self.path)), None)
                if held:
                    outer.holds.remove(held)
                if held and not held.answer:
                    held.arrived.set()
                    held.release.wait(60)
                conn = http.client.HTTPConnection("127.0.0.1", outer.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                if held and held.answer:
                    held.status = r.status  # what S3 answered
                    held.arrived.set()
                    held.release.wait(60)
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def kind(method, q):
        if method == "POST" and "uploads" in q:
            return "CreateMultipartUpload"
        if method == "POST" and "uploadId" in q:
            return "CompleteMultipartUpload"
        if method == "POST" and "delete" in q:
            return "DeleteObjects"
        if method == "PUT" and "partNumber" in q:
            return "UploadPart(Copy)"
        if method == "DELETE" and "uploadId" in q:
            return "AbortMultipartUpload"
        if method == "GET" and "uploads" in q:
            return "ListMultipartUploads"
        return method

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def hold(self, name, match=None, answer=False):
        """Hold the next request of kind `name` (and `match(kind, path)` when given): before it
        reaches S3, or with `answer` its answer once S3 has done it."""
        h = Hold(name, match or (lambda kind, path: kind == name), answer)
        self.holds.append(h)
        return h

    def fail(self, name, times):
        """Answer the next `times` requests of kind `name` 500 InternalError (S3 flaking)."""
        self.fails.append([lambda kind, path: kind == name, times])

    def refuse(self, match):
        """Answer every request `match(kind, path)` picks 403 AccessDenied (not retried by
        botocore) until `allow`ed."""
        entry = [match, float("inf"), (403, "AccessDenied")]
        self.fails.append(entry)
        return entry

    def allow(self, entry):
        self.fails.remove(entry)

    def close(self):
        for h in self.holds:
            h.release.set()
        self.server.shutdown()

"""A tiny HTTP forwarder in front of the S3 endpoint (moto) for one worker: a flaky network
that can hold chosen requests (e.g. CompleteMultipartUpload) until the test releases them."""
from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Hold:
    def __init__(self, name, match):
        self.name, self.match = name, match
        self.arrived, self.release = threading.Event(), threading.Event()


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
                        body = b"<Error><Code>InternalError</Code><Message>flaky</Message></Error>"
                        self.send_response(500)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                for h in list(outer.holds):
                    if h.match(kind, self.path):
                        outer.holds.remove(h)
                        h.arrived.set()
                        h.release.wait(60)
                        break
                conn = http.client.HTTPConnection("127.0.0.1", outer.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
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

    def hold(self, name, match=None):
        h = Hold(name, match or (lambda kind, path: kind == name))
        self.holds.append(h)
        return h

    def fail(self, name, times):
        """Answer the next `times` requests of kind `name` 500 InternalError (S3 flaking)."""
        self.fails.append([lambda kind, path: kind == name, times])

    def close(self):
        for h in self.holds:
            h.release.set()
        self.server.shutdown()

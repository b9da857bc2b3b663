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
    """Records every POST as (path, JSON body); answers 500 on paths containing 'fail', else 200
    with `answer` as its body (none by default)."""

    def __init__(self, answer: bytes = b""):
        self.posts: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

        class Handler(_Quiet):
            def do_POST(self):
                owner = self.server.owner
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.posts.append((self.path, body))
                failing = "fail" in self.path
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0" if failing else str(len(answer)))
                self.end_headers()
                if not failing:
                    self.wfile.write(answer)

        super().__init__(Handler)

    def at(self, path: str) -> list[dict]:
        with self.lock:
            return [body for p, body in self.posts if p == path]


def self_signed(folder, name: str = "localhost", days: float = 30, expired: bool = False):
    """(certificate path, key path) of a self-signed certificate for 127.0.0.1 and localhost,
    made with `cryptography`; `expired` makes one whose notAfter lies a day in the past."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    not_before, not_after = (now - dt.timedelta(days=30), now - dt.timedelta(days=1)) if expired else (
        now - dt.timedelta(minutes=5), now + dt.timedelta(days=days))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path, not_after


class TlsServer(_Server):
    """An HTTPS server answering 200 to everything, with the given certificate."""

    def __init__(self, cert_path, key_path):
        import ssl

        super().__init__(_Ok)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


class _Ok(_Quiet):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


class BigBody(_Server):
    """`/big` answers 200 with `size` bytes (streamed, never held in memory) and counts the
    bytes it managed to send before the client hung up; `/moved` redirects to `/big`,
    `/json` answers a small JSON document, `/loop` redirects to itself."""

    def __init__(self, size: int):
        self.size = size
        self.sent = 0
        super().__init__(_Big)


class _Big(_Quiet):
    def do_GET(self) -> None:
        owner = self.server.owner
        if self.path == "/loop":  # redirects to itself for ever
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/moved":
            self.send_response(301)
            self.send_header("Location", "/json")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/json":
            body = b'{"status": "ready"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        chunked = self.path == "/big-chunked"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(owner.size))
        self.end_headers()
        block = b" " * 65536
        try:
            left = owner.size
            while left > 0:
                part = block[:min(left, len(block))]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                owner.sent += len(part)
                left -= len(part)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client hung up: what it read is what `sent` counted, give or take the socket buffers


class MetricsServer(_Server):
    """Serves `text` (Prometheus text format, changeable) on GET /metrics; records the
    Authorization header of each request in `auth`."""

    def __init__(self, text: str):
        self.text, self.auth = text, []

        class Handler(_Quiet):
            def do_GET(self):
                owner = self.server.owner
                owner.auth.append(self.headers.get("Authorization"))
                body = owner.text.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)

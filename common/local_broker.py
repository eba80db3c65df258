"""A local Mosquitto broker on a free loopback port: for the demo, single-machine setups and tests.

``Mosquitto(workdir).start()`` writes a config into ``workdir`` and runs Debian's
``/usr/sbin/mosquitto``; ``stop()`` / ``start()`` restart it on the same port, ``kill()``
ends it abruptly, ``pause()`` / ``resume()`` freeze it (its socket stays open, no PUBACKs).

Secured like a field broker: ``tls=BrokerTls(ca, cert, key)`` makes the listener TLS-only and
requires a client certificate signed by ``ca`` (``require_certificate true``); ``users`` adds
password authentication on top (the certificate proves a provisioned device, the user name and
password say which one; ``use_identity_as_username`` is off, so the password is checked);
``acl`` confines each user to its topics, e.g. ``acl_for_devices("trapedge", readers=["central"])``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BINARY = Path(os.environ.get("TRAPEDGE_MOSQUITTO", "/usr/sbin/mosquitto"))
PASSWD = Path(shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd")
HOST = "127.0.0.1"


class BrokerMissing(RuntimeError):
    """The mosquitto binary is not installed."""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class BrokerTls:
    """The broker's TLS files (PEM); clients must present a certificate signed by ``ca``."""

    ca: Path
    cert: Path
    key: Path


def acl_for_devices(prefix: str, readers: Sequence[str] = ()) -> str:
    """An ACL where each device writes only under ``<prefix>/<its user name>/`` and reads nothing,
    and each of ``readers`` (e.g. the central service) reads everything under ``<prefix>/``."""
    lines = [f"pattern write {prefix}/%u/#"]
    for reader in readers:
        lines += [f"user {reader}", f"topic read {prefix}/#"]
    return "\n".join(lines) + "\n"


class Mosquitto:
    """One broker process; anonymous unless ``users`` (name → password) are given.

    Args:
        workdir: where the config, log, password file and persistence go.
        users: accounts for a password file; anonymous access is then refused.
        persistence: keep sessions (subscriptions and queued messages of ``clean_session=False``
            clients) and retained messages across a restart.
        tls: serve TLS only, with a required client certificate (see the module docstring).
        acl: the text of a Mosquitto ACL file (``user``/``topic``/``pattern`` lines); without
            one every client may use every topic.
    """

    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None, persistence: bool = False,
                 tls: BrokerTls | None = None, acl: str | None = None):
        if not BINARY.is_file():
            raise BrokerMissing(f"{BINARY} not found: install Debian's mosquitto package (apt-get install mosquitto)")
        self.workdir, self.users, self.persistence = Path(workdir), users or {}, persistence
        self.tls, self.acl = tls, acl
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host, self.port = HOST, free_port()
        self.log = self.workdir / "mosquitto.log"
        self.process: subprocess.Popen | None = None
        self.config = self._write_config()

    def _write_config(self) -> Path:
        lines = [f"listener {self.port} {HOST}", f"persistence {'true' if self.persistence else 'false'}"]
        if self.persistence:
            # saved after every change, so that even a SIGKILL keeps sessions and subscriptions
            lines += [f"persistence_location {self.workdir}/", "autosave_on_changes true", "autosave_interval 1"]
        if self.users:
            lines += ["allow_anonymous false", f"password_file {self._write_passwords()}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.cert}", f"keyfile {self.tls.key}",
                      "require_certificate true", "use_identity_as_username false", "tls_version tlsv1.2"]
        if self.acl is not None:
            acl = self.workdir / "acl"
            acl.write_text(self.acl)
            lines.append(f"acl_file {acl}")
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise it drops to 'mosquitto', who cannot read workdir
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def _write_passwords(self) -> Path:
        path = self.workdir / "passwords"
        path.write_text("")
        for user, password in self.users.items():
            subprocess.run([str(PASSWD), "-b", str(path), user, password], check=True, capture_output=True, timeout=10)
        return path

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Run the broker and wait until its port accepts connections."""
        if self.running:
            raise RuntimeError("mosquitto is already running")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BINARY), "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not open port {self.port} in {timeout} s:\n{self.log.read_text()}")
            time.sleep(0.02)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """End the broker as a service manager would (SIGTERM: it closes connections, saves state)."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """End the broker abruptly (SIGKILL)."""
        self._end(signal.SIGKILL, 10.0)

    def _process(self) -> subprocess.Popen:
        if self.process is None:
            raise RuntimeError("the broker was never started")
        return self.process

    def pause(self) -> None:
        """Freeze the broker: connections stay open, nothing is answered."""
        self._process().send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused broker go on."""
        self._process().send_signal(signal.SIGCONT)

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        if not self.running:
            return
        process = self._process()
        process.send_signal(sig)
        process.send_signal(signal.SIGCONT)  # a paused broker must see the signal
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

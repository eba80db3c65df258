"""A throwaway PostgreSQL with pgvector on a free loopback port: for tests and the benchmark.

``LocalPostgres(workdir).start()`` runs ``initdb`` and ``pg_ctl`` from the first installation
that has the pgvector extension: Debian's ``postgresql-<v>-pgvector`` beside
``/usr/lib/postgresql/<v>/bin``, else the binaries shipped by the ``pgserver`` wheel (PostgreSQL
16 + pgvector; the ``central`` extra installs it). PostgreSQL refuses to run as root, so under
root the server runs as the ``postgres`` user, in a folder of its own under the system temp dir
(pytest's temp folders are private to root), removed by ``stop()``; when that user cannot reach
the binaries (a venv under root's private home), they are first copied beside it (34 MB).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from common.local_broker import HOST, free_port, port_open


class PostgresMissing(RuntimeError):
    """No PostgreSQL installation with pgvector was found."""


def installations() -> list[Path]:
    """Candidate ``bin`` folders: Debian's (newest first), then pgserver's."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        found.append(Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin")
    return found


def has_pgvector(bindir: Path) -> bool:
    """Whether the installation in ``bindir`` has the ``vector`` extension."""
    try:
        share = subprocess.run([str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        share = ""
    candidates = [Path(share), Path("/usr/share/postgresql") / bindir.parent.name, bindir.parent / "share" / "postgresql"]
    return any((c / "extension" / "vector.control").is_file() for c in candidates if str(c))


def find_bindir() -> Path:
    """The first installation with pgvector, or PostgresMissing naming what was tried."""
    tried = installations()
    for bindir in tried:
        if (bindir / "initdb").is_file() and has_pgvector(bindir):
            return bindir
    raise PostgresMissing("no PostgreSQL with pgvector found in " + (", ".join(map(str, tried)) or "(none)") +
                          ": apt-get install postgresql-15-pgvector, or pip install pgserver")


def reachable_by_others(path: Path) -> bool:
    """Whether every folder above ``path`` lets other users through (``o+x``)."""
    return all(parent.stat().st_mode & 0o001 for parent in Path(path).resolve().parents)


def shared_copy(bindir: Path) -> Path:
    """``bindir``'s installation copied under the system temp dir, readable by every user (once per
    installation); returns the copy's ``bin``.

    A wheel's installation (``<site>/pgserver/pginstall``) finds its libraries through a relative
    RPATH (``<site>/pgserver.libs``), so the package folder's ``.libs`` sibling is copied beside it.
    """
    install = bindir.parent.resolve()
    package = install.parent
    digest = hashlib.sha256(str(install).encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"trapedge-pginstall-{digest}"
    if not (target / package.name / install.name / bindir.name / "initdb").is_file():
        partial = Path(tempfile.mkdtemp(prefix="trapedge-pginstall-", dir=tempfile.gettempdir()))
        shutil.copytree(install, partial / package.name / install.name, symlinks=True)
        libs = package.with_name(package.name + ".libs")
        if libs.is_dir():
            shutil.copytree(libs, partial / libs.name, symlinks=True)
        partial.chmod(0o755)
        try:
            partial.rename(target)
        except OSError:  # another process copied it first
            shutil.rmtree(partial, ignore_errors=True)
    return target / package.name / install.name / bindir.name


class LocalPostgres:
    """One server in ``workdir`` (data, socket, log), trusted local access, database ``trapedge``."""

    def __init__(self, workdir: Path, bindir: Path | None = None):
        self.bindir = bindir or find_bindir()
        self.owned = os.geteuid() == 0
        if self.owned and not reachable_by_others(self.bindir):
            self.bindir = shared_copy(self.bindir)
        self.workdir = Path(tempfile.mkdtemp(prefix="trapedge-pg-")) if self.owned else Path(workdir)
        self.data, self.log = self.workdir / "data", self.workdir / "postgres.log"
        self.host, self.port = HOST, free_port()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/trapedge"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=timeout, user=self.user if os.geteuid() == 0 else None)

    def start(self, timeout: float = 30) -> LocalPostgres:
        """initdb, start on the free port, create the database (the pgvector gallery creates its extension)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.owned:
            shutil.chown(self.workdir, self.user)
            self.workdir.chmod(0o700)
        if not self.data.exists():
            done = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync")
            if done.returncode:
                raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
        options = f"-h {self.host} -p {self.port} -k {self.workdir} -c fsync=off -c shared_buffers=256MB"
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                         "-t", str(int(timeout)), "start", timeout=timeout + 10)
        if done.returncode or not port_open(self.port):
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()}\n{self._log_tail()}")
        self._run("createdb", "-h", self.host, "-p", str(self.port), "-U", self.user, "trapedge")
        return self

    def _log_tail(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Fast shutdown (ends sessions, no wait for clients)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        if self.owned:
            shutil.rmtree(self.workdir, ignore_errors=True)

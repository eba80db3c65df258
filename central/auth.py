"""Reviewer login for the review UI: PBKDF2 password hashes, HMAC-signed session cookies and
CSRF tokens bound to the session, the sessions revoked by a logout (see ``central.web`` for how
the routes use them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request

from central.config import ReviewLogin
from central.throttle import LoginThrottle

log = logging.getLogger(__name__)
SESSION_COOKIE, LOGIN_COOKIE, CSRF_HEADER = "trapedge_session", "trapedge_login", "X-CSRF-Token"
PBKDF2_ITERATIONS = 600_000  # OWASP's figure for PBKDF2-HMAC-SHA256
LOGIN_FORM_S = 600  # how long a login form stays valid


# --- passwords ---------------------------------------------------------------------------------


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$<iterations>$<salt>$<hash>`` (base64), the format ``password_hash_file`` holds."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a ``hash_password`` string (constant-time comparison)."""
    try:
        scheme, iterations, salt, digest = encoded.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        computed = hashlib.pbkdf2_hmac("sha256", password.encode(), _unb64(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(computed, _unb64(digest))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- sessions and CSRF tokens ------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """A logged-in reviewer, as the signed cookie says."""

    user: str
    nonce: str
    expires: float


class Signer:
    """HMAC-SHA256 signatures of small JSON values, and the tokens derived from them."""

    def __init__(self, key: bytes):
        if len(key) < 32:
            raise ValueError("the session key needs at least 32 bytes")
        self.key = key

    def token(self, purpose: str, nonce: str) -> str:
        """A token bound to ``nonce`` for one ``purpose`` (``csrf``, ``login``)."""
        return _b64(hmac.new(self.key, f"{purpose}:{nonce}".encode(), hashlib.sha256).digest())

    def check(self, purpose: str, nonce: str, token: str | None) -> bool:
        """Whether ``token`` is ``nonce``'s for ``purpose``; compared as bytes, so that any text sent
        (non-ASCII too) is only a wrong token, never an error."""
        return token is not None and hmac.compare_digest(self.token(purpose, nonce).encode(),
                                                         token.encode("utf-8", "surrogatepass"))

    def dumps(self, value: dict) -> str:
        body = _b64(json.dumps(value, separators=(",", ":")).encode())
        return f"{body}.{self.token('cookie', body)}"

    def loads(self, text: str | None) -> dict | None:
        """The signed value, or None when missing, forged or malformed."""
        body, _, signature = (text or "").partition(".")
        if not body or not self.check("cookie", body, signature):
            return None
        try:
            value = json.loads(_unb64(body))
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


class RevokedSessions:
    """The nonces of logged-out sessions, each kept until its session would have expired; with a
    ``path``, kept in that JSON file too (written whole, then renamed) so that a restart with the
    same session key does not bring them back."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.expiry: dict[str, float] = self._load() if path is not None else {}

    def __contains__(self, nonce: str) -> bool:
        return nonce in self.expiry

    def revoke(self, session: Session) -> None:
        now = time.time()
        self.expiry = {n: e for n, e in self.expiry.items() if e > now} | {session.nonce: session.expires}
        if self.path is not None:
            self._save()

    def _load(self) -> dict[str, float]:
        assert self.path is not None
        try:
            value = json.loads(self.path.read_text(encoding="utf-8"))
            return {str(nonce): float(expires) for nonce, expires in value.items() if float(expires) > time.time()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError, TypeError) as err:
            raise ValueError(f"review: cannot read the revoked sessions file {self.path} ({err}): "
                             "delete it, or change the session key to end every session") from None

    def _save(self) -> None:
        assert self.path is not None
        try:
            handle, temporary = tempfile.mkstemp(prefix=self.path.name, dir=self.path.parent)
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(self.expiry, out)
            os.replace(temporary, self.path)
        except OSError as err:  # the logout still holds until a restart
            log.warning("could not write the revoked sessions file %s (%s): a restart would accept the "
                        "logged-out session again until it expires; check the folder's permissions and space",
                        self.path, err.strerror)


@dataclass
class Auth:
    """The login settings resolved: the reviewer, the password hash, the cookie signer, the
    revoked sessions and the login limits."""

    username: str
    password_hash: str
    signer: Signer
    session_s: float = 12 * 3600.0
    secure_cookie: bool = False
    revoked: RevokedSessions = field(default_factory=RevokedSessions)
    throttle: LoginThrottle = field(default_factory=lambda: LoginThrottle.per_minute(
        _default("attempts_per_minute_per_address"), _default("attempts_per_minute_per_user")))
    check_threads: int = field(default_factory=lambda: _default("password_check_threads"))
    check_queue: int = field(default_factory=lambda: _default("password_check_queue"))

    @classmethod
    def from_config(cls, login: ReviewLogin, revoked_sessions_file: Path | None = None) -> Auth:
        """Read the hash and key files; errors name the file, never its content. Logged-out sessions
        are kept in ``login.revoked_sessions_file``, else in ``revoked_sessions_file``."""
        password_hash = _read_secret(login.password_hash_file).decode("utf-8", "replace").strip()
        if not password_hash.startswith("pbkdf2_sha256$"):
            raise ValueError(f"review.login.password_hash_file {login.password_hash_file}: not a "
                             "pbkdf2_sha256 hash (make one with python -m central.web --hash-password)")
        key = secrets.token_bytes(32) if login.session_key_file is None else _read_secret(login.session_key_file)
        revoked = RevokedSessions(login.revoked_sessions_file or revoked_sessions_file)
        throttle = LoginThrottle.per_minute(login.attempts_per_minute_per_address, login.attempts_per_minute_per_user)
        return cls(login.username, password_hash, Signer(key), login.session_hours * 3600, login.secure_cookie,
                   revoked, throttle, login.password_check_threads, login.password_check_queue)

    def check_password(self, username: str, password: str) -> bool:
        right_password = verify_password(password, self.password_hash)  # always hashed: no timing oracle
        return hmac.compare_digest(username.encode(), self.username.encode()) and right_password

    def new_session(self) -> str:
        return self.signer.dumps({"u": self.username, "n": secrets.token_urlsafe(16),
                                  "e": time.time() + self.session_s})

    def session(self, request: Request) -> Session | None:
        value = self.signer.loads(request.cookies.get(SESSION_COOKIE))
        if value is None or value.get("u") != self.username or not float(value.get("e", 0)) > time.time():
            return None
        if str(value.get("n")) in self.revoked:
            return None
        return Session(value["u"], str(value["n"]), float(value["e"]))

    def csrf_token(self, session: Session) -> str:
        return self.signer.token("csrf", session.nonce)

    def check_csrf(self, session: Session, token: str | None) -> bool:
        """Whether ``token`` is the session's CSRF token (a missing or non-ASCII one is just wrong)."""
        return self.signer.check("csrf", session.nonce, token)

    def revoke(self, session: Session) -> None:
        """Log out: the session's cookie is refused from now on, wherever it was copied to."""
        self.revoked.revoke(session)


def _default(name: str) -> int:
    return ReviewLogin.model_fields[name].default


def _read_secret(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ValueError(f"review.login: cannot read {path}: {err.strerror}") from None

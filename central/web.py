"""The review web server: Starlette routes over ``central.review``, served by uvicorn in a thread.

Plain HTML, JavaScript and CSS from ``central/static`` (no build step, nothing inline). Pages:

* ``GET /login``, ``POST /login`` (form: username, password, csrf), ``POST /logout``;
* ``GET /`` the review page; ``GET /individual/{image id}`` the individual an image belongs to;
* ``GET /static/{name}.js|.css`` their scripts and style sheets.

The API (``central.web_api``):

* ``GET /api/anchor[?id= | ?after= | ?before=]`` an anchor (the queue's first, a given one, or the
  next or previous in the queue: paging changes nothing) and its candidates;
* ``GET /api/image/{id}/{crop|edge}`` a stored JPEG;
* ``POST /api/decision`` ``{anchor, candidate, verdict}``; ``POST /api/skip`` ``{anchor}`` (to the
  back of the queue); ``POST /api/done`` ``{anchor}`` (no match: out of the queue; ``/api/next`` is
  the old name); ``POST /api/undo`` (reverts the latest of these); ``GET /api/history``;
* ``GET /api/match?anchor=&candidate=`` the matched keypoints of two crops;
* ``GET /api/individuals?q=`` search; ``GET /api/individual?id=`` one individual's images;
* ``GET /api/export?format=spotid|camtrapdp|megadetector`` a zip of that export;
* ``GET /api/conflicts``.

Access. Every route but the login needs a session: a cookie signed with HMAC-SHA256 (HttpOnly,
SameSite=Strict, expiring) that the login sets after checking the password against a PBKDF2
hash (``python -m central.web --hash-password`` makes one). Without a session a page redirects
to the login and the API answers 401. Every POST also needs the session's CSRF token (an HMAC
of the session's nonce) in the ``X-CSRF-Token`` header, or a wrong one gets 403; the page
receives it in ``<meta name="csrf-token">``. The login form carries a token bound to a
short-lived pre-login cookie, so a foreign site cannot log a browser in either. Logging out
revokes the session on the server (kept in a file, so also after a restart); changing the
session key ends every session. Without login settings the server answers every request with
503 (it fails closed).

Limits. Passwords are checked on a small thread pool, never on the event loop, and at most
``review.login.attempts_per_minute_per_address`` / ``_per_user`` times a minute (more: 429 with
Retry-After); when the pool and its queue are full a login gets 503. A request body over
``review.max_body_bytes`` gets 413 before it is read; a JSON body nested too deeply to parse, or
holding a string that is not UTF-8 text (a lone surrogate), gets 400. Every answer carries the
security headers of ``central.web_middleware``; the review pages add a Content-Security-Policy that
runs only scripts and styles of this server (no inline ones), the login page one whose nonce is new
each time.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import html
import logging
import secrets
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from central.auth import (
    CSRF_HEADER,
    LOGIN_COOKIE,
    LOGIN_FORM_S,
    PBKDF2_ITERATIONS,
    SESSION_COOKIE,
    Auth,
    hash_password,
    verify_password,
)
from central.config import ExportsConfig, ReviewConfig, ReviewLogin
from central.matching import Matcher
from central.store import CentralStore
from central.web_api import api_routes
from central.web_middleware import BodyLimit, SecurityHeaders

__all__ = ["CSRF_HEADER", "ReviewServer", "create_app", "hash_password", "main", "verify_password"]

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
MAX_BODY_BYTES = ReviewConfig.model_fields["max_body_bytes"].default
Handler = Callable[[Request], Awaitable[Response]]


def page_headers(nonce: str) -> dict[str, str]:
    """A page's headers: only its own inline script and style (carrying ``nonce``) may run, so injected
    markup runs nothing, and no string is ever evaluated as code."""
    return {"Content-Security-Policy": f"default-src 'none'; script-src 'nonce-{nonce}'; "
                                       f"style-src 'nonce-{nonce}'; img-src 'self'; connect-src 'self'; "
                                       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"}


# the review pages: scripts, styles, images and requests of this server only; nothing inline runs
APP_PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                                               "base-uri 'none'; frame-ancestors 'none'"}


# --- the application ---------------------------------------------------------------------------


def create_app(store: CentralStore, matcher: Matcher, auth: Auth | None, max_body_bytes: int = MAX_BODY_BYTES,
               password_checks: Executor | None = None, exports: ExportsConfig | None = None) -> ASGIApp:
    """The review application over one store and matcher; ``auth`` None refuses every request.

    Args:
        store: the central database.
        matcher: proposes the candidates.
        auth: the login settings, or None.
        max_body_bytes: larger request bodies are refused (413).
        password_checks: where passwords are checked (default: a new pool of ``auth.check_threads``).
        exports: the ``exports`` config: device locations shown, and the export button's Camtrap DP metadata.
    """
    middleware = [Middleware(BodyLimit, limit=max_body_bytes)]
    if auth is None:
        routes = [Route("/{path:path}", _not_configured, methods=["GET", "POST"])]
        return SecurityHeaders(Starlette(routes=routes, middleware=middleware))
    guard = _Guard(auth, password_checks or ThreadPoolExecutor(auth.check_threads, "review-password"))
    routes = [Route("/login", guard.login_page), Route("/login", guard.login, methods=["POST"]),
              Route("/logout", guard(guard.logout, post=True), methods=["POST"]),
              Route("/", guard(_page("review.html"))), Route("/individual/{id}", guard(_page("individual.html")))]
    routes += [Route(path, guard(handler, post=post), methods=["POST"] if post else ["GET"])
               for path, handler, post in api_routes(store, matcher, exports or ExportsConfig())]
    return SecurityHeaders(Starlette(routes=routes, middleware=middleware))


class _Guard:
    """Wraps handlers in the session and CSRF checks; serves the login and the logout itself."""

    def __init__(self, auth: Auth, password_checks: Executor):
        self.auth, self.password_checks = auth, password_checks
        self.checking = 0  # password checks running or queued (only the event loop changes it)
        self.quiet_until = 0.0  # throttling is logged once a minute at most

    def __call__(self, handler: Handler, *, post: bool = False) -> Handler:
        async def guarded(request: Request) -> Response:
            session = self.auth.session(request)
            if session is None:
                if request.url.path.startswith("/api/") or post:
                    return JSONResponse({"error": "login required"}, status_code=401)
                return RedirectResponse("/login", status_code=303)
            if post and not self.auth.check_csrf(session, request.headers.get(CSRF_HEADER)):
                return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
            request.state.session, request.state.csrf = session, self.auth.csrf_token(session)
            return await handler(request)

        return guarded

    async def login_page(self, request: Request, error: str = "", status: int = 200,
                         retry_after: int | None = None) -> Response:
        nonce, csp_nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        page = _login_html(self.auth.signer.token("login", nonce), error, csp_nonce)
        headers = page_headers(csp_nonce) | ({"Retry-After": str(retry_after)} if retry_after else {})
        response = HTMLResponse(page, status_code=status, headers=headers)
        response.set_cookie(LOGIN_COOKIE, self.auth.signer.dumps({"n": nonce, "e": time.time() + LOGIN_FORM_S}),
                            max_age=LOGIN_FORM_S, path="/login", httponly=True, samesite="strict",
                            secure=self.auth.secure_cookie)
        return response

    async def login(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        pending = self.auth.signer.loads(request.cookies.get(LOGIN_COOKIE)) or {}
        if not (float(pending.get("e", 0)) > time.time()
                and self.auth.signer.check("login", str(pending.get("n")), form.get("csrf"))):
            return await self.login_page(request, "The form expired; please try again.", 403)
        username, client = form.get("username", ""), request.client.host if request.client else "?"
        refusal = await self._refuse_now(request, client, username)
        if refusal is not None:
            return refusal
        if not await self._check_password(username, form.get("password", "")):
            log.warning("review login refused for user %r from %s", username[:64], client)
            return await self.login_page(request, "Wrong user name or password.", 401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, self.auth.new_session(), max_age=int(self.auth.session_s), path="/",
                            httponly=True, samesite="strict", secure=self.auth.secure_cookie)
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def _refuse_now(self, request: Request, client: str, username: str) -> Response | None:
        """503 when the password checks are all taken, 429 when this address or user name is over its
        limit; None (and the attempt counted) when the password may be checked."""
        if self.checking >= self.auth.check_threads + self.auth.check_queue:
            return await self.login_page(request, "The server is busy checking other logins: try again in a few "
                                                  "seconds.", 503, retry_after=2)
        wait, why = self.auth.throttle.admit(client, username, time.monotonic())
        if not wait:
            return None
        if time.monotonic() >= self.quiet_until:
            log.warning("review login throttled: %s (%s, user %r); not logged again for a minute",
                        why, client, username[:64])
            self.quiet_until = time.monotonic() + 60
        return await self.login_page(request, f"{why.capitalize()}: try again in {wait} s.", 429, retry_after=wait)

    async def _check_password(self, username: str, password: str) -> bool:
        """PBKDF2 on the pool: the event loop goes on serving the logged-in reviewer meanwhile."""
        self.checking += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.password_checks, self.auth.check_password, username, password)
        finally:
            self.checking -= 1

    async def logout(self, request: Request) -> Response:
        self.auth.revoke(request.state.session)
        response = JSONResponse({"ok": True})
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response


def _page(name: str) -> Handler:
    """A page of ``central/static`` with the session's CSRF token filled in."""

    async def page(request: Request) -> Response:
        text = (STATIC / name).read_text(encoding="utf-8").replace("{{csrf_token}}", html.escape(request.state.csrf))
        return HTMLResponse(text, headers=APP_PAGE_HEADERS)

    return page


async def _not_configured(request: Request) -> Response:
    return JSONResponse({"error": "review login is not configured: set review.login in central.yaml"},
                        status_code=503)


def _login_html(token: str, error: str, csp_nonce: str) -> str:
    message = f'<p data-testid="login-error" class="error">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trapedge review: log in</title>
<style nonce="{csp_nonce}">body {{ font-family: system-ui, sans-serif; background: #1d1f21; color: #eee; display: grid;
place-items: center; height: 100vh; margin: 0; }} form {{ display: grid; gap: .5em; }}
.error {{ color: #f77; }}</style></head>
<body><form method="post" action="/login" data-testid="login-form">
<strong>trapedge re-ID review</strong>{message}
<input type="hidden" name="csrf" value="{html.escape(token)}">
<label>User <input name="username" data-testid="username" autocomplete="username" required></label>
<label>Password <input name="password" type="password" data-testid="password"
 autocomplete="current-password" required></label>
<button type="submit" data-testid="login">Log in</button>
</form></body></html>
"""


class ReviewServer:
    """uvicorn on ``host:port`` (port 0: a free one, see ``.port``) in a background thread."""

    def __init__(self, store: CentralStore, matcher: Matcher, host: str = "127.0.0.1", port: int = 8080,
                 login: ReviewLogin | Auth | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 exports: ExportsConfig | None = None):
        revoked_file = store.path.with_name(store.path.name + ".revoked-sessions.json")
        auth = Auth.from_config(login, revoked_file) if isinstance(login, ReviewLogin) else login
        if auth is None:
            log.warning("review.login is not configured: the review UI refuses every request (503)")
        self.password_checks = ThreadPoolExecutor(auth.check_threads if auth else 1, "review-password")
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.host, self.port = host, self.socket.getsockname()[1]
        app = create_app(store, matcher, auth, max_body_bytes, self.password_checks, exports)
        # the login throttle keys on the client address: X-Forwarded-For is believed only from a proxy on this host
        config = uvicorn.Config(app, log_level="warning", lifespan="off", proxy_headers=True,
                                forwarded_allow_ips="127.0.0.1,::1")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="central-review", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> ReviewServer:
        """Serve, and wait until the server accepts requests."""
        self.thread.start()
        ready = threading.Event()
        while not self.server.started and self.thread.is_alive() and not ready.wait(0.02):
            timeout -= 0.02
            if timeout <= 0:
                raise RuntimeError("review server did not start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()
        self.password_checks.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m central.web --hash-password``: print a hash for ``review.login.password_hash_file``."""
    parser = argparse.ArgumentParser(prog="python -m central.web", description=main.__doc__)
    parser.add_argument("--hash-password", action="store_true", required=True,
                        help="read a password (prompted twice on a terminal, else one line of stdin)")
    parser.add_argument("--iterations", type=int, default=PBKDF2_ITERATIONS, help="PBKDF2 iterations")
    args = parser.parse_args(argv)
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        print("use a password of at least 8 characters", file=sys.stderr)
        return 1
    print(hash_password(password, args.iterations))
    return 0


if __name__ == "__main__":
    sys.exit(main())

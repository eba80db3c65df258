"""The review web server: Starlette routes over ``central.review``, served by uvicorn in a thread.

Plain HTML and JavaScript from ``central/static`` (no build step). Routes:

* ``GET /login``, ``POST /login`` (form: username, password, csrf), ``POST /logout``;
* ``GET /`` the page; ``GET /api/anchor[?id=]`` the anchor and its candidates;
* ``GET /api/image/{id}/{crop|edge}`` a stored JPEG;
* ``POST /api/decision`` ``{anchor, candidate, verdict}``; ``POST /api/next`` ``{anchor}``;
* ``GET /api/conflicts``.

Access. Every route but the login needs a session: a cookie signed with HMAC-SHA256 (HttpOnly,
SameSite=Strict, expiring) that the login sets after checking the password against a PBKDF2
hash (``python -m central.web --hash-password`` makes one). Without a session a page redirects
to the login and the API answers 401. Every POST also needs the session's CSRF token (an HMAC
of the session's nonce) in the ``X-CSRF-Token`` header, or a wrong one gets 403; the page
receives it in ``<meta name="csrf-token">``. The login form carries a token bound to a
short-lived pre-login cookie, so a foreign site cannot log a browser in either. Sessions are
not stored: logging out deletes the cookie; changing the session key ends every session.
Without login settings the server answers every request with 503 (it fails closed).
"""

from __future__ import annotations

import argparse
import getpass
import hmac
import html
import logging
import secrets
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from central import review
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
from central.config import ReviewLogin
from central.matching import Matcher
from central.store import CentralStore

__all__ = ["CSRF_HEADER", "ReviewServer", "create_app", "hash_password", "main", "verify_password"]

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
PAGE_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                "Content-Security-Policy": "frame-ancestors 'none'", "Referrer-Policy": "same-origin"}
Handler = Callable[[Request], Awaitable[Response]]


# --- the application ---------------------------------------------------------------------------


def create_app(store: CentralStore, matcher: Matcher, auth: Auth | None) -> Starlette:
    """The review application over one store and matcher; ``auth`` None refuses every request."""
    if auth is None:
        return Starlette(routes=[Route("/{path:path}", _not_configured, methods=["GET", "POST"])])
    guard = _Guard(auth)
    routes = [Route("/login", guard.login_page), Route("/login", guard.login, methods=["POST"]),
              Route("/logout", guard(_logout, post=True), methods=["POST"]),
              Route("/", guard(_index))]
    routes += [Route(path, guard(handler, post=post), methods=["POST"] if post else ["GET"])
               for path, handler, post in _api_routes(store, matcher)]
    return Starlette(routes=routes)


def _api_routes(store: CentralStore, matcher: Matcher) -> list[tuple[str, Handler, bool]]:
    """(path, handler, state-changing) of the review API."""

    async def anchor(request: Request) -> Response:
        return JSONResponse(review.anchor_view(store, matcher, request.query_params.get("id")))

    async def image(request: Request) -> Response:
        sighting = store.sighting(request.path_params["id"])
        kind = request.path_params["kind"]
        data = None if sighting is None else {"crop": sighting.crop_jpeg, "edge": sighting.edge_jpeg}.get(kind)
        if data is None:
            return JSONResponse({"error": f"no {kind} image for this id"}, status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def decision(request: Request) -> Response:
        body = await _json(request)
        try:
            review.decide(store, str(body.get("anchor")), str(body.get("candidate")), str(body.get("verdict")))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": True})

    async def next_anchor(request: Request) -> Response:
        body = await _json(request)
        if store.sighting(str(body.get("anchor"))) is None:
            return JSONResponse({"error": "unknown anchor"}, status_code=400)
        store.mark_reviewed(str(body["anchor"]))
        return JSONResponse({"ok": True})

    async def conflicts(request: Request) -> Response:
        return JSONResponse(review.conflicts_view(store))

    return [("/api/anchor", anchor, False), ("/api/image/{id}/{kind}", image, False),
            ("/api/decision", decision, True), ("/api/next", next_anchor, True),
            ("/api/conflicts", conflicts, False)]


class _Guard:
    """Wraps handlers in the session and CSRF checks; serves the login itself."""

    def __init__(self, auth: Auth):
        self.auth = auth

    def __call__(self, handler: Handler, *, post: bool = False) -> Handler:
        async def guarded(request: Request) -> Response:
            session = self.auth.session(request)
            if session is None:
                if request.url.path.startswith("/api/") or post:
                    return JSONResponse({"error": "login required"}, status_code=401)
                return RedirectResponse("/login", status_code=303)
            if post and not hmac.compare_digest(self.auth.csrf_token(session),
                                                request.headers.get(CSRF_HEADER, "")):
                return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
            request.state.session, request.state.csrf = session, self.auth.csrf_token(session)
            return await handler(request)

        return guarded

    async def login_page(self, request: Request, error: str = "", status: int = 200) -> Response:
        nonce = secrets.token_urlsafe(16)
        page = _login_html(self.auth.signer.token("login", nonce), error)
        response = HTMLResponse(page, status_code=status, headers=PAGE_HEADERS)
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
        if not self.auth.check_password(form.get("username", ""), form.get("password", "")):
            client = request.client.host if request.client else "?"
            log.warning("review login refused for user %r from %s", form.get("username", "")[:64], client)
            return await self.login_page(request, "Wrong user name or password.", 401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, self.auth.new_session(), max_age=int(self.auth.session_s), path="/",
                            httponly=True, samesite="strict", secure=self.auth.secure_cookie)
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response


async def _index(request: Request) -> Response:
    page = (STATIC / "review.html").read_text(encoding="utf-8")
    return HTMLResponse(page.replace("{{csrf_token}}", request.state.csrf), headers=PAGE_HEADERS)


async def _logout(request: Request) -> Response:
    response = JSONResponse({"ok": True})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def _not_configured(request: Request) -> Response:
    return JSONResponse({"error": "review login is not configured: set review.login in central.yaml"},
                        status_code=503)


def _login_html(token: str, error: str) -> str:
    message = f'<p data-testid="login-error" class="error">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trapedge review: log in</title>
<style>body {{ font-family: system-ui, sans-serif; background: #1d1f21; color: #eee; display: grid;
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


async def _json(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class ReviewServer:
    """uvicorn on ``host:port`` (port 0: a free one, see ``.port``) in a background thread."""

    def __init__(self, store: CentralStore, matcher: Matcher, host: str = "127.0.0.1", port: int = 8080,
                 login: ReviewLogin | Auth | None = None):
        auth = Auth.from_config(login) if isinstance(login, ReviewLogin) else login
        if auth is None:
            log.warning("review.login is not configured: the review UI refuses every request (503)")
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(create_app(store, matcher, auth), log_level="warning", lifespan="off")
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

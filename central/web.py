"""The review web server: Starlette routes over ``central.review``, served by uvicorn in a thread.

Plain HTML and JavaScript from ``central/static`` (no build step). Routes:

* ``GET /`` the page; ``GET /api/anchor[?id=]`` the anchor and its candidates;
* ``GET /api/image/{id}/{crop|edge}`` a stored JPEG;
* ``POST /api/decision`` ``{anchor, candidate, verdict}``; ``POST /api/next`` ``{anchor}``;
* ``GET /api/conflicts``.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from central import review
from central.matching import Matcher
from central.store import CentralStore

STATIC = Path(__file__).with_name("static")


def create_app(store: CentralStore, matcher: Matcher) -> Starlette:
    """The review application over one store and matcher."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "review.html")

    async def anchor(request: Request) -> Response:
        return JSONResponse(review.anchor_view(store, matcher, request.query_params.get("id")))

    async def image(request: Request) -> Response:
        sighting = store.sighting(request.path_params["id"])
        kind = request.path_params["kind"]
        data = None if sighting is None else {"crop": sighting.crop_jpeg, "edge": sighting.edge_jpeg}.get(kind)
        if data is None:
            return JSONResponse({"error": f"no {kind} image for this id"}, status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

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

    return Starlette(routes=[
        Route("/", index), Route("/api/anchor", anchor), Route("/api/image/{id}/{kind}", image),
        Route("/api/decision", decision, methods=["POST"]), Route("/api/next", next_anchor, methods=["POST"]),
        Route("/api/conflicts", conflicts),
    ])


async def _json(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class ReviewServer:
    """uvicorn on ``host:port`` (port 0: a free one, see ``.port``) in a background thread."""

    def __init__(self, store: CentralStore, matcher: Matcher, host: str = "127.0.0.1", port: int = 8080):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(create_app(store, matcher), log_level="warning", lifespan="off")
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

"""The review API: what ``central.web`` serves behind its login, as (path, handler, state-changing) routes.

Reads are GET, every step a researcher takes is a POST (the guard checks the session's CSRF token).
Work that takes CPU time (candidates with re-ranking, keypoint matching, an export) runs on the
thread pool, so the server goes on answering meanwhile.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from central import browse, review
from central.config import ExportsConfig
from central.exports import EXPORTERS
from central.ingest import unicode_text
from central.keypoints import matched_pairs
from central.matching import Matcher
from central.store import CentralStore

Handler = Callable[[Request], Awaitable[Response]]
STATIC = Path(__file__).with_name("static")
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def locations_of(settings: ExportsConfig) -> dict[str, str]:
    """Device id -> where it stands, for the pages (``exports.deployments`` of the config)."""
    return {device: site.location_name or f"{site.latitude:.5f}, {site.longitude:.5f}"
            for device, site in settings.deployments.items()}


def export_zip(store: CentralStore, name: str, settings: ExportsConfig) -> bytes:
    """One export format (``central.exports.EXPORTERS``) written to a temporary folder, as a zip."""
    with tempfile.TemporaryDirectory(prefix="trapedge-export-") as folder:
        EXPORTERS[name](store, Path(folder), settings)
        data = io.BytesIO()
        with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(folder).rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(folder).as_posix())
    return data.getvalue()


def api_routes(store: CentralStore, matcher: Matcher, exports: ExportsConfig) -> list[tuple[str, Handler, bool]]:
    """(path, handler, state-changing) of the review API."""
    locations = locations_of(exports)

    async def anchor(request: Request) -> Response:
        query = request.query_params
        anchor_id = query.get("id")
        if query.get("after") or query.get("before"):  # paging: nothing changes
            anchor_id = store.queue_neighbour(query.get("after") or query["before"], 1 if query.get("after") else -1)
        return JSONResponse(await run_in_threadpool(review.anchor_view, store, matcher, anchor_id, locations))

    async def image(request: Request) -> Response:
        sighting = store.sighting(request.path_params["id"])
        kind = request.path_params["kind"]
        data = None if sighting is None else {"crop": sighting.crop_jpeg, "edge": sighting.edge_jpeg}.get(kind)
        if data is None:
            return JSONResponse({"error": f"no {kind} image for this id"}, status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def decision(request: Request) -> Response:
        body = await _json(request)
        anchor_id, verdict = str(body.get("anchor")), str(body.get("verdict"))
        after = review.following(store, anchor_id) if verdict == "match" else anchor_id
        try:
            review.decide(store, anchor_id, str(body.get("candidate")), verdict)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": True, "next": after})

    def queue_step(step: Callable[[str], None]) -> Handler:
        async def handler(request: Request) -> Response:
            anchor_id = str((await _json(request)).get("anchor"))
            if store.sighting(anchor_id) is None:
                return JSONResponse({"error": "unknown anchor"}, status_code=400)
            after = review.following(store, anchor_id)
            step(anchor_id)
            return JSONResponse({"ok": True, "next": after})

        return handler

    async def undo(request: Request) -> Response:
        return JSONResponse({"ok": True, "undone": review.undo(store)})

    async def history(request: Request) -> Response:
        return JSONResponse([vars(step) for step in store.history(_int(request.query_params.get("limit"), 100))])

    async def conflicts(request: Request) -> Response:
        return JSONResponse(review.conflicts_view(store))

    async def match(request: Request) -> Response:
        ids = [request.query_params.get(k, "") for k in ("anchor", "candidate")]
        if ids[0] == ids[1]:
            return JSONResponse({"error": "anchor and candidate are the same image"}, status_code=400)
        pair = [store.sighting(image_id) for image_id in ids]
        if None in pair:
            return JSONResponse({"error": "anchor and candidate must be stored images"}, status_code=400)
        found = await run_in_threadpool(matched_pairs, *pair)
        if found is None:
            return JSONResponse({"error": "both images need a crop"}, status_code=404)
        return JSONResponse({"pairs": [[round(float(v), 5) for v in row] for row in found.pairs],
                             "matches": found.matches, "inliers": found.inliers})

    async def individuals(request: Request) -> Response:
        query = request.query_params.get("q", "")[:200]
        return JSONResponse(await run_in_threadpool(browse.search_individuals, store, query))

    async def individual(request: Request) -> Response:
        view = await run_in_threadpool(browse.individual_view, store, request.query_params.get("id", ""), locations)
        return JSONResponse(view) if view else JSONResponse({"error": "no such image"}, status_code=404)

    async def export(request: Request) -> Response:
        from central.camtrapdp import CamtrapExportError

        name = request.query_params.get("format", "")
        if name not in EXPORTERS:
            return JSONResponse({"error": f"format must be one of {sorted(EXPORTERS)}"}, status_code=400)
        try:
            data = await run_in_threadpool(export_zip, store, name, exports)
        except CamtrapExportError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="trapedge-{name}.zip"'})

    done = queue_step(store.finish)
    routes = [("/api/anchor", anchor, False), ("/api/image/{id}/{kind}", image, False),
              ("/api/decision", decision, True), ("/api/skip", queue_step(store.skip), True),
              ("/api/done", done, True), ("/api/next", done, True), ("/api/undo", undo, True),
              ("/api/history", history, False), ("/api/conflicts", conflicts, False), ("/api/match", match, False),
              ("/api/individuals", individuals, False), ("/api/individual", individual, False),
              ("/api/export", export, False), ("/static/{name}", static_file, False)]
    return [(path, _refusing_bad_requests(handler), post) for path, handler, post in routes]


async def static_file(request: Request) -> Response:
    """A script or style sheet of ``central/static`` (nothing else there is served this way)."""
    name = request.path_params["name"]
    path = STATIC / name
    if "/" in name or path.suffix not in STATIC_TYPES or not path.is_file():
        return JSONResponse({"error": "not found"}, status_code=404)
    return Response(path.read_bytes(), media_type=STATIC_TYPES[path.suffix],
                    headers={"Cache-Control": "private, no-cache"})


class BadRequest(Exception):
    """A request the API refuses with 400; the message says why in one line."""


def _refusing_bad_requests(handler: Handler) -> Handler:
    """``handler``, answering its ``BadRequest`` with 400 and the reason."""

    async def refusing(request: Request) -> Response:
        try:
            return await handler(request)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    return refusing


def _int(text: str | None, default: int) -> int:
    """A limit of 1 to 1000 from ASCII digits; ``default`` for anything else (``int`` refuses some
    Unicode digits, such as "²", that ``str.isdigit`` accepts)."""
    return max(1, min(1000, int(text))) if text and text.isascii() and text.isdigit() else default


async def _json(request: Request) -> dict:
    """The body's JSON object, {} when it is none; ``BadRequest`` when it nests too deeply to parse
    or holds a string that is not UTF-8 text (a lone surrogate such as "\\ud800"), which the store refuses."""
    try:
        body = await request.json()
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply: send one flat object") from None
    except ValueError:
        return {}
    if not isinstance(body, dict):
        return {}
    if not unicode_text(body):
        raise BadRequest("the JSON body holds a string that is not UTF-8 text (a lone surrogate such as "
                         "\\ud800): send valid text")
    return body

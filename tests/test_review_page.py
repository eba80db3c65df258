"""The comparison page in headless Chromium under its own strict CSP: layout at 1366 and 1920 px,
the keyboard flow (select, confirm, undo, skip, paging, no match, done), synchronised zoom, the
matched keypoints overlay, an individual's page, search, export, live crops, and the login on every
new route.

The store is the 44 SpotID leopard crops (embedded by the default bundle) plus two live sightings
from a device: one with the crop the shipped edge config now sends, one without. Screenshots go to
``results/review_screens/`` (git-ignored).
"""

import http.client
import io
import json
import re
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from PIL import Image

from central.config import DeploymentSite, ExportsConfig, ReviewLogin
from central.matching import Matcher
from central.web import CSRF_HEADER, ReviewServer, hash_password

USER, PASSWORD = "reviewer", "leopard-spots-42"

SCREENS = Path(__file__).resolve().parents[1] / "results" / "review_screens"
DEVICE, PLACE = "cam-north-01", "North ridge"
LIVE_TIME = "2026-03-14T05:12:09+02:00"
EDGE_EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "edge.example.yaml"


def device_crop(jpeg: bytes, side: int) -> bytes:
    """A crop as a device sends it: longest side ``side`` (the edge's embedding_crop_max_side)."""
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


@pytest.fixture
def login(tmp_path) -> ReviewLogin:
    """Reviewer credentials (few PBKDF2 iterations: the hash format carries its own count)."""
    hashed = tmp_path / "review-password.hash"
    hashed.write_text(hash_password(PASSWORD, iterations=1000) + "\n")
    key = tmp_path / "session.key"
    key.write_bytes(bytes(range(32)))
    return ReviewLogin(username=USER, password_hash_file=hashed, session_key_file=key)


@pytest.fixture
def live(leopard_sightings):
    """Two sightings of a field device: the 6th leopard crop sent at the shipped crop size, and one
    sent without a crop (a device configured for vectors only)."""
    side = yaml.safe_load(EDGE_EXAMPLE.read_text())["alerts"]["embedding_crop_max_side"]
    base = leopard_sightings[5]
    common = dict(device=DEVICE, event_id="evt-1", frame_time=LIVE_TIME, label="leopard", name=None,
                  individual=None, edge_jpeg=None, meta={"bbox": [0.1, 0.1, 0.5, 0.5], "confidence": 0.9,
                                                          "source": "frame-0001.jpg"})
    with_crop = replace(base, id="live-with-crop", crop_jpeg=device_crop(base.crop_jpeg, side), **common)
    without = replace(leopard_sightings[9], id="live-without-crop", crop_jpeg=None, **common)
    return with_crop, without


@pytest.fixture
def store(leopard_store, live):
    for sighting in live:
        leopard_store.add_sighting(sighting)
    return leopard_store


@pytest.fixture
def server(store, login):
    exports = ExportsConfig(deployments={DEVICE: DeploymentSite(latitude=-24.1, longitude=31.5, location_name=PLACE)})
    server = ReviewServer(store, Matcher(store), port=0, login=login, exports=exports).start()
    yield server
    server.stop()


def wait_until(page, script: str, timeout: float = 20.0):
    """Poll a page expression (``page.evaluate`` runs under the page's CSP, unlike ``wait_for_function``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {script}")
        time.sleep(0.05)


def open_review(browser, server, width: int = 1366, height: int = 768, path: str = ""):
    """Logged in through the form, the review page open under its strict CSP, CSP violations collected."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.csp_errors = []
    page.on("console", lambda m: page.csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(server.url + path)
    page.fill("[data-testid=username]", USER)
    page.fill("[data-testid=password]", PASSWORD)
    page.click("[data-testid=login]")
    if path:
        page.goto(server.url + path)
    page.wait_for_selector("[data-testid=candidate]")
    wait_until(page, "document.getElementById('anchor-img').complete")
    return page


def anchor_id(page) -> str:
    return page.get_attribute("[data-testid=anchor-name]", "data-id")


def wait_anchor(page, expected: str):
    wait_until(page, f"document.getElementById('anchor-name').dataset.id === {json.dumps(expected)} && "
                     "document.querySelectorAll('[data-testid=candidate]').length > 0")


def queue_text(page) -> str:
    return page.inner_text("[data-testid=queue]")


def box(page, testid: str) -> dict:
    return page.locator(f"[data-testid={testid}]").bounding_box()


@pytest.mark.parametrize("width, height", [(1366, 768), (1920, 1080)])
def test_layout_fits_and_compares_at_equal_size(browser, server, width, height):
    page = open_review(browser, server, width, height)
    wait_until(page, "document.getElementById('candidate-img').naturalWidth > 0")
    assert page.evaluate("document.documentElement.scrollWidth") <= page.evaluate("window.innerWidth")
    anchor, candidate = box(page, "anchor-view"), box(page, "candidate-view")
    assert abs(anchor["width"] - candidate["width"]) <= 1 and abs(anchor["height"] - candidate["height"]) <= 1
    assert anchor["x"] + anchor["width"] <= candidate["x"] and abs(anchor["y"] - candidate["y"]) <= 1
    assert anchor["width"] >= 0.4 * width and anchor["height"] >= 0.35 * height  # the animal is large
    for button in ("confirm", "no-match", "skip", "undo", "done", "next", "back", "export", "search"):
        b = box(page, button)
        assert b["x"] >= 0 and b["y"] >= 0 and b["x"] + b["width"] <= width and b["y"] + b["height"] <= height, button
    cards = page.locator("[data-testid=candidate]")
    assert cards.count() == 5
    for i in range(5):  # every card's whole box on screen, with its evidence and where it was taken
        b = cards.nth(i).bounding_box()
        assert b["x"] + b["width"] <= width and b["y"] + b["height"] <= height
        assert cards.nth(i).locator("[data-testid=evidence]").inner_text().startswith("cosine ")
        assert cards.nth(i).locator("[data-testid=where]").inner_text()
    percents = [int(t.rstrip("%")) for t in page.locator("[data-testid=confidence]").all_inner_texts()]
    assert percents == sorted(percents, reverse=True)  # rank and P(same) agree
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / f"review-{width}.png"))
    page.keyboard.press("k")
    wait_until(page, "Number(document.getElementById('keypoints').dataset.lines || 0) > 0 || "
                     "document.getElementById('keypoints').dataset.inliers === '0'")
    page.keyboard.press("+")
    page.keyboard.press("+")
    page.screenshot(path=str(SCREENS / f"review-{width}-zoom-keypoints.png"))
    page.keyboard.press("?")
    assert page.is_visible("[data-testid=help]")
    page.screenshot(path=str(SCREENS / f"review-{width}-help.png"))
    assert page.csp_errors == []
    page.close()


def test_keyboard_confirm_undo_skip_page_no_match_done(browser, server, store, leopard_sightings):
    first, second = leopard_sightings[0].id, leopard_sightings[1].id
    page = open_review(browser, server)
    assert anchor_id(page) == first and queue_text(page) == "46 anchors to review"

    # 2 selects the second candidate: it is the one shown beside the anchor
    page.keyboard.press("2")
    chosen = page.get_attribute("[data-testid=candidate] >> nth=1", "data-image")
    assert "selected" in page.get_attribute("[data-testid=candidate] >> nth=1", "class")
    assert chosen in page.get_attribute("[data-testid=candidate-img]", "src")

    # Enter confirms it; the next anchor comes; u undoes: the verdict is gone and the anchor is back
    page.keyboard.press("Enter")
    wait_anchor(page, second)
    assert [(d.anchor_id, d.candidate_id, d.verdict) for d in store.decisions()] == [(first, chosen, "match")]
    assert queue_text(page) == "45 anchors to review"
    page.keyboard.press("u")
    wait_anchor(page, first)
    assert store.decisions() == [] and queue_text(page) == "46 anchors to review"
    assert store.history()[0].action == "match" and store.history()[0].undone_at is not None

    # s skips: still to review, at the back of the queue; u puts it back in front
    page.keyboard.press("s")
    wait_anchor(page, second)
    assert queue_text(page) == "46 anchors to review" and store.queue(limit=100)[-1] == first
    page.keyboard.press("u")
    wait_anchor(page, first)
    assert store.queue(limit=1) == [first]

    # paging changes nothing: right / j forward, left / b back
    for key, expected in [("ArrowRight", second), ("ArrowLeft", first), ("j", second), ("b", first)]:
        page.keyboard.press(key)
        wait_anchor(page, expected)
        assert queue_text(page) == "46 anchors to review"
    assert store.count("sightings", "reviewed = 1") == 0 and page.inner_text("[data-testid=position]") == "anchor 1 of 46"

    # n: no match with the selected (first) candidate; the anchor stays, that individual leaves the list
    rejected = page.get_attribute("[data-testid=candidate] >> nth=0", "data-individual")
    page.keyboard.press("n")
    wait_until(page, f"!document.querySelector('[data-individual={json.dumps(rejected)}]')")
    assert anchor_id(page) == first and [d.verdict for d in store.decisions()] == ["no_match"]

    # d: none of them (a new individual): out of the queue; u: back
    page.keyboard.press("d")
    wait_anchor(page, second)
    assert queue_text(page) == "45 anchors to review"
    page.keyboard.press("u")
    wait_anchor(page, first)
    assert queue_text(page) == "46 anchors to review"
    assert page.csp_errors == []
    page.close()


def test_zoom_and_pan_move_both_images_together(browser, server):
    page = open_review(browser, server)
    transforms = "[document.getElementById('anchor-img').style.transform, " \
                 "document.getElementById('candidate-img').style.transform]"
    page.keyboard.press("+")
    page.keyboard.press("=")
    a, c = page.evaluate(transforms)
    assert a == c and "scale(1.5625)" in a and page.inner_text("[data-testid=zoom-level]") == "156%"
    view = box(page, "candidate-view")  # the wheel over the candidate zooms both, at the pointer
    page.mouse.move(view["x"] + view["width"] * 0.25, view["y"] + view["height"] * 0.25)
    page.mouse.wheel(0, -100)
    wait_until(page, "!document.getElementById('anchor-img').style.transform.includes('scale(1.5625)')")
    a, c = page.evaluate(transforms)
    assert a == c and "scale(1.953" in a
    # the point under the pointer stays put: 1/4 of the view off-centre, zoomed 1.25 times more, moves the
    # picture by (1.25 - 1) x 1/4 of the view's size
    tx, ty = (float(v) for v in re.match(r"translate\(([-\d.]+)px, ([-\d.]+)px\)", a).groups())
    assert abs(tx - view["width"] / 16) < 1 and abs(ty - view["height"] / 16) < 1
    page.mouse.down()  # a drag on the anchor pans both
    page.mouse.move(view["x"] + 40, view["y"] + 40)
    page.mouse.up()
    page.keyboard.press("Shift+ArrowLeft")
    b, d = page.evaluate(transforms)
    assert b == d and b != a
    page.keyboard.press("0")
    assert page.evaluate(transforms) == ["translate(0px, 0px) scale(1)"] * 2
    page.close()


def test_keypoints_overlay_draws_the_matched_pairs(browser, server, leopard_sightings):
    page = open_review(browser, server)
    truth = {s.id: s.individual for s in leopard_sightings}
    shown = [page.get_attribute(f"[data-testid=candidate] >> nth={i}", "data-image") for i in range(5)]
    same = next(i for i, image in enumerate(shown) if truth.get(image) == leopard_sightings[0].individual)
    page.keyboard.press(str(same + 1))
    wait_until(page, "document.getElementById('candidate-img').complete && "
                     "document.getElementById('candidate-img').naturalWidth > 0")
    page.keyboard.press("k")
    lines = wait_until(page, "Number(document.getElementById('keypoints').dataset.lines || 0)")
    answer = page.request.get(server.url + f"api/match?anchor={leopard_sightings[0].id}&candidate={shown[same]}").json()
    # two crops of one leopard: many geometric inliers (different leopards have about 6 at most)
    assert answer["inliers"] >= 12 and 0 < lines <= len(answer["pairs"]) == min(answer["inliers"], 300)
    assert all(0 <= v <= 1 for pair in answer["pairs"] for v in pair)
    page.keyboard.press("k")
    assert page.is_hidden("[data-testid=keypoints]")
    page.close()


def test_individual_page_search_and_back_by_keyboard(browser, server, store, live, leopard_sightings):
    with_crop, _ = live
    twin = leopard_sightings[5]
    store.record_verdict(with_crop.id, twin.id, "match", 1.0, done=True)
    page = open_review(browser, server, 1920, 1080)

    # / focuses the search; the linked individual comes first; Enter opens it
    page.keyboard.press("/")
    page.keyboard.type(twin.individual)
    page.wait_for_selector("[data-testid=search-result]")
    assert page.inner_text("[data-testid=search-result] >> nth=0").startswith(f"{twin.individual} · 2 images")
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=individual-image]")
    figures = page.locator("[data-testid=individual-image]")
    assert figures.count() == 2
    assert page.inner_text("[data-testid=individual-name]") == twin.individual
    taken = twin.frame_time.replace("T", " ")  # enrolment reads it from the SpotID file name
    assert taken.startswith("2019-") and figures.nth(0).locator("[data-testid=date]").inner_text() == f"date: {taken}"
    assert figures.nth(1).locator("[data-testid=date]").inner_text() == "date: 2026-03-14 05:12:09"
    assert figures.nth(1).locator("[data-testid=camera]").inner_text() == f"camera: {DEVICE}"
    assert figures.nth(1).locator("[data-testid=location]").inner_text() == f"location: {PLACE}"
    assert page.inner_text("[data-testid=first-seen]") == taken
    assert page.inner_text("[data-testid=last-seen]") == "2026-03-14 05:12:09"
    wait_until(page, "[...document.querySelectorAll('figure img')].every((i) => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(SCREENS / "individual-1920.png"))
    assert "match" in page.inner_text("[data-testid=links]")

    # Esc goes back to the review, where it was; a opens the anchor's individual
    page.keyboard.press("Escape")
    page.wait_for_selector("[data-testid=candidate]")
    assert anchor_id(page) == leopard_sightings[0].id
    page.keyboard.press("a")
    page.wait_for_selector("[data-testid=individual-image]")
    assert page.locator("[data-testid=individual-image]").count() == 1
    assert page.csp_errors == []
    page.close()


def test_live_sightings_show_their_crop_or_say_there_is_none(browser, server, live):
    with_crop, without = live
    page = open_review(browser, server, path=f"?anchor={with_crop.id}")
    wait_anchor(page, with_crop.id)
    width = wait_until(page, "document.getElementById('anchor-img').naturalWidth")
    assert max(width, page.evaluate("document.getElementById('anchor-img').naturalHeight")) == 256
    assert page.inner_text("[data-testid=anchor-meta]") == f"2026-03-14 05:12:09 · {DEVICE} · {PLACE}"
    page.goto(server.url + f"?anchor={without.id}")
    wait_anchor(page, without.id)
    assert page.is_hidden("[data-testid=anchor-img]")
    missing = page.locator("[data-testid=anchor-view] .missing")
    assert missing.is_visible() and missing.inner_text() == "No picture: the device sent only its vector."
    page.close()


def test_export_button_downloads_a_zip(browser, server, store, leopard_sightings):
    store.record_verdict(leopard_sightings[0].id, leopard_sightings[1].id, "match", 0.9, done=True)
    page = open_review(browser, server)
    page.select_option("[data-testid=export-format]", "megadetector")
    with page.expect_download() as download:
        page.click("[data-testid=export]")
    with zipfile.ZipFile(download.value.path()) as archive:
        batch = json.loads(archive.read("megadetector.json"))
    assert len(batch["images"]) == 2
    answer = page.request.get(server.url + "api/export?format=spotid")
    assert answer.status == 200 and answer.headers["content-type"] == "application/zip"
    assert "spotid/matches.csv" in zipfile.ZipFile(io.BytesIO(answer.body())).namelist()
    assert page.request.get(server.url + "api/export?format=nope").status == 400
    # Camtrap DP needs a location for every device: "enrolled" has none here, so the answer says so
    refused = page.request.get(server.url + "api/export?format=camtrapdp")
    assert refused.status == 409 and "location" in refused.json()["error"]
    page.close()


NEW_GETS = ["/individual/x", "/static/review.js", "/api/match?anchor=a&candidate=b", "/api/individuals?q=a",
            "/api/individual?id=a", "/api/export?format=spotid", "/api/history", "/api/anchor?after=a"]
NEW_POSTS = ["/api/skip", "/api/done", "/api/undo"]


@pytest.mark.parametrize("method, path", [("GET", p) for p in NEW_GETS] + [("POST", p) for p in NEW_POSTS])
def test_new_routes_need_a_login(browser, server, method, path):
    context = browser.new_context()
    answer = context.request.fetch(server.url.rstrip("/") + path, method=method, max_redirects=0,
                                   data="{}" if method == "POST" else None)
    expected = 303 if method == "GET" and not path.startswith("/api/") else 401
    assert answer.status == expected
    context.close()


@pytest.mark.parametrize("path", NEW_POSTS)
def test_new_posts_need_the_csrf_token_and_a_small_body(browser, server, path):
    page = open_review(browser, server)
    anchor = {"anchor": anchor_id(page)}
    assert page.request.post(server.url + path.lstrip("/"), data=anchor).status == 403
    assert page.request.post(server.url + path.lstrip("/"), data=anchor, headers={CSRF_HEADER: "forged"}).status == 403
    cookie = next(c for c in page.context.cookies() if c["name"] == "trapedge_session")
    headers = {CSRF_HEADER: page.get_attribute("meta[name=csrf-token]", "content"), "Content-Type": "application/json",
               "Cookie": f"trapedge_session={cookie['value']}"}
    page.close()
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    connection.request("POST", path, body=json.dumps({"anchor": "x" * (70 * 1024)}), headers=headers)
    assert connection.getresponse().status == 413  # over review.max_body_bytes (64 KiB)
    connection.close()

"""The review server against hostile requests: each gets a 4xx with a reason (or the login page),
never a 500. The real server on loopback over two SpotID leopard crops; logins as in
tests/test_security.py and tests/test_central_review.py.
"""

from __future__ import annotations

import json
import urllib.parse

import pytest
from test_central_review import PASSWORD, USER, login  # noqa: F401  (login: the reviewer's credentials fixture)
from test_reid_fusion import _with_crop
from test_security import Browser

from central.matching import Matcher
from central.store import CentralStore
from central.web import CSRF_HEADER, ReviewServer

IDS = ("leopard-a", "leopard-b")
QUEUE_POSTS = ("/api/decision", "/api/skip", "/api/done", "/api/next")


@pytest.fixture
def store(tmp_path, data):
    """Two stored sightings with real crops."""
    crops = sorted((data / "reid" / "leopard_spotid" / "crops").glob("*/*.jpg"))[:2]
    store = CentralStore(tmp_path / "central.db")
    for image_id, path in zip(IDS, crops):
        store.add_sighting(_with_crop(image_id, path.read_bytes()))
    yield store
    store.close()


@pytest.fixture
def server(store, login):  # noqa: F811
    server = ReviewServer(store, Matcher(store), port=0, login=login).start()
    yield server
    server.stop()


@pytest.fixture
def reviewer(server) -> tuple[Browser, dict[str, str]]:
    """A logged-in browser and the headers its JSON posts need."""
    browser = Browser(server.url.rstrip("/"))
    assert browser.log_in(USER, PASSWORD)[0] == 303
    return browser, {"Content-Type": "application/json", CSRF_HEADER: browser.csrf_token()}


# --- non-ASCII where HMACs are compared ---------------------------------------------------------


@pytest.mark.parametrize("path, expected", [("/api/anchor", 401), ("/", 303)])
def test_a_session_cookie_with_a_non_ascii_signature_is_only_refused(server, path, expected):
    browser = Browser(server.url.rstrip("/"))
    status, headers, _ = browser.request("GET", path, headers={"Cookie": "trapedge_session=eyJ1IjoiciJ9.\xe9"})
    assert status == expected
    if status == 303:
        assert headers["location"] == "/login"


def test_a_non_ascii_login_form_token_is_only_refused(server):
    browser = Browser(server.url.rstrip("/"))
    browser.login_form_token()  # the pre-login cookie: the form's token is checked against it
    status, _, page = browser.log_in(USER, PASSWORD, token="é")
    assert status == 403 and "The form expired" in page
    assert "trapedge_session" not in {c.name for c in browser.cookies}


def test_a_non_ascii_csrf_token_is_only_refused(reviewer):
    browser, headers = reviewer
    status, _, text = browser.request("POST", "/api/undo", b"", headers | {CSRF_HEADER: "\xe9"})
    assert status == 403 and json.loads(text) == {"error": "missing or wrong CSRF token"}
    assert browser.request("POST", "/api/undo", b"", headers)[0] == 200  # the right token still works


# --- bodies and parameters -----------------------------------------------------------------------


@pytest.mark.parametrize("path", QUEUE_POSTS)
def test_deeply_nested_json_is_refused(reviewer, path):
    browser, headers = reviewer
    status, _, text = browser.request("POST", path, b"[" * 10000, headers)  # under review.max_body_bytes
    assert status == 400 and "nested too deeply" in json.loads(text)["error"]


@pytest.mark.parametrize("path", QUEUE_POSTS)
def test_a_lone_surrogate_in_a_body_is_refused(reviewer, store, path):
    browser, headers = reviewer
    body = json.dumps({"anchor": "\ud800", "candidate": IDS[1], "verdict": "match"}).encode()  # "\\ud800" on the wire
    status, _, text = browser.request("POST", path, body, headers)
    assert status == 400 and "not UTF-8 text" in json.loads(text)["error"]
    assert store.history() == [] and store.decisions() == []


@pytest.mark.parametrize("limit", ["%C2%B2", "%EF%BC%91", "abc", "-5"])  # "²" (int() refuses it), fullwidth "1"
def test_a_limit_that_is_not_ascii_digits_falls_back_to_the_default(reviewer, limit):
    browser, headers = reviewer
    for _ in range(2):
        assert browser.request("POST", "/api/skip", json.dumps({"anchor": IDS[0]}).encode(), headers)[0] == 200
    assert [len(json.loads(browser.request("GET", f"/api/history?limit={q}")[2])) for q in ("1", limit)] == [1, 2]


def test_matching_an_image_with_itself_is_refused(reviewer):
    browser, _ = reviewer
    query = urllib.parse.urlencode({"anchor": IDS[0], "candidate": IDS[0]})
    status, _, text = browser.request("GET", f"/api/match?{query}")
    assert status == 400 and json.loads(text) == {"error": "anchor and candidate are the same image"}
    query = urllib.parse.urlencode({"anchor": IDS[0], "candidate": IDS[1]})
    assert browser.request("GET", f"/api/match?{query}")[0] == 200  # the control: two images are matched

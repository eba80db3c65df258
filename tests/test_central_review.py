"""The review UI end to end: the real server on loopback, driven by headless Chromium (Playwright).

The gallery is the SpotID leopard crops with their edge maps, embedded by the default bundle.
Every page logs in first (login and CSRF refusals are tested in tests/test_security.py).
"""


import numpy as np
import pytest

from central.config import ReviewLogin
from central.matching import Matcher
from central.web import CSRF_HEADER, ReviewServer, hash_password

USER, PASSWORD = "reviewer", "leopard-spots-42"


@pytest.fixture
def store(leopard_store):
    return leopard_store


@pytest.fixture
def login(tmp_path) -> ReviewLogin:
    """Reviewer credentials (few PBKDF2 iterations: the hash format carries its own count)."""
    hashed = tmp_path / "review-password.hash"
    hashed.write_text(hash_password(PASSWORD, iterations=1000) + "\n")
    key = tmp_path / "session.key"
    key.write_bytes(bytes(range(32)))  # a fixed key: sessions survive a server restart
    return ReviewLogin(username=USER, password_hash_file=hashed, session_key_file=key)


@pytest.fixture
def server(store, login):
    server = ReviewServer(store, Matcher(store), port=0, login=login).start()
    yield server
    server.stop()


def logged_in_page(browser, server, bypass_csp: bool = True):
    """A new page, logged in through the login form, showing the review page. ``bypass_csp``: for
    ``wait_for_function``, which evaluates its predicate in the page, as the page's CSP forbids."""
    page = browser.new_page(bypass_csp=bypass_csp)
    page.goto(server.url)
    page.wait_for_selector("[data-testid=login-form]")  # redirected to the login
    page.fill("[data-testid=username]", USER)
    page.fill("[data-testid=password]", PASSWORD)
    page.click("[data-testid=login]")
    page.wait_for_selector("[data-testid=candidate]")
    return page


def csrf(page) -> dict[str, str]:
    """The header a POST outside the page's own script needs."""
    return {CSRF_HEADER: page.get_attribute("meta[name=csrf-token]", "content")}


def cosine_order(sightings, anchor_index: int) -> list[str]:
    """Independent expectation: other images by brute-force cosine, most similar first."""
    vectors = np.stack([s.vector for s in sightings])
    scores = vectors @ vectors[anchor_index]
    scores[anchor_index] = -np.inf
    return [sightings[i].id for i in np.argsort(-scores, kind="stable")]


def candidate_ids(page) -> list[str]:
    return [page.get_attribute(f"[data-testid=candidate] >> nth={i}", "data-individual")
            for i in range(page.locator("[data-testid=candidate]").count())]


def selected_is(page, index: int):
    """Select candidate ``index`` by its key (1-5) and wait until the comparison shows it."""
    page.keyboard.press(str(index + 1))
    image = page.get_attribute(f"[data-testid=candidate] >> nth={index}", "data-image")
    page.wait_for_function(f"document.getElementById('candidate-img').src.includes('{image}')")


def test_review_flow_confirm_no_match_toggle_zoom_resume_conflict(server, store, browser, leopard_sightings):
    sightings = leopard_sightings
    page = logged_in_page(browser, server)

    # the oldest image is the anchor, with 5 candidate individuals (all unlinked: 5 images), most probable first
    assert page.get_attribute("[data-testid=anchor-name]", "data-id") == sightings[0].id
    shown = candidate_ids(page)
    assert len(shown) == 5 and set(shown) <= set(cosine_order(sightings, 0)) and sightings[0].id not in shown
    assert page.inner_text("[data-testid=queue]") == "44 anchors to review"
    confidences = page.locator("[data-testid=confidence]").all_inner_texts()
    assert len(confidences) == 5 and all(c.endswith("%") for c in confidences)
    assert [int(c[:-1]) for c in confidences] == sorted((int(c[:-1]) for c in confidences), reverse=True)

    # edge maps: every image switches to its edge map, and the edge JPEG really loads
    page.check("[data-testid=toggle-edges]")
    assert page.get_attribute("[data-testid=anchor-img]", "src").endswith("/edge")
    page.wait_for_function("document.querySelector('[data-testid=anchor-img]').naturalWidth > 0")
    page.uncheck("[data-testid=toggle-edges]")
    assert page.get_attribute("[data-testid=anchor-img]", "src").endswith("/crop")

    # zoom: the wheel over the anchor scales both images alike; Fit puts them back
    anchor_box = page.locator("[data-testid=anchor-view]").bounding_box()
    page.mouse.move(anchor_box["x"] + anchor_box["width"] / 2, anchor_box["y"] + anchor_box["height"] / 2)
    page.mouse.wheel(0, -100)
    page.wait_for_function("document.getElementById('anchor-img').style.transform.includes('scale(1.25)')")
    assert page.evaluate("document.getElementById('candidate-img').style.transform").endswith("scale(1.25)")
    page.click("[data-testid=zoom-reset]")
    assert page.evaluate("document.getElementById('anchor-img').style.transform") == "translate(0px, 0px) scale(1)"

    # "No match" on the first candidate: stored, and the list refills without it
    rejected = candidate_ids(page)[0]
    page.click("[data-testid=no-match]")
    page.wait_for_function(f"!document.querySelector('[data-individual=\"{rejected}\"]')")
    assert rejected not in candidate_ids(page) and len(candidate_ids(page)) == 5
    assert [(d.candidate_id, d.verdict) for d in store.decisions()] == [(rejected, "no_match")]

    # "Confirm" on the candidate of the true individual links them and moves on
    truth = {s.id: s.individual for s in sightings}
    shown = candidate_ids(page)
    same = next(i for i, c in enumerate(shown) if truth[c] == sightings[0].individual)
    selected_is(page, same)
    page.click("[data-testid=confirm]")
    page.wait_for_function(f"document.querySelector('[data-testid=anchor-name]').dataset.id === '{sightings[1].id}'")
    assert store.decisions()[-1].verdict == "match" and store.decisions()[-1].candidate_id == shown[same]
    # the new anchor's candidates never include its own individual
    assert sightings[1].id not in candidate_ids(page)

    # "Next" only pages (the queue keeps its length); "New individual" takes the anchor out of the queue;
    # a reload resumes at the same place
    page.click("[data-testid=next]")
    page.wait_for_function(f"document.querySelector('[data-testid=anchor-name]').dataset.id === '{sightings[2].id}'")
    assert page.inner_text("[data-testid=queue]") == "43 anchors to review"
    page.click("[data-testid=back]")
    page.wait_for_function(f"document.querySelector('[data-testid=anchor-name]').dataset.id === '{sightings[1].id}'")
    page.click("[data-testid=done]")
    page.wait_for_function(f"document.querySelector('[data-testid=anchor-name]').dataset.id === '{sightings[2].id}'")
    page.reload()
    page.wait_for_selector("[data-testid=candidate]")
    assert page.get_attribute("[data-testid=anchor-name]", "data-id") == sightings[2].id
    assert page.inner_text("[data-testid=queue]") == "42 anchors to review"  # anchors 0 (confirmed) and 1 (done)

    # a confirmed link that joins a "no match" pair is shown as a conflict
    answer = page.request.post(server.url + "api/decision",
                               data={"anchor": rejected, "candidate": shown[same], "verdict": "match"},
                               headers=csrf(page))
    assert answer.ok
    page.reload()
    page.wait_for_selector("[data-testid=conflict]")
    text = page.inner_text("[data-testid=conflict]")
    assert sightings[0].id in text and rejected in text
    page.close()


def test_review_resumes_after_a_server_restart(store, browser, leopard_sightings, login):
    first = ReviewServer(store, Matcher(store), port=0, login=login).start()
    page = logged_in_page(browser, first)
    page.click("[data-testid=done]")
    page.wait_for_function(
        f"document.querySelector('[data-testid=anchor-name]').dataset.id === '{leopard_sightings[1].id}'")
    first.stop()
    second = ReviewServer(store, Matcher(store), port=0, login=login).start()
    try:
        page.goto(second.url)
        page.wait_for_selector("[data-testid=candidate]")
        assert page.get_attribute("[data-testid=anchor-name]", "data-id") == leopard_sightings[1].id
    finally:
        page.close()
        second.stop()


@pytest.mark.parametrize("body, status", [
    ({"anchor": "nope", "candidate": "nope2", "verdict": "match"}, 400),
    ({"verdict": "maybe"}, 400),
])
def test_bad_decisions_are_refused(server, browser, body, status):
    page = logged_in_page(browser, server)
    answer = page.request.post(server.url + "api/decision", data=body, headers=csrf(page))
    assert answer.status == status
    page.close()


def test_missing_edge_map_is_404(server, browser, store):
    sighting = store.sightings()[0]
    page = logged_in_page(browser, server)
    assert page.request.get(server.url + f"api/image/{sighting.id}/crop").status == 200
    assert page.request.get(server.url + "api/image/unknown/crop").status == 404
    page.close()


def test_the_page_runs_under_its_own_content_security_policy(browser, server):
    """The page's own script file renders the candidates with the CSP enforced (no bypass), and the
    page's policy allows no inline script or style."""
    page = logged_in_page(browser, server, bypass_csp=False)
    errors = []
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.reload()
    page.wait_for_selector("[data-testid=candidate]")
    assert errors == []
    policy = page.request.get(server.url).headers["content-security-policy"]
    assert "script-src 'self';" in policy and "style-src 'self';" in policy and "inline" not in policy
    page.close()

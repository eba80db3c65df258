"""Shared fixtures: the real data folder and the default model bundle."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TRAPEDGE_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data() -> Path:
    """``../shared/data`` (or $TRAPEDGE_DATA); the suite needs it."""
    if not DATA.is_dir():
        pytest.fail(f"real test data not found at {DATA}: check out shared/ beside the project or set TRAPEDGE_DATA")
    return DATA


@pytest.fixture(scope="session")
def pretrained() -> dict[str, Path]:
    """The pretrained weights in ``models/`` (fetched and sha256-checked like `make models`)."""
    from train.pretrained import DEFAULT_KEYS, fetch

    return {key: fetch(key, ROOT / "models") for key in DEFAULT_KEYS}


@pytest.fixture(scope="session")
def bundle_dir(data: Path, pretrained: dict[str, Path], tmp_path_factory) -> Path:
    """The default bundle signed with the development key, which the default edge config trusts:
    ``bundles/default`` if `make export` built and signed it, a signed copy of an unsigned one (the
    built bundle is left as it is), else built now."""
    from export.signing import development_key, load_private_key, sign_bundle

    built = ROOT / "bundles" / "default"
    if (built / "manifest.json").is_file():
        if _signed_by_development_key(built):
            return built
        copy = Path(shutil.copytree(built, tmp_path_factory.mktemp("bundles") / "default"))
        sign_bundle(copy, load_private_key(development_key()))
        return copy
    from export.build import ExportOptions, build_bundle
    from export.cli import default_models

    out = tmp_path_factory.mktemp("bundles") / "default"
    build_bundle(default_models(ROOT / "models"), ExportOptions(out=out, data=data))
    return out


def _signed_by_development_key(bundle: Path) -> bool:
    from common.signing import DEV_PUBLIC_KEY
    from edge.runtime.bundle import BundleError, BundleTrust, load_bundle

    try:
        load_bundle(bundle, BundleTrust((str(DEV_PUBLIC_KEY),)))
    except BundleError:
        return False
    return True


@pytest.fixture
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the (signed) bundle that a test may tamper with."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


@pytest.fixture
def mosquitto_factory(tmp_path: Path):
    """Start brokers (``users=``, ``persistence=`` as in ``edge/local_broker.py``); all end at teardown."""
    from common.local_broker import BrokerMissing, Mosquitto

    brokers: list[Mosquitto] = []

    def start(**options) -> Mosquitto:
        try:
            broker = Mosquitto(tmp_path / f"mosquitto{len(brokers)}", **options)
        except BrokerMissing as err:
            pytest.fail(str(err))
        brokers.append(broker)
        return broker.start()

    yield start
    for broker in brokers:
        broker.stop(timeout=5)


@pytest.fixture
def mosquitto(mosquitto_factory):
    """A running anonymous Mosquitto on 127.0.0.1 and a free port (``.host``, ``.port``)."""
    return mosquitto_factory()


@pytest.fixture(scope="session")
def leopard_sightings(data: Path, bundle_dir: Path):
    """Central's sightings of the 44 SpotID leopard crops (with their edge maps), embedded by the bundle."""
    from central.enroll import embed_images, folder_images, open_embedder, sightings_of

    root = data / "reid" / "leopard_spotid" / "crops"
    images = folder_images(root)
    embedder, model = open_embedder(bundle_dir)
    return sightings_of(*embed_images(embedder, images), model, root,
                        data / "reid" / "leopard_spotid" / "edges")


@pytest.fixture
def leopard_store(tmp_path: Path, leopard_sightings):
    """A fresh central store holding the leopard sightings."""
    from central.store import CentralStore

    store = CentralStore(tmp_path / "central.db")
    for sighting in leopard_sightings:
        store.add_sighting(sighting)
    yield store
    store.close()


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A PostgreSQL with pgvector in a temp dir on a free loopback port, one per test module (skips
    where it cannot start)."""
    from central.postgres import LocalPostgres, PostgresMissing

    try:
        server = LocalPostgres(tmp_path_factory.mktemp("postgres")).start()
    except (PostgresMissing, RuntimeError) as exc:
        pytest.skip(f"PostgreSQL with pgvector cannot start here: {exc}")
    yield server
    server.stop()


CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's), one per test module, for the review pages' browser tests."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()

"""The pgvector gallery against a real PostgreSQL started in a temp dir on a free loopback port."""

from pathlib import Path

import numpy as np
import psycopg
import pytest

from central.enroll import embed_images, folder_images, open_embedder, sightings_of
from central.gallery import NumpyGallery
from central.matching import Matcher
from central.store import CentralStore


@pytest.fixture(scope="module")
def lions(data, bundle_dir):
    root = data / "reid" / "lion" / "val"
    images = folder_images(root)
    embedder, model = open_embedder(bundle_dir)
    return sightings_of(*embed_images(embedder, images), model, root)


def test_pgvector_search_agrees_with_exact_numpy(postgres, lions):
    from central.gallery_pgvector import PgVectorGallery

    vectors = np.stack([s.vector for s in lions])
    ids = [s.id for s in lions]
    pg = PgVectorGallery(postgres.dsn, "test_agree", vectors.shape[1])
    pg.add(ids, vectors)
    pg.add(ids[:10], vectors[:10])  # already there: ignored
    exact = NumpyGallery(vectors.shape[1])
    exact.add(ids, vectors)
    assert len(pg) == len(lions)
    for query in vectors[::15]:
        got, want = pg.search(query, 5), exact.search(query, 5)
        assert [h.id for h in got] == [h.id for h in want]
        assert np.allclose([h.cosine for h in got], [h.cosine for h in want], atol=1e-5)
    assert len(pg.search(vectors[0], 1200)) == len(lions)  # deeper than ef_search: exact scan
    pg.close()


def test_matcher_on_pgvector_proposes_what_numpy_proposes(postgres, lions, tmp_path):
    from central.gallery_pgvector import pgvector_factory

    store = CentralStore(tmp_path / "central.db")
    for s in lions:
        store.add_sighting(s)
    # the galleries are compared (cosine order); local matching on top runs on the same shortlist either way
    on_pg = Matcher(store, factory=pgvector_factory(postgres.dsn, "test_matcher"), local_matching=False)
    in_memory = Matcher(store, local_matching=False)
    for anchor in lions[::20]:
        assert [c.image_id for c in on_pg.propose(anchor)] == [c.image_id for c in in_memory.propose(anchor)]
    store.close()


def test_server_starts_from_an_installation_only_root_can_reach(tmp_path):
    """A venv in root's private home (mode 700): the postgres user cannot run its binaries, so they
    are copied where it can (found by the fresh-machine check, where the clone lived in /root)."""
    import shutil

    from central.postgres import LocalPostgres, find_bindir, reachable_by_others

    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    install = find_bindir().parent  # a wheel's layout: <site>/<package>/<install>, libraries in <site>/<package>.libs
    site = private / "venv" / "site-packages"
    bindir = Path(shutil.copytree(install, site / install.parent.name / install.name, symlinks=True)) / "bin"
    libs = install.parent.with_name(install.parent.name + ".libs")
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name, symlinks=True)
    assert not reachable_by_others(bindir)
    server = LocalPostgres(tmp_path / "pg", bindir=bindir).start()
    try:
        assert reachable_by_others(server.bindir)
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            assert conn.execute("SELECT '[1,2]'::vector <-> '[1,3]'::vector").fetchone() == (1.0,)
    finally:
        server.stop()

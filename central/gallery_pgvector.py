"""The ``Gallery`` seam on PostgreSQL + pgvector: one table per embedding model and dimension, an HNSW cosine index.

For deployments whose gallery outgrows one machine's memory, or that already run PostgreSQL.
Vectors are loaded with binary ``COPY`` (fast bulk enrolment) and searched with ``<=>`` (cosine
distance) through the HNSW index; ``hnsw.ef_search`` follows the requested depth so a search for
``k`` returns ``k`` rows. Deeper than ``gallery.INDEXED_DEPTH`` (pgvector's ``ef_search`` ceiling) the search is
exact (a sequential scan).
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import psycopg

from central.config import PGVECTOR_MAX_DIM
from central.gallery import INDEXED_DEPTH, Hit

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)


def table_name(base: str, model: str, dim: int) -> str:
    """``<base>_<10 hex of sha1(model)>_<dim>``: one table per model and dimension, a safe SQL identifier."""
    return f"{base}_{hashlib.sha1(model.encode()).hexdigest()[:10]}_{int(dim)}"


def copy_rows(ids: list[str], vectors: np.ndarray) -> bytes:
    """Binary COPY data for ``(id text, embedding vector)`` rows."""
    dim = vectors.shape[1]
    head = struct.pack("!ihh", 4 + 4 * dim, dim, 0)
    big_endian = np.ascontiguousarray(vectors, dtype=">f4")
    parts = [COPY_HEADER]
    for sid, row in zip(ids, big_endian):
        raw = sid.encode()
        parts += [struct.pack("!hi", 2, len(raw)), raw, head, row.tobytes()]
    parts.append(struct.pack("!h", -1))
    return b"".join(parts)


def literal(vector: np.ndarray) -> str:
    """The text form ``[x,y,...]`` of one query vector."""
    return "[" + ",".join(f"{v:.7g}" for v in np.asarray(vector, np.float32).ravel()) + "]"


class PgVectorGallery:
    """One model's vectors of one dimension in one table.

    Args:
        dsn: libpq connection string.
        table: the table (see ``table_name``).
        dim: vector dimension.
        index: build the HNSW index now (bulk loads are faster without it; call ``create_index`` after).
        ef_search: the least HNSW candidate list per search (more: better recall, slower; at 1M
            256-d vectors 40 gave recall@5 0.76 against exact search).
    """

    def __init__(self, dsn: str, table: str, dim: int, index: bool = True, ef_search: int = 100):
        self.table, self.dim, self.ef_search = table, int(dim), int(ef_search)
        if not 1 <= self.dim <= PGVECTOR_MAX_DIM:
            raise ValueError(f"pgvector's HNSW index takes 1 to {PGVECTOR_MAX_DIM} dimensions, not {self.dim}: "
                             "keep ingest.max_vector_dim at most that, or use the numpy gallery")
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id text PRIMARY KEY, embedding vector({self.dim}) NOT NULL)")
        if index:
            self.create_index()

    def create_index(self, m: int = 16, ef_construction: int = 64, work_mem: str = "2GB") -> None:
        """The HNSW cosine index (kept up to date by later inserts). The build is fast only while
        the graph fits in ``work_mem`` (about 1.3 kB per 256-d vector at m = 16)."""
        self.conn.execute(f"SET maintenance_work_mem = '{work_mem}'")
        self.conn.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_hnsw ON {self.table} "
                          f"USING hnsw (embedding vector_cosine_ops) WITH (m = {m}, ef_construction = {ef_construction})")

    def __len__(self) -> int:
        return self.conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]

    def add(self, ids: list[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(f"CREATE TEMP TABLE incoming (LIKE {self.table}) ON COMMIT DROP")
            with cursor.copy("COPY incoming (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.write(copy_rows(ids, vectors))
            cursor.execute(f"INSERT INTO {self.table} SELECT DISTINCT ON (id) * FROM incoming ON CONFLICT (id) DO NOTHING")

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        if k <= 0:
            return []
        with self.conn.transaction(), self.conn.cursor() as cursor:
            if k > INDEXED_DEPTH:
                cursor.execute("SET LOCAL enable_indexscan = off")
            else:
                cursor.execute(f"SET LOCAL hnsw.ef_search = {max(self.ef_search, k)}")
            rows = cursor.execute(
                f"SELECT id, 1 - (embedding <=> %(q)s::vector) FROM {self.table} "
                f"ORDER BY embedding <=> %(q)s::vector LIMIT %(k)s", {"q": literal(query), "k": k}).fetchall()
        return [Hit(sid, float(cosine)) for sid, cosine in rows]

    def close(self) -> None:
        self.conn.close()


def pgvector_factory(dsn: str, base: str = "trapedge_gallery", ef_search: int = 100):
    """A ``GalleryFactory`` for ``central.matching.Matcher``: one table per model and dimension."""

    def make(model: str, dim: int) -> PgVectorGallery:
        return PgVectorGallery(dsn, table_name(base, model, dim), dim, ef_search=ef_search)

    return make

"""``trapedge central bench``: central ingest rate and top-5 search latency.

* ingest: ``--messages`` embedding messages (QoS 1) published by a device client through a real
  Mosquitto on loopback into ``CentralService`` (SQLite store); reports messages/s until every
  one is stored, and until every one is searchable in its gallery.
* search: galleries of ``--sizes`` vectors of the bundle's dimension (default 1280), drawn as a
  mixture of 2,000 clusters (unit centre + noise, so that neighbours are structured as in real
  galleries); reports the median and 95th percentile latency of the search the matcher makes for a
  top-5 (depth 28) with exact numpy and, for sizes up to ``--pg-max``, pgvector's HNSW index
  (plus its build time and recall@5 against exact search). Queries are fresh draws from the
gallery's clusters, like a new image of a known individual.
* matching (``--matching``): the whole top-5 proposal at each size: search, shortlist of 600, local
  matching (RootSIFT + RANSAC) and fusion. The gallery's vectors are the clustered ones above; its
  local features are those of the real crops under ``--data`` (SpotID leopards and lion val, 190
  crops) repeated over the gallery, held in memory as the matcher's cache holds them; queries are
  real crops' features. Reports median and p95 milliseconds per query.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from central.fusion import SHORTLIST

SEARCH_DEPTH = 4 * 5 + 8  # what Matcher asks the gallery for a top-5


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 2000, noise: float = 0.6) -> np.ndarray:
    """``n`` L2-normalised float32 vectors around ``clusters`` random centres (made in chunks)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 50_000):
        stop = min(n, start + 50_000)
        chunk = centres[rng.integers(0, clusters, stop - start)]
        chunk += noise / np.sqrt(dim) * rng.standard_normal(chunk.shape).astype(np.float32)
        out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def latencies(search, queries: np.ndarray) -> dict:
    """Median and p95 milliseconds of ``search(query)`` over the queries (after one warm-up)."""
    search(queries[0])
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q)
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(float(np.median(times)), 3), "p95_ms": round(float(np.percentile(times, 95)), 3)}


def bench_numpy(vectors: np.ndarray, queries: np.ndarray) -> dict:
    from central.gallery import NumpyGallery

    gallery = NumpyGallery(vectors.shape[1])
    gallery.add([str(i) for i in range(len(vectors))], vectors)
    return latencies(lambda q: gallery.search(q, SEARCH_DEPTH), queries)


def bench_pgvector(dsn: str, vectors: np.ndarray, queries: np.ndarray) -> dict:
    from central.gallery import NumpyGallery
    from central.gallery_pgvector import PgVectorGallery

    table = f"bench_{len(vectors)}"
    gallery = PgVectorGallery(dsn, table, vectors.shape[1], index=False)
    gallery.conn.execute(f"TRUNCATE {table}")
    ids = [str(i) for i in range(len(vectors))]
    start = time.perf_counter()
    for s in range(0, len(ids), 20_000):
        gallery.add(ids[s : s + 20_000], vectors[s : s + 20_000])
    loaded = time.perf_counter() - start
    gallery.create_index()
    built = time.perf_counter() - start - loaded
    exact = NumpyGallery(vectors.shape[1])
    exact.add(ids, vectors)
    recall = np.mean([len({h.id for h in gallery.search(q, 5)} & {h.id for h in exact.search(q, 5)}) / 5
                      for q in queries])
    return {**latencies(lambda q: gallery.search(q, SEARCH_DEPTH), queries), "load_s": round(loaded, 1),
            "index_build_s": round(built, 1), "recall_at_5": round(float(recall), 4)}


def bench_matching(vectors: np.ndarray, queries: np.ndarray, data: Path, shortlist: int = SHORTLIST) -> dict:
    """Milliseconds of a full fused proposal (search + local matching of the shortlist + fusion)."""
    from central.enroll import folder_images, jpeg_of
    from central.fusion import PRIOR, fuse
    from central.gallery import NumpyGallery
    from central.local_features import extract, inliers

    crops = [i.path for root in ("reid/leopard_spotid/crops", "reid/lion/val") for i in folder_images(data / root)]
    features = [extract(jpeg_of(path)) for path in crops]
    gallery = NumpyGallery(vectors.shape[1])
    gallery.add([str(i) for i in range(len(vectors))], vectors)

    def propose(q: int) -> None:
        hits = gallery.search(queries[q], 2 * shortlist)
        mine = features[q % len(features)]
        fuse(hits, lambda i: str(int(i) // 5), PRIOR, lambda i: inliers(mine, features[int(i) % len(features)]),
             shortlist, budget_s=60)

    return {**latencies(propose, np.arange(len(queries))), "shortlist": shortlist, "real_crops": len(features)}


def bench_ingest(count: int, dim: int) -> dict:
    """Messages/s through a real Mosquitto into the central service."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from central.config import BrokerConfig, CentralConfig, ReviewConfig, StoreConfig
    from central.service import CentralService
    from common.local_broker import Mosquitto
    from edge.wire import messages

    work = Path(tempfile.mkdtemp(prefix="central-bench-"))
    broker = Mosquitto(work / "broker")
    with broker.config.open("a") as handle:  # a burst larger than Mosquitto's default 1,000-message queue
        handle.write("max_queued_messages 0\nmax_inflight_messages 100\n")
    broker.start()
    config = CentralConfig(broker=BrokerConfig(host=broker.host, port=broker.port),
                           store=StoreConfig(path=work / "central.db"), review=ReviewConfig(enabled=False))
    service = CentralService(config)
    service.start()
    try:
        service.subscriber.subscribed.wait(10)
        vectors = clustered(count, dim, seed=1)
        box = messages.Box((0.1, 0.1, 0.5, 0.5), 0.9, "leopard", 0.9, "classifier")
        bodies = [messages.EmbeddingMessage(
            device="cam-bench", event_id=f"ev-{i}", source_id="sd", frame_time=datetime(2024, 1, 1, tzinfo=timezone.utc),
            box=box, vector=v, model="bench", model_version="1").encode() for i, v in enumerate(vectors)]
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-device")
        client.max_inflight_messages_set(100)
        client.connect(broker.host, broker.port)
        client.loop_start()
        start = time.perf_counter()
        infos = [client.publish("trapedge/cam-bench/embedding", body, qos=1) for body in bodies]
        for info in infos:
            info.wait_for_publish(60)
        stored = _wait(lambda: service.store.count("sightings") >= count, start)
        indexed = _wait(lambda: sum(len(g) for g in service.matcher.galleries.values()) >= count, start)
        client.disconnect()
        client.loop_stop()
    finally:
        service.stop()
        broker.stop()
    return {"messages": count, "payload_bytes": len(bodies[0]), "stored_per_s": round(count / stored, 1),
            "indexed_per_s": round(count / indexed, 1)}


def _wait(condition, start: float, timeout: float = 600) -> float:
    while not condition():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("benchmark did not finish")
        time.sleep(0.01)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trapedge central bench", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--pg-max", type=int, default=100_000, help="largest gallery loaded into pgvector")
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--matching", action="store_true", help="time the whole fused proposal (needs --data)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report: dict = {"dim": args.dim, "search_depth": SEARCH_DEPTH}
    if not args.skip_ingest:
        report["ingest"] = bench_ingest(args.messages, args.dim)
        print("ingest", report["ingest"], flush=True)
    report["search"] = search_report(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def search_report(args) -> list[dict]:
    from central.postgres import LocalPostgres, PostgresMissing

    try:
        postgres = LocalPostgres(Path(tempfile.mkdtemp(prefix="central-bench-pg-"))).start()
    except (PostgresMissing, RuntimeError) as exc:
        print(f"pgvector not benchmarked: {exc}")
        postgres = None
    rows = []
    try:
        for size in args.sizes:
            both = clustered(size + args.queries, args.dim)  # queries: new images of known clusters
            vectors, queries = both[:size], both[size:]
            del both
            row = {"size": size, "numpy": bench_numpy(vectors, queries)}
            if args.matching:
                row["fused_top5"] = bench_matching(vectors, queries, args.data)
            if postgres is not None and size <= args.pg_max:
                row["pgvector_hnsw"] = bench_pgvector(postgres.dsn, vectors, queries)
            print("search", row, flush=True)
            rows.append(row)
            del vectors
    finally:
        if postgres is not None:
            postgres.stop()
    return rows


if __name__ == "__main__":
    raise SystemExit(main())

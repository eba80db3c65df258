"""``trapedge suppress list|release``: the places whose repeated boxes no longer raise events, and undoing one.

Reads and writes the device's store (``store.path`` of ``--config``); a running service reads a release
back before its next frame.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config_loader import ConfigError, load_config
from edge.app.config import EdgeConfig
from edge.events.suppression import Cluster
from edge.storage.store import Store, StoreError

DEFAULT_CONFIG = Path("/etc/trapedge/edge.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"edge.yaml (default {DEFAULT_CONFIG})")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", parents=[common], help="every cluster: id, source, box, events, first/last seen, state")
    release = actions.add_parser("release", parents=[common],
                                 help="let a suppressed cluster's boxes count again (until new evidence)")
    release.add_argument("id", help="cluster id, as `trapedge suppress list` shows it")


def describe(cluster: Cluster) -> str:
    """One line of ``list``."""
    box = " ".join(f"{v:.3f}" for v in cluster.box)
    return (f"{cluster.id}  {cluster.source_id:<10} {box}  {cluster.events:>6}  {cluster.day_events:>3}/"
            f"{cluster.night_events:<3}  {cluster.first_seen.isoformat(timespec='seconds')}  "
            f"{cluster.last_seen.isoformat(timespec='seconds')}  {cluster.state}")


HEADER = (f"{'id':<12}  {'source':<10} {'box x1 y1 x2 y2 (share of frame)':<27}  {'events':>6}  day/night  "
          f"{'first seen':<25}  {'last seen':<25}  state")


def _list(store: Store) -> int:
    clusters = store.clusters()
    if not clusters:
        print(f"no clusters in {store.path}: no box has recurred yet")
        return 0
    print(HEADER)
    for cluster in clusters:
        print(describe(cluster))
    suppressed = sum(c.suppressed for c in clusters)
    print(f"{len(clusters)} clusters, {suppressed} suppressed")
    return 0


def _release(store: Store, cluster_id: str, config: EdgeConfig) -> int:
    released = store.release_cluster(cluster_id)
    if released is None:
        print(f"suppress release: no cluster {cluster_id!r} in {store.path} (`trapedge suppress list` shows them)",
              file=sys.stderr)
        return 1
    rule = config.suppression
    print(f"released {released.id} ({released.source_id}): its boxes raise events again; suppressed again only "
          f"after {rule.min_events} new events spanning {rule.min_span_hours:g} h")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, EdgeConfig)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    path = config.store.path
    if not path.exists():
        print(f"suppress {args.action}: no store at {path} (store.path of {args.config}): the service has not run",
              file=sys.stderr)
        return 1
    try:
        store = Store(path)
    except StoreError as exc:
        print(f"suppress {args.action}: {exc}", file=sys.stderr)
        return 1
    try:
        return _list(store) if args.action == "list" else _release(store, args.id, config)
    finally:
        store.close()

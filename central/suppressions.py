"""``trapedge central suppressions``: the places each device suppresses as repeated static false positives.

Each device lists, in the ``health`` of its status message, the suppressed places seen in most events
(at most 20, checked against ``common/schemas/status.schema.json`` at ingest); this reads every
device's latest ``online`` status from the central store.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from central.store import CentralStore, StoreError


@dataclass(frozen=True)
class DeviceSuppression:
    """One suppressed place of one device, as its latest status reported it."""

    device: str
    id: str
    source: str
    box: list[float]
    events: int
    since: str
    reported_at: str


def device_suppressions(store: CentralStore) -> tuple[list[DeviceSuppression], dict[str, int]]:
    """Every device's suppressed places (from its latest status), and per device how many it has in
    all (``suppressed_clusters``: the status lists at most 20)."""
    places, totals = [], {}
    for device, (at, payload) in store.latest_status().items():
        health = payload.get("health") or {}
        totals[device] = int(health.get("suppressed_clusters", 0))
        places += [DeviceSuppression(device, s["id"], s["source"], s["box"], s["events"], s["since"], at)
                   for s in health.get("suppressions", [])]
    return places, totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trapedge central suppressions", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="central.yaml (its store is read)")
    parser.add_argument("--json", action="store_true", help="one JSON object: devices and their places")
    args = parser.parse_args(argv)
    from central.config import CentralConfig
    from common.config_loader import ConfigError, load_config

    try:
        config = load_config(args.config, CentralConfig)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        store = CentralStore(config.store.path)
    except StoreError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    try:
        places, totals = device_suppressions(store)
    finally:
        store.close()
    if args.json:
        print(json.dumps({"devices": totals, "suppressions": [asdict(p) for p in places]}, indent=1))
        return 0
    if not totals:
        print("no device has sent an online status yet")
    for device, total in totals.items():
        print(f"{device}: {total} suppressed")
        for p in (p for p in places if p.device == device):
            print(f"  {p.id}  {p.source:<10} {' '.join(f'{v:.3f}' for v in p.box)}  {p.events:>5} events  "
                  f"since {p.since}  (status of {p.reported_at})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

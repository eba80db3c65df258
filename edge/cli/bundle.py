"""``trapedge bundle install|list|rollback``: model bundle updates with a smoke check and rollback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config_loader import load_config
from edge.app.bundle_install import DEFAULT_ROOT, BundleRoot, InstallError, frames_from, install, list_versions, rollback
from edge.app.config import EdgeConfig, command_defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=None,
                        help=f"bundles root (default: the parent of bundle.path with --config, else {DEFAULT_ROOT})")
    parser.add_argument("--config", type=Path, default=None, help="edge.yaml: default root and store")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("install", help="stage, verify, smoke-check and switch to a bundle (dir or .tar[.gz])")
    add.add_argument("path", type=Path, help="bundle directory or .tar/.tar.gz of one")
    add.add_argument("--frames", type=Path, default=None, help="folder of images for the smoke check")
    add.add_argument("--store", type=Path, default=None,
                     help="the service's SQLite store: its most recent frames are the smoke frames (default: "
                          "store.path of --config)")
    add.add_argument("--precision", choices=["int8", "fp16", "fp32"], default=None,
                     help="what the smoke check runs (default: bundle.precision of --config, else int8)")
    add.add_argument("--allow-no-frames", action="store_true",
                     help="install even when no smoke frames are available (models are built, not run)")
    actions.add_parser("list", help="installed versions, with current and previous marked")
    actions.add_parser("rollback", help="swap current and previous")


def _config(path: Path | None) -> EdgeConfig | None:
    return load_config(path, EdgeConfig) if path is not None else None


def _smoke_config(args: argparse.Namespace, config: EdgeConfig | None) -> EdgeConfig:
    """The device's config (or the defaults) with ``--precision``: the smoke check runs what the service will."""
    config = config or command_defaults()
    if args.precision:
        bundle = {**config.bundle.model_dump(mode="json"), "precision": args.precision}
        config = EdgeConfig.model_validate({**config.model_dump(mode="json"), "bundle": bundle})
    return config


def _do_install(root: BundleRoot, args: argparse.Namespace, config: EdgeConfig | None) -> int:
    store = args.store or (config.store.path if config else None)
    smoke = _smoke_config(args, config)
    result = install(root, args.path, frames_from(args.frames, store), smoke, allow_no_frames=args.allow_no_frames)
    print(f"installed {result.new} ({smoke.bundle.precision}): current {result.old or '(none)'} -> {result.new}")
    print(result.smoke.describe())
    if result.old:
        print(f"previous -> {result.old} (`trapedge bundle rollback` goes back)")
    print("restart the service to load it: sudo systemctl restart trapedge")
    return 0


def _do_list(root: BundleRoot) -> int:
    rows = list_versions(root)
    if not rows:
        print(f"no bundles installed under {root.path}")
    for name, marks in rows:
        print(f"{'*' if 'current' in marks else ' '} {name}{f'  ({marks})' if marks else ''}")
    return 0


def _do_rollback(root: BundleRoot) -> int:
    was, now = rollback(root)
    print(f"rolled back: current {was} -> {now}; previous -> {was}")
    print("restart the service to load it: sudo systemctl restart trapedge")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        config = _config(args.config)
        root = BundleRoot(args.root or (config.bundle.path.parent if config else DEFAULT_ROOT))
        if args.action == "install":
            return _do_install(root, args, config)
        if args.action == "list":
            return _do_list(root)
        return _do_rollback(root)
    except InstallError as exc:
        print(f"bundle {args.action} refused: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # config errors, permissions: one line, not a traceback
        print(f"bundle {args.action} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1

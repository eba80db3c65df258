"""Options shared by the commands that run models: which bundle, precision and backend, or a device's
edge.yaml, turned into the one ``EdgeConfig`` the factory builds every pipeline from."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from common.config_loader import ConfigError, ConfigProblem, dotted, load_config
from common.logs import escape_controls
from edge.app.config import EdgeConfig

DEFAULT_BUNDLE = Path("bundles/default")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--bundle``, ``--precision``, ``--backend``, ``--threads`` and ``--frames-at-once``."""
    parser.add_argument("--config", type=Path, default=None,
                        help="a device's edge.yaml: run with its bundle, preprocessing, detection and privacy "
                             "settings (the options below override its bundle settings)")
    parser.add_argument("--bundle", type=Path, default=None, help="model bundle directory (default bundles/default)")
    parser.add_argument("--precision", choices=["int8", "fp16", "fp32"], default=None, help="default int8")
    parser.add_argument("--backend", default=None, help="inference backend (onnxruntime, tensorrt)")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime intra-op threads (0 = the cores shared out among the frames in flight)")
    parser.add_argument("--frames-at-once", type=int, default=None, metavar="N",
                        help="frames whose models run at the same time (0 = auto: 2 on 2+ cores and 1 GB+, else 1)")


def _bundle_settings(args: argparse.Namespace, bundle: dict[str, Any]) -> dict[str, Any]:
    """``bundle:`` of the config (or empty) with the command-line options applied."""
    bundle = dict(bundle)
    if args.bundle is not None or "path" not in bundle:
        bundle["path"] = str(args.bundle or DEFAULT_BUNDLE)
    if args.precision is not None:
        bundle["precision"] = args.precision
    backend = bundle.get("backend") or {"type": "onnxruntime"}
    backend = {"type": backend} if isinstance(backend, str) else dict(backend)
    if args.backend is not None and args.backend != backend["type"]:
        backend = {"type": args.backend}
    if args.threads is not None:
        backend["threads"] = args.threads
    if args.frames_at_once is not None:
        bundle["frames_at_once"] = args.frames_at_once
    return {**bundle, "backend": backend}


def command_config(args: argparse.Namespace, folder: Path, **overrides: Any) -> EdgeConfig:
    """The ``EdgeConfig`` a batch command runs with: ``--config``'s settings (or the defaults), the
    bundle options applied, one folder source on ``folder``, and ``overrides`` (e.g. the gate off).

    Raises:
        ConfigError: the config file, or an option, is invalid (every problem listed).
    """
    base: dict[str, Any] = {"device_id": "trapedge"}
    if args.config is not None:
        base = load_config(args.config, EdgeConfig).model_dump(mode="json")
    base["bundle"] = _bundle_settings(args, base.get("bundle", {}))
    base["sources"] = [{"type": "folder", "id": "images", "path": str(folder)}]
    base.update(overrides)
    try:
        return EdgeConfig.model_validate(base)
    except ValidationError as exc:
        problems = [ConfigProblem(None, dotted(tuple(e["loc"])), e["msg"]) for e in exc.errors(include_url=False)]
        raise ConfigError(args.config or "command options", problems) from None


def failure_lines(failures: Iterable[tuple[str, str]], listed_in: str, limit: int = 10) -> list[str]:
    """``  failed: NAME: REASON`` for the first ``limit`` failures, then how many more ``listed_in`` holds. A file
    name is not trusted: its control characters are escaped, so it cannot forge a line or repaint the terminal."""
    failures = list(failures)
    lines = [f"  failed: {escape_controls(name)}: {escape_controls(why)}" for name, why in failures[:limit]]
    if len(failures) > limit:
        lines.append(f"  ... and {len(failures) - limit} more ({listed_in} lists every one)")
    return lines


def fail(command: str, message: object) -> int:
    """Print ``trapedge <command>: <message>`` to stderr; returns exit code 2."""
    print(f"trapedge {command}: {message}", file=sys.stderr)
    return 2

"""``trapedge run --config edge.yaml``: the appliance service (what systemd starts)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config_loader import ConfigError, load_config, validate_config_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("/etc/trapedge/edge.yaml"), help="edge.yaml")
    parser.add_argument("--validate-config", action="store_true", help="check the config, report errors, exit")
    parser.add_argument("--once", action="store_true",
                        help="process what the sources have now, close the bursts, flush, exit")


def run(args: argparse.Namespace) -> int:
    from edge.app.config import EdgeConfig

    if args.validate_config:
        if validate_config_command(args.config, EdgeConfig, quiet_ok=True) != 0:
            return 1
        from edge.app.checks import run_problems

        problems = run_problems(load_config(args.config, EdgeConfig))
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            return 2
        print("config OK: the bundle loads, every watch-listed label is one it gives, the folders are there")
        return 0
    try:
        config = load_config(args.config, EdgeConfig)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from edge.app.service import main

    return main(config, once=args.once)

"""``trapedge central --config central.yaml``: the central matching service."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from central.config import CentralConfig
from common.config_loader import ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("/etc/trapedge/central.yaml"), help="central.yaml")
    parser.add_argument("--validate-config", action="store_true", help="check the config, report errors, exit")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, CentralConfig)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1 if args.validate_config else 2
    if args.validate_config:  # beyond parsing: files, the review address, the database (central/checks.py)
        from central.checks import central_problems

        problems = central_problems(config)
        for line in problems:
            print(line, file=sys.stderr)
        print("config OK" if not problems else f"{len(problems)} problem(s): fix them and run again",
              file=sys.stdout if not problems else sys.stderr)
        return 2 if problems else 0
    from central.service import StartupError, main

    try:
        return main(config)
    except StartupError as exc:
        print(f"trapedge central: {exc}", file=sys.stderr)
        return 2

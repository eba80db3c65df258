"""``trapedge central --config central.yaml``: the central matching service."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from central.config import CentralConfig
from common.config_loader import ConfigError, load_config, validate_config_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("/etc/trapedge/central.yaml"), help="central.yaml")
    parser.add_argument("--validate-config", action="store_true", help="check the config, report errors, exit")


def run(args: argparse.Namespace) -> int:
    if args.validate_config:
        return validate_config_command(args.config, CentralConfig)
    try:
        config = load_config(args.config, CentralConfig)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from central.service import StartupError, main

    try:
        return main(config)
    except StartupError as exc:
        print(f"trapedge central: {exc}", file=sys.stderr)
        return 2

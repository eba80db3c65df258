"""The ``trapedge`` command: one entry point, each subcommand imported only when used.

Edge subcommands never import torch; ``export`` needs the ``train`` extra.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module with add_arguments/run, one-line help)
COMMANDS = {
    "run": ("edge.cli.run", "run the appliance service (capture, detect, events, store, MQTT)"),
    "detect": ("edge.cli.detect", "detect animals in every image under a folder (MegaDetector JSON)"),
    "embed": ("edge.cli.embed", "embed the best detection (or whole image) of every image (JSON lines)"),
    "evaluate": ("train.evaluate", "what the camera does against reference boxes or labels (recall, confusion)"),
    "bench": ("trapedge.bench", "benchmark the edge pipeline on real frames (INT8, fp32, torch eager)"),
    "train": ("train.cli", "train the species classifier and the re-ID embedder; write the report"),
    "inventory": ("train.dataset_inventory", "show what training would read from a folder or config: classes, "
                                             "counts, stations, capture times, problems"),
    "export": ("export.cli", "build a model bundle: ONNX fp32 + INT8 with accuracy gates"),
    "export-tensorrt": ("export.tensorrt", "build TensorRT FP16/INT8 engines from a bundle (Jetson)"),
    "central": ("central.cli", "run the central matching service (ingest, match, review UI); "
                               "central enrol|export|evaluate|bench: its tools"),
    "bundle": ("edge.cli.bundle", "install, list or roll back model bundles (atomic switch, smoke check)"),
    "suppress": ("trapedge.suppress", "list the places whose recurring boxes no longer raise events; release one"),
}


# trapedge central TOOL ...: central's tools (each module's own main parses the rest)
CENTRAL_TOOLS = {
    "enrol": ("central.enroll", "enrol a folder-per-individual collection (each image embedded)"),
    "export": ("central.exports", "export the review's result: SpotID folders, Camtrap DP, MegaDetector JSON"),
    "evaluate": ("central.evaluate", "leave-one-out rank-1, top-5, mAP, open set; with and without local matching"),
    "bench": ("central.bench", "central ingest rate and top-5 search latency"),
    "suppressions": ("central.suppressions", "the places each device suppresses as repeated static false "
                                             "positives, from its latest status"),
}


def version() -> str:
    """The installed trapedge's version (``unknown`` when run from a tree that was never installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("trapedge")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="trapedge", description="Edge appliance for wildlife camera traps.")
    parser.add_argument("--version", action="version", version=f"trapedge {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # --version, or usage / an error, and exits
    if argv[0] == "central" and len(argv) > 1 and argv[1] in CENTRAL_TOOLS:
        return int(importlib.import_module(CENTRAL_TOOLS[argv[1]][0]).main(argv[2:]) or 0)
    module = importlib.import_module(COMMANDS[argv[0]][0])
    command = argparse.ArgumentParser(prog=f"trapedge {argv[0]}", description=COMMANDS[argv[0]][1])
    module.add_arguments(command)
    return module.run(command.parse_args(argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())

"""The layout is the architecture: which package may import which, checked on the source.

Packages, lowest first: ``common`` (shared by all); ``edge`` (the appliance); ``train`` and
``central`` (companion and matching side, both over the edge's runtime); ``export`` (over train);
``trapedge`` (the command line, over everything). Inside ``edge`` the stages a frame passes are
ordered the same way, and a stage imports only stages to its left. No cycles, nothing upward;
the edge never imports torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"common": set(), "edge": {"common"}, "train": {"common", "edge"}, "central": {"common", "edge"},
            "export": {"common", "edge", "train"}, "trapedge": {"common", "edge", "train", "export", "central"}}
EDGE_STAGES = ["runtime", "capture", "analysis", "events", "wire", "storage", "publish", "app", "cli"]
EDGE_FORBIDDEN = {"torch", "torchvision", "timm", "sqlite_utils", "onnx"}


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every absolute module a file imports, with its line (inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def edge_stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "edge" and len(parts) > 1 and parts[1] in EDGE_STAGES else None


@pytest.mark.parametrize("package", list(PACKAGES))
def test_packages_import_only_what_lies_below(package):
    wrong = [f"{path.relative_to(ROOT)}:{line}: {module}" for path in sources(package)
             for module, line in imports_of(path)
             if module.split(".")[0] in PACKAGES and module.split(".")[0] not in PACKAGES[package] | {package}]
    assert not wrong, "upward or sideways imports:\n" + "\n".join(wrong)


def test_edge_stages_import_only_stages_to_their_left():
    wrong = []
    for path in sources("edge"):
        own = path.relative_to(ROOT / "edge").parts[0]
        if own not in EDGE_STAGES:
            continue
        for module, line in imports_of(path):
            stage = edge_stage(module)
            if stage and EDGE_STAGES.index(stage) > EDGE_STAGES.index(own):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {own} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_edge_is_stages_only():
    """No flat modules beside the stages: a newcomer finds any stage in one hop."""
    top = sorted(p.name for p in (ROOT / "edge").iterdir() if not p.name.startswith(("_", ".")))
    assert top == sorted(EDGE_STAGES)


def test_the_edge_never_imports_torch_or_what_the_pi_does_not_need():
    wrong = [f"{path.relative_to(ROOT)}:{line}: {module}" for path in sources("edge")
             for module, line in imports_of(path) if module.split(".")[0] in EDGE_FORBIDDEN]
    assert not wrong, "\n".join(wrong)

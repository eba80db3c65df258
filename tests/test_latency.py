"""Alert latency: the service wakes when a watched file is closed, still stops at once, and
`trapedge bench --latency` times file closed → alert on a real Mosquitto."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import pytest

from edge.app.config import EdgeConfig
from edge.app.service import Service, install_signal_handlers
from edge.cli import latency
from edge.runtime.config import BundleConfig
from trapedge.cli import main as trapedge

BIRD = "frames/ena24_small/7951.jpg"


def recorded(service: Service, source_id: str) -> int:
    with service.store.lock:
        return service.store.conn.execute("SELECT COUNT(*) FROM frames WHERE source_id = ?", (source_id,)).fetchone()[0]


@pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux's")
def test_a_closed_file_wakes_the_idle_service_and_sigterm_still_stops_it(tmp_path, data, bundle_dir, monkeypatch):
    """Idle sleep, scan interval and settle time are all a minute: only the close notification can
    bring the file in. The same file in a folder without notifications stays where it is, and SIGTERM
    ends the loop without waiting out the minute."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    folders = {"notified": tmp_path / "notified", "timed": tmp_path / "timed"}
    for folder in folders.values():
        folder.mkdir()
    config = EdgeConfig.model_validate({
        "device_id": "cam-wake", "bundle": {"path": str(bundle_dir)}, "store": {"path": str(tmp_path / "state.db")},
        "sources": [{"type": "folder", "id": name, "path": str(path), "notify": name == "notified",
                     "settle_seconds": 60, "poll_seconds": 60} for name, path in folders.items()],
        "idle_sleep_s": 60})
    service = Service(config)
    service.start()
    seen: dict[str, float] = {}

    def drop_then_terminate() -> None:
        time.sleep(0.5)  # the first scan is done: the loop is asleep
        raw = (data / BIRD).read_bytes()
        for folder in folders.values():
            (folder / "bird.jpg").write_bytes(raw)
        closed = time.monotonic()
        while not recorded(service, "notified") and time.monotonic() - closed < 20:
            time.sleep(0.01)
        seen["taken"] = time.monotonic() - closed
        time.sleep(1.0)
        seen["timed"] = recorded(service, "timed")
        seen["terminated"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    install_signal_handlers(service)
    helper = threading.Thread(target=drop_then_terminate)
    try:
        helper.start()
        service.run()  # in the main thread, where the signal handler runs
        stopped = time.monotonic() - seen["terminated"]
    finally:
        helper.join(30)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        service.stop()
    assert seen["taken"] < 20 and seen["timed"] == 0
    assert stopped < 10


@pytest.mark.parametrize("bundle, frames, broker, expected", [
    ("missing", "real", "real", "no model bundle at"),
    ("real", "missing", "real", "ena24_small/7951.jpg not found"),
    ("real", "real", "missing", "install Debian's mosquitto package"),
])
def test_bench_latency_refuses_in_one_line(bundle, frames, broker, expected, tmp_path, data, bundle_dir, monkeypatch,
                                           capsys):
    if broker == "missing":
        monkeypatch.setattr("common.local_broker.BINARY", tmp_path / "no-mosquitto")
    bundle_path = bundle_dir if bundle == "real" else tmp_path / "no-bundle"
    frames_path = data / "frames" if frames == "real" else tmp_path / "no-frames"
    code = trapedge(["bench", "--latency", "--bundle", str(bundle_path), str(frames_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("trapedge bench --latency: ") and expected in err


def test_bench_latency_times_alerts_end_to_end(tmp_path, data, bundle_dir, capsys):
    out = tmp_path / "latency.json"
    assert trapedge(["bench", "--latency", "--alerts", "5", "--frames", "6", "--bundle", str(bundle_dir),
                     str(data / "frames"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "its alert arrived (PUBACK path)" in printed
    result = json.loads(out.read_text())
    # the service itself at full rate: as the device chooses, and one frame at a time where it chooses more
    runs = result["service_full_rate"]
    assert [r["frames_at_once"] for r in runs] == sorted({BundleConfig().frames_in_flight(), 1}, reverse=True)
    for r in runs:
        assert r["frames"] == 6 and r["fps"] > 0
        assert 60 < r["peak_rss_mb"] < 1000, "the service's own peak RSS: it holds numpy, onnxruntime and the models"
        assert f"{r['frames_at_once']} frame(s) at once: {r['fps']:.1f} frames/s" in printed
    assert result["alerts"] == 5 and result["machine"]["cpus"] == os.cpu_count()
    assert [s["file"] for s in result["samples"]] == [f"bird-{i:04d}.jpg" for i in range(1, 6)]
    tick = 0.002  # the service's log and store keep milliseconds, cut down
    for s in result["samples"]:  # each step after the one before, on one clock
        steps = [s["closed"], s["taken"], s["recorded"], s["received"]]
        assert all(before < after + tick for before, after in zip(steps, steps[1:])), s
    assert set(result["latency_ms"]) == {"taken", "recorded", "received"}


def test_peak_rss_is_the_process_own_high_water_mark():
    import resource

    mine = latency.peak_rss_mb(os.getpid())
    assert mine == pytest.approx(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, abs=2)
    assert latency.peak_rss_mb(2**22 + 1) is None  # no such process: no figure, no error


def test_the_full_rate_run_stops_with_the_reason_when_a_frame_fails(tmp_path, monkeypatch):
    """A frame the service records as a failure ends the run with its reason, not a wait until the timeout."""
    import sqlite3

    from edge.storage.store import Store

    (tmp_path / "incoming").mkdir()
    (tmp_path / "state").mkdir()
    Store(tmp_path / "state" / "trapedge.db").close()
    conn = sqlite3.connect(tmp_path / "state" / "trapedge.db")
    conn.execute("INSERT INTO failures (source_id, key, path, reason, at) VALUES ('drop', 'k', ?, ?, '2026-01-01')",
                 (str(tmp_path / "incoming" / f"{latency.FULL_RATE_PREFIX}0000.jpg"), "image unreadable: truncated"))
    conn.commit()
    conn.close()

    class Running:
        pid, returncode = os.getpid(), None

        def poll(self):
            return None

    image = tmp_path / "a.jpg"
    image.write_bytes(b"not a picture")
    with pytest.raises(latency.LatencyError, match="failed on a frame of the full-rate run: full-rate-0000.jpg: image "
                                                   "unreadable: truncated"):
        latency.full_rate(Running(), tmp_path, tmp_path / "log", [image], 2, 1)

"""Progress of long work: plain, rate-limited lines when stderr is not a terminal; a bar when it is."""

import io
import re

import pytest

import common.progress
from common.progress import clock_time, plural, progress
from trapedge.cli import main


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def lines_of(items, seconds_each, **options):
    """The lines written while ``items`` pass, each taking ``seconds_each`` on a fake clock."""
    clock, out = FakeClock(), io.StringIO()
    for _ in progress(items, stream=out, clock=clock, **options):
        clock.now += seconds_each
    return out.getvalue().splitlines()


def test_lines_start_after_two_seconds_then_every_tenth_with_count_rate_eta_and_a_final_line(monkeypatch):
    monkeypatch.delenv("TRAPEDGE_PROGRESS", raising=False)
    lines = lines_of(range(100), 0.25, desc="detect", unit="image")
    # 4 images/s: the first line at 2 s (8 done), then one per 10 more images; 25 s in all
    assert lines[0] == "detect: 8/100 images (8%), 4.0 images/s, ETA 0:23"
    assert lines[1] == "detect: 18/100 images (18%), 4.0 images/s, ETA 0:20"
    assert [int(re.match(r"detect: (\d+)/", line)[1]) for line in lines[:-1]] == list(range(8, 100, 10))
    assert lines[-1] == "detect: 100/100 images in 0:25, 4.0 images/s"


def test_slow_work_writes_a_line_every_30_seconds_and_seconds_per_item(monkeypatch):
    monkeypatch.delenv("TRAPEDGE_PROGRESS", raising=False)
    lines = lines_of(range(1000), 1.0, desc="embed", unit="batch")
    counts = [int(re.match(r"embed: (\d+)/", line)[1]) for line in lines[:-1]]
    assert counts[:4] == [2, 32, 62, 92]  # 30 s apart: sooner than 10% (100 batches)
    assert lines[0] == "embed: 2/1000 batches (0%), 1.0 batches/s, ETA 16:38"
    assert lines[-1] == "embed: 1000/1000 batches in 16:40, 1.0 batches/s"
    slow = lines_of(range(3), 40.0, desc="classifier", unit="epoch")
    assert slow == ["classifier: 1/3 epochs (33%), 40.0 s/epoch, ETA 1:20", "classifier: 2/3 epochs (66%), 40.0 s/epoch, "
                    "ETA 0:40", "classifier: 3/3 epochs in 2:00, 40.0 s/epoch"]


def test_unknown_total_has_no_percent_or_eta(monkeypatch):
    monkeypatch.delenv("TRAPEDGE_PROGRESS", raising=False)
    lines = lines_of((i for i in range(10)), 0.5, desc="decode", unit="image")
    assert lines[0] == "decode: 4 images, 2.0 images/s"
    assert lines[-1] == "decode: 10 images in 0:05, 2.0 images/s"


@pytest.mark.parametrize("seconds_each, leave, expected", [
    (0.0625, True, ["check: 5/5 images in 0:00, 16.0 images/s"]),  # short: the summary only
    (0.0625, False, []),                                            # short inner loop: nothing
    (1.0, False, ["check: 2/5 images (40%), 1.0 images/s, ETA 0:03", "check: 3/5 images (60%), 1.0 images/s, ETA 0:02",
                  "check: 4/5 images (80%), 1.0 images/s, ETA 0:01",
                  "check: 5/5 images in 0:05, 1.0 images/s"]),  # an inner loop that wrote lines ends them
])
def test_summary_line(seconds_each, leave, expected, monkeypatch):
    monkeypatch.delenv("TRAPEDGE_PROGRESS", raising=False)
    assert lines_of(range(5), seconds_each, desc="check", unit="image", leave=leave) == expected


def test_stopping_early_and_postfix(monkeypatch, capsys):
    monkeypatch.delenv("TRAPEDGE_PROGRESS", raising=False)
    clock, out = FakeClock(), io.StringIO()
    with progress(range(1, 31), desc="classifier", unit="epoch", stream=out, clock=clock) as epochs:
        for epoch in epochs:
            clock.now += 10
            epochs.set_postfix(loss=f"{1 / epoch:.3f}")
            epochs.write(f"epoch {epoch}: done")
            if epoch == 4:
                break  # early stopping
    # 10% is 3 epochs: one line after the first; the summary counts the epoch the loop broke out of
    assert out.getvalue().splitlines() == [
        "classifier: 1/30 epochs (3%), 10.0 s/epoch, ETA 4:50, loss 1.000",
        "classifier: 4/30 epochs in 0:40, 10.0 s/epoch, loss 0.250"]
    assert capsys.readouterr().out.splitlines() == [f"epoch {e}: done" for e in range(1, 5)]


@pytest.mark.parametrize("env, enabled", [("0", True), ("off", True), ("", False)])
def test_silenced(env, enabled, monkeypatch, capsys):
    monkeypatch.setenv("TRAPEDGE_PROGRESS", env)
    with progress(range(50), desc="x", stream=io.StringIO(), enabled=enabled) as bar:
        assert list(bar) == list(range(50))
        bar.write("epoch line")
    assert lines_of(range(50), 1.0, desc="x", enabled=enabled) == []
    assert capsys.readouterr().out == ""


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("env, stream, bar", [("", Terminal(), True), ("", io.StringIO(), False),
                                              ("lines", Terminal(), False), ("bar", io.StringIO(), True)])
def test_a_terminal_gets_a_tqdm_bar(env, stream, bar, monkeypatch):
    from tqdm import tqdm

    monkeypatch.setenv("TRAPEDGE_PROGRESS", env)
    shown = progress(range(3), desc="detect", unit="image", stream=stream)
    assert list(shown) == [0, 1, 2]
    assert isinstance(shown, tqdm) == bar


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (23.4, "0:23"), (725, "12:05"), (3729, "1:02:09")])
def test_clock_time(seconds, text):
    assert clock_time(seconds) == text


@pytest.mark.parametrize("unit, units", [("image", "images"), ("batch", "batches"), ("epoch", "epochs"), ("step", "steps")])
def test_plural(unit, units):
    assert plural(unit) == units


def test_detect_shows_progress_when_stderr_is_not_a_terminal(data, bundle_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRAPEDGE_PROGRESS", raising=False)
    monkeypatch.setattr(common.progress, "FIRST_AFTER", 0.0)  # a few images take under the usual 2 s
    folder = data / "frames" / "animl_samples"
    images = len(list(folder.glob("*.jpg")))
    assert images >= 3
    out = tmp_path / "results.json"
    assert main(["detect", str(folder), "--bundle", str(bundle_dir), "--output", str(out)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("detect: ")]
    progress_line = re.compile(rf"detect: (\d+)/{images} images \(\d+%\), \d+\.\d (images/s|s/image), ETA \d+:\d\d")
    assert [int(progress_line.fullmatch(line)[1]) for line in lines[:-1]] == list(range(1, images))
    assert re.fullmatch(rf"detect: {images}/{images} images in \d+:\d\d, \d+\.\d (images/s|s/image)", lines[-1])
    assert f"{images} images" in captured.out  # the command's own summary stays on stdout


def test_detect_is_silent_with_trapedge_progress_0(data, bundle_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRAPEDGE_PROGRESS", "0")
    folder = data / "frames" / "autofocus_gallery"
    assert main(["detect", str(folder), "--bundle", str(bundle_dir), "--output", str(tmp_path / "r.json")]) == 0
    assert "detect: " not in capsys.readouterr().err

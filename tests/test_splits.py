"""Leak-free splits: bursts, stratification, re-ID disjointness, saved splits (train/splits.py)."""

from __future__ import annotations

import csv
import random
import re
from collections import Counter, defaultdict
from contextlib import nullcontext as does_not_raise
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from train.records import Record
from train.splits import (
    FRAME_NUMBER,
    LeakageError,
    StaleSplitError,
    assign_bursts,
    check_no_leakage,
    group_key,
    load_or_make_split,
    load_split,
    save_split,
    split_from_folders,
    split_individuals,
    split_records,
    verify_disjoint_individuals,
)

T0 = datetime(2024, 5, 1, 12, 0, 0)
IMAGES = (".jpg", ".jpeg", ".png")


def rec(name: str, label: str = "deer", **fields) -> Record:
    return Record(path=Path(fields.pop("folder", "cam")) / name, labels=(label,), **fields)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# ---------------------------------------------------------------- bursts


@pytest.mark.parametrize(
    "records, options, expected",
    [
        pytest.param(  # chained: 0-50-100 is one burst although 0 and 100 are 100 s apart
            [rec("a.jpg", time=at(0)), rec("b.jpg", time=at(50)), rec("c.jpg", time=at(100))],
            {}, ["cam@a.jpg"] * 3, id="chained-within-gap"),
        pytest.param(
            [rec("b.jpg", time=at(61)), rec("a.jpg", time=at(0))],
            {}, ["cam@b.jpg", "cam@a.jpg"], id="gap-just-over"),
        pytest.param(
            [rec("b.jpg", time=at(60)), rec("a.jpg", time=at(0))],
            {}, ["cam@a.jpg", "cam@a.jpg"], id="gap-exact-unordered-input"),
        pytest.param(  # same moment, different cameras
            [rec("a.jpg", time=at(0), location="L1"), rec("b.jpg", time=at(1), location="L2")],
            {}, ["L1@a.jpg", "L2@b.jpg"], id="location-separates"),
        pytest.param(
            [rec("a.jpg", time=at(0), folder="x"), rec("b.jpg", time=at(1), folder="y")],
            {}, ["x@a.jpg", "y@b.jpg"], id="folder-separates"),
        pytest.param(
            [rec("a.jpg", time=at(0)), rec("b.jpg", time=at(30))],
            {"gap_seconds": 10}, ["cam@a.jpg", "cam@b.jpg"], id="custom-gap"),
        pytest.param(  # no time, no pattern: every image alone
            [rec("f_0001.jpg"), rec("f_0002.jpg")],
            {}, ["cam@f_0001.jpg", "cam@f_0002.jpg"], id="no-clock-singletons"),
        pytest.param(
            [rec("f_0001.jpg"), rec("f_0003.jpg"), rec("f_0006.jpg"), rec("f_0007.jpg")],
            {"sequence_from_filename": FRAME_NUMBER},
            ["cam@f_0001.jpg", "cam@f_0001.jpg", "cam@f_0006.jpg", "cam@f_0006.jpg"], id="frame-numbers"),
        pytest.param(
            [rec("f_0001.jpg"), rec("f_0003.jpg")],
            {"sequence_from_filename": FRAME_NUMBER, "frame_gap": 1},
            ["cam@f_0001.jpg", "cam@f_0003.jpg"], id="frame-gap-1"),
    ],
)
def test_assign_bursts(records, options, expected):
    assert assign_bursts(records, **options) == expected


@pytest.mark.parametrize(
    "record, by, expected, raises",
    [
        (rec("a.jpg", event="e1"), "event", "e1", does_not_raise()),
        (rec("a.jpg"), "event", None, pytest.raises(ValueError, match="with_bursts")),
        (rec("a.jpg", location="L7"), "location", "L7", does_not_raise()),
        (rec("a.jpg"), "location", None, pytest.raises(ValueError, match="no location")),
        (rec("a.jpg", individual="Kinna"), "individual", "Kinna", does_not_raise()),
        (rec("a.jpg"), "individual", None, pytest.raises(ValueError, match="no individual")),
        (rec("a.jpg", bbox=(0.1, 0.1, 0.2, 0.2)), "image", "cam/a.jpg", does_not_raise()),
        (rec("a.jpg"), "camera", None, pytest.raises(ValueError, match="unknown split key")),
    ],
)
def test_group_key(record, by, expected, raises):
    with raises:
        assert group_key(record, by) == expected


# ---------------------------------------------------------------- splitting, synthetic


def synthetic(n_events: int = 120, seed: int = 1) -> list[Record]:
    """Bursts of 1-6 frames at 3 locations, 5 labels with very different frequencies."""
    rng = random.Random(seed)
    labels = ["deer"] * 8 + ["fox"] * 4 + ["bear"] * 2 + ["rare"] + ["empty"] * 5
    out = []
    for event in range(n_events):
        label = labels[event % len(labels)]
        for frame in range(rng.randint(1, 6)):
            out.append(rec(f"e{event:03d}_{frame}.jpg", label, event=f"ev{event}", location=f"L{event % 3}"))
    return out


def split_of_paths(splits) -> dict[Path, str]:
    return {r.path: name for name, rs in splits.items() for r in rs}


@pytest.mark.parametrize("by", ["event", "location", "image"])
def test_no_group_straddles_splits_over_many_seeds(by):
    records = synthetic()
    for seed in range(40):
        splits = split_records(records, by, seed=seed)
        assert sorted(r.path for rs in splits.values() for r in rs) == sorted(r.path for r in records)
        where = defaultdict(set)
        for name, rs in splits.items():
            for r in rs:
                where[r.event if by == "event" else r.location if by == "location" else r.path].add(name)
        assert all(len(names) == 1 for names in where.values()), seed
        check_no_leakage(splits, by)


def test_fractions_roughly_respected():
    records = synthetic(400)
    fractions = {"train": 0.6, "val": 0.25, "test": 0.15}
    splits = split_records(records, "event", fractions, seed=3)
    for name, fraction in fractions.items():
        assert len(splits[name]) / len(records) == pytest.approx(fraction, abs=0.03), name


def test_every_class_with_three_groups_in_every_split():
    records = synthetic()
    events_per_label = Counter(label for label, _ in {(r.label, r.event) for r in records})
    assert events_per_label["rare"] >= 3  # the fixture must exercise a small class
    for seed in range(20):
        splits = split_records(records, "event", seed=seed)
        for name, rs in splits.items():
            present = {r.label for r in rs}
            assert {l for l, n in events_per_label.items() if n >= 3} <= present, (seed, name)


@pytest.mark.parametrize(
    "burst_sizes, splits_with_class",
    [
        ([10, 10, 1], {"train", "val", "test"}),  # greedy by size alone would leave test empty
        ([1, 1, 1], {"train", "val", "test"}),
        ([30, 1, 1, 1, 1], {"train", "val", "test"}),
        ([5, 5], {"train", "val"}),  # fewer groups than splits: as many splits as groups
        ([7], {"train"}),
    ],
)
def test_small_class_spread_over_splits(burst_sizes, splits_with_class):
    records = [rec(f"e{e}_{i}.jpg", "lynx", event=f"e{e}") for e, n in enumerate(burst_sizes) for i in range(n)]
    for seed in range(10):
        splits = split_records(records, "event", seed=seed)
        assert {name for name, rs in splits.items() if rs} == splits_with_class, seed


def test_without_stratify_a_rare_class_can_miss_a_split():
    records = synthetic()
    missing = [
        seed
        for seed in range(20)
        for rs in split_records(records, "event", seed=seed, stratify=False).values()
        if "rare" not in {r.label for r in rs}
    ]
    assert missing  # stratification is what guarantees presence


def test_deterministic_per_seed_and_different_across_seeds():
    records = synthetic()
    first = split_of_paths(split_records(records, "event", seed=7))
    assert split_of_paths(split_records(list(reversed(records)), "event", seed=7)) == first
    others = {tuple(sorted(split_of_paths(split_records(records, "event", seed=s)).items())) for s in range(5)}
    assert len(others) == 5


def test_bursts_derived_when_events_missing():
    records = [rec(f"{i}.jpg", time=at(i * 10 + (i // 3) * 1000)) for i in range(30)]  # 10 bursts of 3
    splits = split_records(records, "event", seed=0, stratify=False)
    for rs in splits.values():
        assert len(rs) % 3 == 0
    check_no_leakage(splits, "event")


@pytest.mark.parametrize(
    "splits, by, raises",
    [
        ({"train": [rec("a.jpg", event="e1")], "val": [rec("b.jpg", event="e1")]}, "event",
         pytest.raises(LeakageError, match="'e1'")),
        ({"train": [rec("a.jpg", time=at(0))], "val": [rec("b.jpg", time=at(5))]}, "event",
         pytest.raises(LeakageError, match="cam@a.jpg")),
        ({"train": [rec("a.jpg", time=at(0))], "val": [rec("b.jpg", time=at(500))]}, "event", does_not_raise()),
        ({"train": [rec("a.jpg")], "test": [rec("a.jpg")]}, "image", pytest.raises(LeakageError, match="cam/a.jpg")),
        ({"train": [rec("a.jpg", location="L1")], "val": [rec("b.jpg", location="L2")]}, "location", does_not_raise()),
    ],
)
def test_check_no_leakage(splits, by, raises):
    with raises:
        check_no_leakage(splits, by)


@pytest.mark.parametrize("fractions", [{"train": 0.8, "val": 0.3}, {"train": 1.2, "val": -0.2}, {}])
def test_bad_fractions_refused(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_records(synthetic(10), "event", fractions)


# ---------------------------------------------------------------- save / load / reuse


def test_save_load_round_trip(tmp_path):
    records = synthetic(30)
    splits = split_records(records, "event", seed=4)
    save_split(splits, tmp_path / "split.csv", by="event", seed=4, fractions={"train": 0.7, "val": 0.15, "test": 0.15})
    saved = load_split(tmp_path / "split.csv")
    expected = sorted((r.path.as_posix(), name, r.event, r.label) for name, rs in splits.items() for r in rs)
    assert sorted((x.path, x.split, x.group, x.label) for x in saved.rows) == expected
    assert (saved.by, saved.seed) == ("event", 4)
    assert saved.counts == {name: len(rs) for name, rs in splits.items()}
    with (tmp_path / "split.csv").open() as f:
        assert next(csv.reader(f)) == ["path", "split", "group", "label"]


def test_saved_split_is_reused_not_reshuffled(tmp_path):
    records = synthetic(60)
    path = tmp_path / "runs" / "split.csv"
    first = load_or_make_split(records, path, "event", seed=1)
    assert path.exists() and path.with_suffix(".json").exists()
    again = load_or_make_split(records, path, "event", seed=2)  # the saved split wins
    assert split_of_paths(again) == split_of_paths(first)
    assert split_of_paths(split_records(records, "event", seed=2)) != split_of_paths(first)


def test_stale_saved_split_refused_with_both_lists(tmp_path):
    records = synthetic(20)
    path = tmp_path / "split.csv"
    load_or_make_split(records, path, "event")
    changed = records[1:] + [rec("new.jpg", event="evX")]
    with pytest.raises(StaleSplitError, match="1 of its files are gone, 1 new ones") as err:
        load_or_make_split(changed, path, "event")
    assert "\n" not in str(err.value) and "--out" in str(err.value)  # one line that says what to do
    assert err.value.gone == [records[0].path.as_posix()]
    assert err.value.new == ["cam/new.jpg"]
    with pytest.raises(StaleSplitError, match="splits by 'event', not 'location'"):
        load_or_make_split(records, path, "location")


def test_a_grown_dataset_keeps_every_saved_image_where_it_was(tmp_path, capsys):
    """New photos (and a new source beside the first) are split without moving a held-out image; a
    new frame of a saved burst joins it, one of a sequence another split fixed takes that split."""
    root = tmp_path / "data"
    old = [rec(f"e{i:03d}_{f}.jpg", ["deer", "fox"][i % 2], folder=str(root / "a"), event=f"ev{i}")
           for i in range(40) for f in range(2)]
    path = tmp_path / "split.csv"
    first = split_of_paths(load_or_make_split(old, path, "event", root=root / "a"))
    late = rec("e007_9.jpg", "deer", folder=str(root / "a"), event="ev7")  # a late frame of a saved burst
    other = [rec(f"s{i}_{f}.jpg", "agouti", folder=str(root / "b"), event=f"SEQ{i}") for i in range(30) for f in range(2)]
    fixed = {"SEQ0": "test", "SEQ1": "train"}
    grown = load_or_make_split([*old, late, *other], path, "event", root=root, fixed_groups=fixed)  # root moved up
    now = split_of_paths(grown)
    assert {p: now[p] for p in first} == first
    assert now[late.path] == first[old[14].path]
    assert [now[r.path] for r in other[:4]] == ["test", "test", "train", "train"]
    assert {now[r.path] for r in other} == {"train", "val", "test"}  # the rest split among themselves
    check_no_leakage(grown, "event")
    assert "61 new image(s) split" in capsys.readouterr().out
    saved = load_split(path)
    assert {row.path for row in saved.rows} >= {"a/e000_0.jpg", "b/s0_0.jpg"}  # rewritten under the new root
    assert split_of_paths(load_or_make_split([*old, late, *other], path, "event", root=root)) == now


def test_images_another_split_now_decides_must_keep_their_split(tmp_path):
    records = synthetic(20)
    path = tmp_path / "split.csv"
    made = split_of_paths(load_or_make_split(records, path, "event"))
    pinned = {records[0].path.as_posix(): made[records[0].path]}
    rest = load_or_make_split(records[1:], path, "event", pinned=pinned)
    assert split_of_paths(rest) == {p: s for p, s in made.items() if p != records[0].path}
    moved = {records[0].path.as_posix(): next(s for s in ("train", "val", "test") if s != made[records[0].path])}
    with pytest.raises(StaleSplitError, match="1 of its files are now in another split"):
        load_or_make_split(records[1:], path, "event", pinned=moved)


def test_paths_saved_relative_to_root(tmp_path):
    root = tmp_path / "data"
    records = [rec(f"{i}.jpg", folder=str(root / "cam"), event=f"e{i}") for i in range(6)]
    path = tmp_path / "split.csv"
    first = load_or_make_split(records, path, "event", root=root)
    assert {row.path for row in load_split(path).rows} == {f"cam/{i}.jpg" for i in range(6)}
    assert load_or_make_split(records, path, "event", root=root) == first


# ---------------------------------------------------------------- real data: MLWIC CA-01


def mlwic_records(data: Path) -> list[Record]:
    root = data / "species" / "mlwic_ca01"
    with (root / "labels.csv").open(newline="") as f:
        return [Record(path=root / row["file"], labels=(row["label"],), location="CA-01", source="csv")
                for row in csv.DictReader(f)]


def test_mlwic_frames_carry_no_capture_time(data):
    from PIL import Image

    with Image.open(data / "species/mlwic_ca01/images/CA-01_0006501.jpg") as image:
        assert 36867 not in image.getexif().get_ifd(0x8769) and 306 not in image.getexif()


def test_mlwic_bursts_from_frame_numbers(data):
    records = mlwic_records(data)
    assert len(records) == 1307
    bursts = assign_bursts(records, sequence_from_filename=FRAME_NUMBER, frame_gap=2)
    numbers = sorted(int(re.search(r"_(\d+)\.jpg$", r.path.name).group(1)) for r in records)
    breaks = sum(1 for a, b in zip(numbers, numbers[1:]) if b - a > 2)
    assert len(set(bursts)) == breaks + 1 == 70
    by_name = dict(zip((r.path.name for r in records), bursts))
    assert by_name["CA-01_0006501.jpg"] == by_name["CA-01_0006502.jpg"]


def test_mlwic_split_by_burst(data):
    records = mlwic_records(data)
    options = {"sequence_from_filename": FRAME_NUMBER, "frame_gap": 2}
    splits = split_records(records, "event", seed=0, **options)
    check_no_leakage(splits, "event", **options)
    sizes = {name: len(rs) for name, rs in splits.items()}
    assert sum(sizes.values()) == 1307
    assert sizes["train"] > sizes["val"] > 50 and sizes["test"] > 50
    # frames of one burst never on two sides, checked with frame numbers directly
    side = {int(re.search(r"_(\d+)\.jpg$", r.path.name).group(1)): n for n, rs in splits.items() for r in rs}
    ordered = sorted(side)
    assert all(side[a] == side[b] for a, b in zip(ordered, ordered[1:]) if b - a <= 2)


# ---------------------------------------------------------------- real data: re-identification


def folder_records(root: Path) -> list[Record]:
    return [Record(path=p, labels=(p.parent.name,), individual=p.parent.name, source="folders")
            for p in sorted(root.rglob("*")) if p.suffix.lower() in IMAGES]


def test_lion_given_split_kept_and_disjoint(data):
    root = data / "reid" / "lion"
    splits = split_from_folders(folder_records(root), root)
    assert set(splits) == {"train", "val"}
    individuals = {name: {r.individual for r in rs} for name, rs in splits.items()}
    assert (len(individuals["train"]), len(individuals["val"])) == (75, 19)
    assert not individuals["train"] & individuals["val"]
    assert sum(len(rs) for rs in splits.values()) == 740


def test_lion_tampered_split_refused(data):
    root = data / "reid" / "lion"
    splits = split_from_folders(folder_records(root), root)
    leaked = {"train": splits["train"] + splits["val"][:1], "val": splits["val"]}
    with pytest.raises(LeakageError, match=splits["val"][0].individual):
        verify_disjoint_individuals(leaked)


def test_lion_split_individuals(data):
    records = folder_records(data / "reid" / "lion")
    for seed in range(10):
        splits = split_individuals(records, seed=seed)
        verify_disjoint_individuals(splits)
        assert all(splits.values())
        assert len(splits["train"]) / len(records) == pytest.approx(0.7, abs=0.05)


LEOPARD_NAME = re.compile(r"^\d+_\d+_(?P<station>.+)-(?P<time>\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)\.jpg$")


def leopard_records(data: Path) -> list[Record]:
    out = []
    for r in folder_records(data / "reid" / "leopard_spotid" / "crops"):
        m = LEOPARD_NAME.match(r.path.name)
        out.append(Record(path=r.path, labels=r.labels, individual=r.individual, location=m["station"],
                          time=datetime.strptime(m["time"], "%Y-%m-%d_%H-%M-%S"), source="folders"))
    return out


def test_leopard_bursts_from_filename_times(data):
    records = leopard_records(data)
    assert len(records) == 44
    bursts = dict(zip((r.path.name for r in records), assign_bursts(records)))
    # the one pair a second apart at station 118A is one burst; everything else is alone
    assert bursts["0_0_118A-2013-12-05_17-12-07.jpg"] == bursts["0_0_118A-2013-12-05_17-12-08.jpg"]
    assert len(set(bursts.values())) == 43


def test_leopard_split_individuals(data):
    records = leopard_records(data)
    splits = split_individuals(records, seed=0)
    verify_disjoint_individuals(splits)
    assert all(splits.values())  # 4 flanks, 3 splits: one at least in each
    assert sorted(len({r.individual for r in rs}) for rs in splits.values()) == [1, 1, 2]


def test_a_new_run_splits_source_by_source_so_an_added_source_moves_nothing(data, tmp_path, capsys):
    """MLWIC's CSV, then Missouri's class folders. MLWIC's split is the one it gets alone (its held-out
    images and the hard negatives picked from its train split stay put), Missouri's sequences are split
    among themselves, and a second run reuses the saved split as it is."""
    from train.cli import species_split
    from train.config import SOURCE_INDEX, SpeciesSource, TrainingConfig, read_species

    alone = TrainingConfig.default(data, out=tmp_path / "alone")
    missouri_folders = SpeciesSource(format="folders", path=Path("boxes/missouri_camtraps/images"),
                                     filename_pattern=r"^(?P<event>SEQ\d+)_")
    both = alone.model_copy(update={"out": tmp_path / "both", "species": [*alone.species, missouri_folders]})
    records, _ = read_species(both)
    mlwic = [r for r in records if r.extra[SOURCE_INDEX] == 0]
    made = split_of_paths(species_split(both, records))
    assert {r.path: made[r.path] for r in mlwic} == split_of_paths(species_split(alone, read_species(alone)[0]))
    missouri = [r for r in records if r.extra[SOURCE_INDEX] == 1]
    assert len(missouri) == 1027 and {made[r.path] for r in missouri} == {"train", "val", "test"}
    check_no_leakage(species_split(both, records), "event", sequence_from_filename=FRAME_NUMBER)
    assert "1027 new image(s) split" in capsys.readouterr().out
    assert split_of_paths(species_split(both, records)) == made

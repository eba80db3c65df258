"""What every reader returns: the records it could use and the entries it could not."""

from __future__ import annotations

import codecs
import io
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from train.records import Record

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class DatasetError(ValueError):
    """Input that cannot be read as the format it claims to be; names the file and the entry."""

    def __init__(self, file: Path | str, entry: str, message: str):
        self.file = Path(file)
        self.entry = entry
        super().__init__(f"{file}: {entry}: {message}")


@dataclass(frozen=True)
class Problem:
    """One entry a reader could not turn into a record (the batch goes on).

    Attributes:
        kind: ``missing`` (image file absent), ``failure`` (the source says it failed),
            ``remote`` (a URL, not fetched), ``not_image``, ``unannotated``, ``unlabelled``,
            ``unparsed`` (kept, but the filename did not match the pattern, or its XMP could not
            be read), ``unmatched``, ``unboxed`` (box data: an object without a box), ``ambiguous``
            (kept without the field it had several values for), ``layout`` (a hint: the folder
            layout looks unlike the options given), ``duplicate`` (the same box or label of the
            same image again, e.g. a YOLO line repeated: kept once, so one animal is not trained
            on, or counted missed, several times).
        source: the annotation file (or folder) the entry came from.
        entry: where in it (``line 7``, ``images[3]``, ``obs6``).
        detail: the image path or the message.
    """

    kind: str
    source: Path
    entry: str
    detail: str = ""

    def __str__(self) -> str:
        """One readable line: ``labels.csv line 7: missing: images/a.jpg``."""
        return f"{self.source.name} {self.entry}: {self.kind}" + (f": {self.detail}" if self.detail else "")


def problem_lines(problems: list, limit: int = 20, all_in: Path | None = None) -> list[str]:
    """The first ``limit`` problems, one line each, then how many more there are (and the file
    ``all_in`` that lists every one, written here when given)."""
    if all_in is not None and problems:
        all_in.parent.mkdir(parents=True, exist_ok=True)
        all_in.write_text("".join(f"{problem}\n" for problem in problems))
    lines = [f"  {problem}" for problem in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  … and {len(problems) - limit} more" + (f" (all of them: {all_in})" if all_in else ""))
    return lines


@dataclass
class Inventory:
    """Records read from one source plus every problem met on the way."""

    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    _kept: set[Record] = field(default_factory=set, init=False, repr=False, compare=False)  # records, for O(1) lookups

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    @property
    def missing(self) -> list[Problem]:
        """Problems whose image file does not exist."""
        return [p for p in self.problems if p.kind == "missing"]

    def problem_counts(self) -> dict[str, int]:
        """Number of problems per kind."""
        return dict(Counter(p.kind for p in self.problems))

    def report(self, kind: str, source: Path, entry: str, detail: str = "") -> None:
        """Note one entry that yields no (or an incomplete) record."""
        self.problems.append(Problem(kind, Path(source), entry, detail))

    def add(self, record: Record, source: Path, entry: str) -> bool:
        """Keep ``record`` if its image exists and it is not one already kept (reported ``missing`` /
        ``duplicate`` otherwise); True when kept."""
        if not record.path.is_file():
            self.report("missing", source, entry, str(record.path))
            return False
        if record in self._kept:
            self.report("duplicate", source, entry, str(record.path))
            return False
        self._kept.add(record)
        self.records.append(record)
        return True


def parse_time(text: str | None, file: Path, entry: str) -> datetime | None:
    """ISO-8601 (``Z`` allowed, space or ``T`` separator) or the COCO-CT ``YYYY:MM:DD`` EXIF form."""
    if text is None or not str(text).strip():
        return None
    value = str(text).strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    if len(value) >= 10 and value[4] == ":" and value[7] == ":":
        value = value[:4] + "-" + value[5:7] + "-" + value[8:]
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise DatasetError(file, entry, f"bad date/time {text!r}") from None


def check_bbox(box: tuple[float, float, float, float], file: Path, entry: str, tolerance: float = 1e-3):
    """A normalised ``[x, y, w, h]`` inside the image (within ``tolerance``), else DatasetError."""
    x, y, w, h = box
    # asked as "inside?", not "outside?": every comparison with NaN is false, so a NaN box is refused too
    if not (w > 0 and h > 0 and x >= -tolerance and y >= -tolerance and x + w <= 1 + tolerance
            and y + h <= 1 + tolerance):
        raise DatasetError(file, entry, f"box {list(box)} is not a normalised [x, y, w, h] inside the image")
    return tuple(float(v) for v in box)


# byte-order marks a spreadsheet may write, and the text they announce (UTF-32's before UTF-16's, which begin them)
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_SAVE_AS = "save it as UTF-8 ('CSV UTF-8' in a spreadsheet)"


def _encoding(head: bytes) -> str:
    return next((name for bom, name in _BOMS if head.startswith(bom)), "utf-8")


def _not_text(path: Path, line: int, encoding: str, byte: int) -> DatasetError:
    return DatasetError(path, f"line {line}", f"not {encoding.removesuffix('-sig').upper()} text (byte 0x{byte:02x}): "
                                              f"{_SAVE_AS}")


def _nul(path: Path, line: int) -> DatasetError:
    return DatasetError(path, f"line {line}", f"a NUL character: UTF-16 or UTF-32 text without a byte-order mark? "
                                              f"{_SAVE_AS}")


def read_text(path: Path) -> str:
    """An annotation file's whole text: UTF-8, or UTF-8 / UTF-16 / UTF-32 announced by a byte-order mark (a
    spreadsheet's 'CSV UTF-8' and 'Unicode Text'). Anything else is a ``DatasetError`` naming the line, where a
    decode error was a traceback (e.g. a CSV saved in a Windows code page, with accented species names)."""
    if not path.is_file():
        raise DatasetError(path, "file", "not found")
    raw = path.read_bytes()
    encoding = _encoding(raw[:4])
    if encoding.startswith("utf-8") and b"\x00" in raw:  # before decoding: UTF-16 without a mark is not UTF-8 either
        raise _nul(path, raw[:raw.index(b"\x00")].count(b"\n") + 1)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        raise _not_text(path, raw[:err.start].count(b"\n") + 1, encoding, raw[err.start]) from None
    if "\x00" in text:
        raise _nul(path, text[:text.index("\x00")].count("\n") + 1)
    return text


def text_lines(path: Path) -> Iterator[str]:
    """An annotation file's lines as ``read_text`` decodes it, split as ``csv`` wants (``newline=""``), but read a
    chunk at a time so a large UTF-8 CSV is never held whole (UTF-16 and UTF-32 files are)."""
    if not path.is_file():
        raise DatasetError(path, "file", "not found")
    with path.open("rb") as handle:
        encoding = _encoding(handle.read(4))
    if encoding not in ("utf-8", "utf-8-sig"):
        yield from io.StringIO(read_text(path), newline="")
        return
    number = 0
    try:
        with path.open(encoding=encoding, newline="") as lines:
            for number, line in enumerate(lines, start=1):
                if "\x00" in line:
                    raise _nul(path, number)
                yield line
    except UnicodeDecodeError:
        read_text(path)  # decodes the whole file once more, to name the line the bad byte is on
        raise DatasetError(path, f"line {number + 1}", f"not UTF-8 text: {_SAVE_AS}") from None


@contextmanager
def understood(file: Path, kind: str) -> Iterator[None]:
    """Around a reader: a value of the wrong type where the format wants another (a bbox of 12, a conf of "high", a
    category without an id) surfaces as a KeyError, TypeError... deep in it; this makes it one ``DatasetError``."""
    try:
        yield
    except DatasetError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        raise DatasetError(file, "file", f"not a {kind} file the readers understand "
                                         f"({type(exc).__name__}: {str(exc)[:200]})") from None


def read_json(json_path: Path) -> dict:
    """A JSON file's top-level object, or a ``DatasetError`` naming the file and the line."""
    text = read_text(json_path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(json_path, f"line {err.lineno}", f"not JSON: {err.msg}") from None
    if not isinstance(data, dict):
        raise DatasetError(json_path, "top level", "not a JSON object")
    return data

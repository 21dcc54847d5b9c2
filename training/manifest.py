"""Dataset manifests: image links with captions, as JSON, JSONL, CSV or TXT.

The format is the reference project's (`logs-train.json` and friends): one record per image with
`link` (the image file) and `caption` (what it shows). Other columns (`category`, `source`,
`width`, `height`, ...) are kept as they are.

    .json   a list of objects: [{"link": "Vietnam ao dai/Image_0_1.jpg", "caption": "...", ...}]
            ({"data": [...]}, an object holding the list, is read too)
    .jsonl  one such object per line
    .csv    a header row naming `link` and `caption` (any order, more columns allowed), then one
            row per record. Captions with commas, quotes or newlines are quoted (RFC 4180). A file
            whose first row starts with an image file name is read as the reference's headerless
            `link,caption`; without a header, fields after the first are one caption that had
            unquoted commas. An empty cell means the column is absent for that record.
    .txt    one record per line, `link<TAB>caption`; the only form this module writes. When a line
            has no tab it is read as `link | caption` (split at the first " | "), else as
            `link,caption` (split at the first comma, so links with commas need the tab form). TXT
            holds link and caption only: other columns are dropped, and links or captions with
            tabs or line breaks cannot be written (use JSON, JSONL or CSV for those).

Surrounding whitespace of links and captions is not significant and is dropped when reading, so
every format round-trips exactly what it holds. Files are UTF-8 (a BOM is accepted) and written
without escaping non-ASCII text, so Vietnamese captions stay readable.

Relative links are relative to the manifest's folder. Writing a manifest rewrites each link
relative to the new manifest's folder when the image lies below it, and absolute otherwise, so a
converted manifest points at the same files wherever it is written. Links are written with "/".
URLs are kept as they are (validation reports them: training needs local files).

    imagebot data from-folders dataset/ -o dataset/logs-train.json --template "a photo of {category}"
    imagebot data convert dataset/logs-train.json dataset/logs-train.csv
    imagebot data validate dataset/logs-train.json --fix-out dataset/clean.json
    imagebot data stats dataset/logs-train.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from bot.files.atomic import write_atomic

FORMATS = (".json", ".jsonl", ".csv", ".txt")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_TEMPLATE = "a photo of {category}"
DEFAULT_MIN_SIDE = 64
DEFAULT_DUP_DISTANCE = 6  # of 64 pHash bits: resized / re-encoded copies land at 0-4, distinct images near 32
NO_CATEGORY = "(none)"


class ManifestError(ValueError):
    """A manifest or an argument that cannot be used; the message says what is allowed."""


@dataclass
class Record:
    """One image of a manifest."""

    link: str  # as written in the manifest (relative to its folder, absolute, or a URL)
    caption: str
    extra: dict[str, Any] = field(default_factory=dict)  # other columns, in their order
    path: Path | None = None  # the image file the link points at; None for URLs
    line: int | None = None  # where it was read: line number (JSONL, CSV, TXT) ...
    index: int = 0  # ... and position among the records (0-based)

    def where(self) -> str:
        return f"line {self.line}" if self.line else f"item {self.index + 1}"

    @property
    def category(self) -> str:
        """The `category` column, else the image's folder name (the reference's folder-per-category layout)."""
        explicit = str(self.extra.get("category") or "").strip()
        if explicit:
            return explicit
        if self.path is not None and self.path.parent.name:
            return self.path.parent.name
        return NO_CATEGORY


def is_url(link: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", link) is not None


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ManifestError(f"{path}: unknown manifest type {suffix or '(no extension)'!r}; "
                            f"use {', '.join(FORMATS[:-1])} or {FORMATS[-1]}")
    return suffix


# =============================================================================================
# Reading
# =============================================================================================


def read_manifest(path: str | Path) -> list[Record]:
    """The records of a .json/.jsonl/.csv/.txt manifest (see the module docstring for the forms).

    Raises ManifestError (a ValueError) naming the file and line for anything it cannot read.
    """
    path = Path(path)
    suffix = _format_of(path)
    try:
        # newline="" keeps line breaks inside quoted CSV captions exactly as written.
        with open(path, encoding="utf-8-sig", newline="" if suffix == ".csv" else None) as stream:
            text = stream.read()
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: is a folder, expected a manifest file") from None
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); "
                            "save it as UTF-8") from None
    reader = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".txt": _read_txt}[suffix]
    records = reader(text, path)
    for index, record in enumerate(records):
        record.index = index
        record.link, record.caption = record.link.strip(), record.caption.strip()
        if not record.link:
            raise ManifestError(f"{path} {record.where()}: empty link")
        record.path = _resolve(record.link, path.parent)
    return records


def _resolve(link: str, folder: Path) -> Path | None:
    if is_url(link):
        return None
    path = Path(link)
    if not path.is_absolute():
        path = folder / path
        # Manifests written on Windows (as the reference project's were) use backslashes.
        if "\\" in link and os.sep == "/" and not path.exists():
            path = folder / link.replace("\\", "/")
    return Path(os.path.normpath(path))


def _record(item: Any, path: Path, where: str, line: int | None) -> Record:
    if not isinstance(item, dict) or "link" not in item or "caption" not in item:
        raise ManifestError(f"{path} {where}: every entry needs 'link' and 'caption', got {item!r:.120}")
    extra = {k: v for k, v in item.items() if k not in ("link", "caption")}
    caption = "" if item["caption"] is None else str(item["caption"])
    return Record(str(item["link"]), caption, extra, line=line)


def _json_error(error: json.JSONDecodeError, path: Path, line: int | None = None) -> ManifestError:
    return ManifestError(f"{path} line {line or error.lineno} column {error.colno}: "
                         f"malformed JSON ({error.msg})")


def _read_json(text: str, path: Path) -> list[Record]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise _json_error(error, path) from None
    if isinstance(data, dict):  # {"data": [...]} or {"images": [...]}
        data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        raise ManifestError(f"{path}: expected a list of {{\"link\": ..., \"caption\": ...}} objects")
    return [_record(item, path, f"item {i + 1}", None) for i, item in enumerate(data)]


def _read_jsonl(text: str, path: Path) -> list[Record]:
    records = []
    # split("\n"), not splitlines(): a caption may hold U+2028 and friends, which JSON leaves raw.
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise _json_error(error, path, number) from None
            records.append(_record(item, path, f"line {number}", number))
    return records


def _read_csv(text: str, path: Path) -> list[Record]:
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    try:
        line = 1
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append((line, row))
            line = reader.line_num + 1
    except csv.Error as error:
        raise ManifestError(f"{path} line {reader.line_num}: malformed CSV ({error})") from None
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0][1]]
    if "link" in header and "caption" in header:
        return _csv_with_header(rows, header, path)
    first = rows[0][1][0].strip()
    if len(rows[0][1]) >= 2 and (is_url(first) or first.lower().endswith(IMAGE_SUFFIXES)):
        # The reference's headerless link,caption: an unquoted comma split the caption.
        return [Record(row[0], ",".join(row[1:]), line=line) for line, row in rows]
    raise ManifestError(f"{path}: the first row must be a header naming the link and caption columns "
                        f"(got {','.join(rows[0][1])[:80]!r}), e.g. link,caption,category")


def _csv_with_header(rows: list[tuple[int, list[str]]], header: list[str], path: Path) -> list[Record]:
    names = [cell.strip() for cell in rows[0][1]]
    records = []
    for line, row in rows[1:]:
        if len(row) > len(names):
            raise ManifestError(f"{path} line {line}: {len(row)} fields, the header has {len(names)}; "
                                "put captions that contain commas in double quotes")
        values = dict(zip(header, row))
        extra = {name: cell for name, key, cell in zip(names, header, row)
                 if key not in ("link", "caption") and cell != ""}
        records.append(Record(values.get("link", ""), values.get("caption", ""), extra, line=line))
    return records


def _read_txt(text: str, path: Path) -> list[Record]:
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        for separator in ("\t", " | ", ","):
            link, found, caption = line.partition(separator)
            if found:
                break
        else:
            raise ManifestError(f"{path} line {number}: no caption; write link<TAB>caption")
        if not records and link.strip().lower() == "link" and caption.strip().lower() == "caption":
            continue  # a header line
        records.append(Record(link, caption, line=number))
    return records


# =============================================================================================
# Writing
# =============================================================================================


def write_manifest(records: Iterable[Record], path: str | Path) -> list[str]:
    """Write `records` to `path` in the format its extension names, atomically: a temp file in the
    same folder, fsynced, then os.replace, so readers see the old file or the complete new one.

    Returns the extra columns the format could not hold (TXT keeps link and caption only).
    """
    path = Path(path)
    suffix = _format_of(path)
    folder = Path(os.path.abspath(path.parent))
    rows = [(_link_for(record, folder), record) for record in records]
    columns = list(dict.fromkeys(key for _, record in rows for key in record.extra))
    if suffix == ".txt":
        for link, record in rows:
            if any(ch in text for text in (link, record.caption) for ch in "\t\r\n"):
                raise ManifestError(f"{path}: {record.where()} ({link}) has a tab or line break, which "
                                    "TXT cannot hold; write .json, .jsonl or .csv instead")
    writers = {".json": _write_json, ".jsonl": _write_jsonl, ".csv": _write_csv, ".txt": _write_txt}
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda stream: writers[suffix](stream, rows, columns))
    return columns if suffix == ".txt" else []


def _link_for(record: Record, folder: Path) -> str:
    if record.path is None:
        return record.link
    image = Path(os.path.abspath(record.path))
    try:
        return image.relative_to(folder).as_posix()
    except ValueError:  # not below the manifest's folder
        return image.as_posix()


def _as_object(link: str, record: Record) -> dict[str, Any]:
    return {"link": link, "caption": record.caption, **record.extra}


def _write_json(stream, rows, columns) -> None:
    stream.write("[")
    for number, (link, record) in enumerate(rows):
        stream.write(",\n " if number else "\n ")
        json.dump(_as_object(link, record), stream, ensure_ascii=False)
    stream.write("\n]\n" if rows else "]\n")


def _write_jsonl(stream, rows, columns) -> None:
    for link, record in rows:
        stream.write(json.dumps(_as_object(link, record), ensure_ascii=False) + "\n")


def _write_csv(stream, rows, columns) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["link", "caption", *columns])
    for link, record in rows:
        extras = [record.extra.get(c) for c in columns]
        writer.writerow([link, record.caption, *("" if v is None else v for v in extras)])


def _write_txt(stream, rows, columns) -> None:
    for link, record in rows:
        stream.write(f"{link}\t{record.caption}\n")


def convert(src: str | Path, dst: str | Path) -> list[str]:
    """Read `src` and write it as `dst` (format from each extension; links rewritten for dst's
    folder). Returns the columns dropped because dst's format cannot hold them."""
    _format_of(Path(dst))  # refuse a bad target before reading a large source
    return write_manifest(read_manifest(src), dst)


def training_pairs(path: str | Path) -> list[tuple[Path, str]]:
    """(image file, caption) pairs for training: every link must be a local file."""
    pairs = []
    for record in read_manifest(path):
        if record.path is None:
            raise ManifestError(f"{path} {record.where()}: {record.link} is a URL; download the images "
                                "first and link the files")
        pairs.append((record.path, record.caption))
    if not pairs:
        raise ManifestError(f"{path}: no images listed")
    return pairs


# =============================================================================================
# Folder per category -> records
# =============================================================================================


def _natural_key(text: str) -> list:
    """Image_0_2.jpg before Image_0_10.jpg, as a person would list them."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.casefold())
            for part in re.split(r"(\d+)", text) if part]


def from_folders(root: str | Path, template: str = DEFAULT_TEMPLATE) -> list[Record]:
    """One record per image under `root/<category>/` (.jpg/.jpeg/.png/.webp, any case, subfolders
    included), categories and files in natural order. The caption is the sidecar text file
    (`Image_0_1.txt`, else `Image_0_1.jpg.txt`) when it exists and is not blank, else `template`
    with `{category}` replaced by the folder name. Hidden files and folders are skipped; images
    directly in `root` have no category and are skipped too (see `loose_images`).
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: no such folder (expected ROOT/<category>/<image>)")
    check_template(template, ("category",))
    records = []
    categories = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: _natural_key(p.name))
    for folder in categories:
        for image in _images_below(folder):
            caption = _sidecar_caption(image) or template.format(category=folder.name)
            records.append(Record(image.relative_to(root).as_posix(), caption,
                                  {"category": folder.name}, path=image, index=len(records)))
    return records


def loose_images(root: str | Path) -> list[Path]:
    """Images directly in `root`, which from_folders skips (they belong in a category folder)."""
    return [p for p in sorted(Path(root).iterdir()) if _is_image(p)]


def check_template(template: str, fields: Sequence[str], error: type[Exception] = ManifestError) -> None:
    """Raise `error` unless `template` formats with these fields (and no others)."""
    try:
        template.format(**{name: "x" for name in fields})
    except (KeyError, IndexError, ValueError) as problem:
        listed = ", ".join("{" + name + "}" for name in fields)
        raise error(f"caption template {template!r} is not usable ({problem}); allowed fields: {listed} "
                    f"(it may contain {listed} and plain text)") from None


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def _images_below(folder: Path) -> list[Path]:
    found = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(current) / name for name in files if _is_image(Path(current) / name)]
    return sorted(found, key=lambda p: _natural_key(p.relative_to(folder).as_posix()))


def _sidecar_caption(image: Path) -> str:
    for sidecar in (image.with_suffix(".txt"), image.with_name(image.name + ".txt")):
        if sidecar.is_file():
            text = sidecar.read_text(encoding="utf-8-sig").strip()
            if text:
                return text
    return ""


# =============================================================================================
# Validation
# =============================================================================================


@dataclass
class Problem:
    kind: str  # remote | duplicate_link | missing | unreadable | tiny | duplicate_image | empty_caption
    index: int  # the record's position in the manifest (0-based)
    where: str  # "line 7" or "item 7"
    link: str
    message: str  # what is wrong and what to do

    def __str__(self) -> str:
        return f"{self.where} ({self.link}): {self.message}"


@dataclass
class CategoryRow:
    category: str
    images: int
    example: str  # file name of its first image


@dataclass
class Report:
    records: int
    problems: list[Problem]
    categories: list[CategoryRow]

    @property
    def bad_indexes(self) -> set[int]:
        return {p.index for p in self.problems}

    def to_json(self) -> dict[str, Any]:
        return {"records": self.records, "problems": [asdict(p) for p in self.problems],
                "categories": [asdict(c) for c in self.categories]}


def category_table(records: list[Record]) -> list[CategoryRow]:
    """Image count and an example file per category, categories in natural order."""
    counts: dict[str, int] = defaultdict(int)
    examples: dict[str, str] = {}
    for record in records:
        counts[record.category] += 1
        examples.setdefault(record.category, record.link.replace("\\", "/").rsplit("/", 1)[-1])
    return [CategoryRow(name, counts[name], examples[name]) for name in sorted(counts, key=_natural_key)]


def format_table(rows: list[CategoryRow]) -> str:
    """A Markdown table like the reference project's dataset table, padded to read in a terminal."""
    lines = [("Category", "Images", "Example file")]
    lines += [(row.category, f"{row.images:,}", row.example) for row in rows]
    lines += [("Total", f"{sum(row.images for row in rows):,}", "")]
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    out = []
    for number, (name, count, example) in enumerate(lines):
        out.append(f"| {name:<{widths[0]}} | {count:>{widths[1]}} | {example:<{widths[2]}} |")
        if number == 0:
            out.append(f"|:{'-' * (widths[0] + 1)}|{'-' * (widths[1] + 1)}:|:{'-' * (widths[2] + 1)}|")
    return "\n".join(out)


def validate(records: list[Record], min_side: int = DEFAULT_MIN_SIDE,
             dup_distance: int = DEFAULT_DUP_DISTANCE) -> Report:
    """Check every record: a local link, no repeated link, an image file that exists, decodes fully
    and is at least `min_side` px on its shorter side, no near-duplicate image (perceptual hashes
    within `dup_distance` of 64 bits), a caption. A repeated link or image is reported on the later
    record, so dropping the reported records keeps the first of each."""
    if min_side < 1:
        raise ManifestError(f"min side must be at least 1 px, got {min_side}")
    if not 0 <= dup_distance <= 32:
        raise ManifestError(f"duplicate distance must be between 0 and 32 bits (of 64), got {dup_distance}")
    problems: list[Problem] = []

    def report(record: Record, kind: str, message: str) -> None:
        problems.append(Problem(kind, record.index, record.where(), record.link, message))

    first_with_link: dict[str, Record] = {}
    hashed: list[tuple[Record, int]] = []
    for record in records:
        if not record.caption:
            report(record, "empty_caption", "empty caption; write one (or drop the record)")
        key = record.link if record.path is None else str(record.path)
        if key in first_with_link:
            report(record, "duplicate_link", f"same image as {first_with_link[key].where()}; "
                   "remove this record")
            continue
        first_with_link[key] = record
        if record.path is None:
            report(record, "remote", "a URL, not a local file; download the image and link the file")
            continue
        if not record.path.is_file():
            report(record, "missing", f"file not found ({record.path}); fix the link or remove the record")
            continue
        try:
            size, digest = image_info(record.path)
        except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
            report(record, "unreadable", f"cannot decode the image ({type(error).__name__}: {error}); "
                   "download it again or remove the record")
            continue
        if min(size) < min_side:
            report(record, "tiny", f"image is {size[0]}x{size[1]}, under {min_side} px on its shorter side; "
                   "replace it with a larger one or remove the record")
            continue
        hashed.append((record, digest))
    for later, earlier in near_duplicates([digest for _, digest in hashed], dup_distance):
        record, original = hashed[later][0], hashed[earlier][0]
        distance = bin(hashed[later][1] ^ hashed[earlier][1]).count("1")
        report(record, "duplicate_image", f"near-duplicate of {original.where()} ({original.link}, "
               f"{distance} of 64 bits differ); remove one of them")
    problems.sort(key=lambda p: p.index)
    return Report(len(records), problems, category_table(records))


def image_info(path: Path) -> tuple[tuple[int, int], int]:
    """(width, height) and the 64-bit DCT perceptual hash of an image; raises if it does not fully decode."""
    from PIL import Image

    with Image.open(path) as image:
        size = image.size
        # JPEG decodes at 1/2../1/8 scale when asked: much faster, still reads (and checks) every byte.
        image.draft("L", (128, 128))
        image.load()
        return size, phash(image)


def phash(image) -> int:
    """DCT perceptual hash (pHash): grey 32x32 -> 2-D DCT -> the 8x8 lowest frequencies -> one bit
    per coefficient, set when above their median. Resizing, re-encoding and mild colour changes
    move few bits; different pictures differ in about half of them."""
    import numpy as np
    from PIL import Image

    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT @ grey @ _DCT.T)[:8, :8]
    bits = (low > np.median(low)).flatten()
    return int("".join("1" if bit else "0" for bit in bits), 2)


def _dct_matrix(n: int = 32):
    import numpy as np

    k, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.cos(np.pi * (2 * x + 1) * k / (2 * n))


_DCT = _dct_matrix()


def near_duplicates(hashes: list[int], max_distance: int) -> list[tuple[int, int]]:
    """(later, earlier) index pairs of hashes within `max_distance` bits, each later hash paired with
    the first earlier one. Pigeonhole: hashes that differ in at most d bits agree exactly on at least
    one of d + 1 disjoint bit ranges, so only hashes sharing a range value are compared, not all pairs."""
    blocks = max_distance + 1
    ranges = [(64 * b // blocks, 64 * (b + 1) // blocks) for b in range(blocks)]
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    pairs = []
    for i, h in enumerate(hashes):
        keys = [(b, (h >> lo) & ((1 << (hi - lo)) - 1)) for b, (lo, hi) in enumerate(ranges)]
        candidates = sorted({j for key in keys for j in buckets[key]})
        match = next((j for j in candidates if bin(h ^ hashes[j]).count("1") <= max_distance), None)
        if match is not None:
            pairs.append((i, match))
        for key in keys:
            buckets[key].append(i)
    return pairs


# =============================================================================================
# imagebot data from-folders | convert | validate | stats
# =============================================================================================


def add_commands(subparsers) -> None:
    command = subparsers.add_parser(
        "from-folders", help="write a manifest from a folder per category (ROOT/<category>/<image>)",
        description="One record per image under ROOT/<category>/ (.jpg .jpeg .png .webp); the caption "
                    "is the sidecar <image>.txt when present, else the template over the folder name.")
    command.add_argument("root", metavar="ROOT")
    command.add_argument("-o", "--output", metavar="OUT", required=True,
                         help="manifest to write (.json, .jsonl, .csv or .txt)")
    command.add_argument("--template", default=DEFAULT_TEMPLATE,
                         help=f"caption for images without a sidecar (default: {DEFAULT_TEMPLATE!r})")
    command.set_defaults(func=_from_folders_command)

    command = subparsers.add_parser(
        "convert", help="convert a manifest between .json, .jsonl, .csv and .txt",
        description="Read SRC and write DST, formats from the extensions; links are rewritten to stay "
                    "valid from DST's folder.")
    command.add_argument("src", metavar="SRC")
    command.add_argument("dst", metavar="DST")
    command.set_defaults(func=_convert_command)

    command = subparsers.add_parser(
        "validate", help="check a manifest's images and captions (exit 1 when problems are found)",
        description="Reports missing, unreadable and tiny images, near-duplicate images, repeated "
                    "links, URLs and empty captions, then the images per category.")
    command.add_argument("manifest", metavar="MANIFEST")
    command.add_argument("--min-side", type=int, default=DEFAULT_MIN_SIDE, metavar="N",
                         help=f"smallest allowed shorter side in px (default {DEFAULT_MIN_SIDE})")
    command.add_argument("--dup-distance", type=int, default=DEFAULT_DUP_DISTANCE, metavar="N",
                         help="images whose perceptual hashes differ in at most N of 64 bits are "
                              f"duplicates (0-32, default {DEFAULT_DUP_DISTANCE}; 0: only identical)")
    command.add_argument("--json", action="store_true", help="print the report as JSON")
    command.add_argument("--fix-out", metavar="CLEAN",
                         help="also write the manifest without the records that have problems")
    command.set_defaults(func=_validate_command)

    command = subparsers.add_parser("stats", help="images per category of a manifest",
                                    description="Image count and an example file per category.")
    command.add_argument("manifest", metavar="MANIFEST")
    command.set_defaults(func=_stats_command)


def _cli_errors(name: str):
    """Runs a command: bad input -> one line on stderr and 2; a failed write -> 1."""
    def wrap(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def command(args: argparse.Namespace) -> int:
            try:
                return run(args)
            except ManifestError as error:
                print(f"imagebot data {name}: {error}", file=sys.stderr)
                return 2
            except OSError as error:
                print(f"imagebot data {name}: {error}", file=sys.stderr)
                return 1
        return command
    return wrap


def _dropped_note(columns: list[str]) -> None:
    if columns:
        print(f"note: TXT holds link and caption only; dropped columns: {', '.join(columns)}", file=sys.stderr)


@_cli_errors("from-folders")
def _from_folders_command(args: argparse.Namespace) -> int:
    _format_of(Path(args.output))
    records = from_folders(args.root, args.template)
    loose = loose_images(args.root)
    skipped = (f"{len(loose)} image(s) directly in {args.root} (e.g. {loose[0].name}) have no category; "
               "move them into a category folder") if loose else ""
    if not records:
        raise ManifestError(f"{args.root}: no images in category folders (expected ROOT/<category>/"
                            f"<image> with {', '.join(IMAGE_SUFFIXES)})" + (f"; {skipped}" if skipped else ""))
    if skipped:
        print(f"note: skipped {skipped}", file=sys.stderr)
    _dropped_note(write_manifest(records, args.output))
    print(format_table(category_table(records)))
    print(f"wrote {len(records)} records to {args.output}")
    return 0


@_cli_errors("convert")
def _convert_command(args: argparse.Namespace) -> int:
    _dropped_note(convert(args.src, args.dst))
    print(f"wrote {args.dst}")
    return 0


@_cli_errors("validate")
def _validate_command(args: argparse.Namespace) -> int:
    if args.fix_out:
        _format_of(Path(args.fix_out))
    records = read_manifest(args.manifest)
    report = validate(records, min_side=args.min_side, dup_distance=args.dup_distance)
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=1))
    else:
        for problem in report.problems:
            print(f"{args.manifest} {problem}")
        print(format_table(report.categories))
        bad = len(report.bad_indexes)
        print(f"{report.records} records: " + (f"{len(report.problems)} problem(s) in {bad} record(s)"
                                                 if report.problems else "no problems"))
    if args.fix_out:
        clean = [r for r in records if r.index not in report.bad_indexes]
        _dropped_note(write_manifest(clean, args.fix_out))
        print(f"wrote {len(clean)} of {len(records)} records to {args.fix_out}",
              file=sys.stderr if args.json else sys.stdout)
    return 1 if report.problems else 0


@_cli_errors("stats")
def _stats_command(args: argparse.Namespace) -> int:
    print(format_table(category_table(read_manifest(args.manifest))))
    return 0

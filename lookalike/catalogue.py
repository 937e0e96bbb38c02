"""Read a catalogue: a folder of category sub-folders, or a CSV / JSONL manifest.

A manifest has the columns ``id``, ``image`` (a path relative to the manifest's folder) and
``category``, optionally ``product_id`` (photos of one product share it); every other column
becomes filterable metadata: text, unless a CSV header declares a type (``price:number``,
``stock:int``, ``on_sale:bool``; a cell that is not one fails its row). A row that cannot be used (no
image, a path outside the catalogue root, a duplicate id, ...) becomes a `RowError`, reported
by ingest, and never stops the others. Nothing outside the catalogue root is ever read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from lookalike.errors import CatalogueError
from lookalike.images import image_suffixes

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
#: Ids appear in URL paths (`/v1/items/<id>`), so they are one path segment of safe characters.
ITEM_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,199}$")
RESERVED_COLUMNS = ("id", "image", "category", "product_id")
#: ``https://cdn.../a.jpg``: a product feed's image link, which ingest does not download.
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")
INTEGER = re.compile(r"-?[0-9]{1,18}")


@dataclass(frozen=True)
class CatalogueItem:
    """One catalogue entry: its id, image file, category, product and free metadata."""

    id: str
    path: Path  # absolute path of the image file
    image: str  # the path relative to the catalogue root, as stored and served
    category: str
    metadata: dict[str, Any] = field(default_factory=dict)
    product_id: str | None = None  # None: a product of its own
    image_source: str = "catalogue"  # or "upload": an item added over the API (lookalike.journal)


@dataclass(frozen=True)
class RowError:
    """A catalogue entry that cannot be ingested, with the reason."""

    item_id: str | None
    path: str | None
    reason: str


@dataclass
class Catalogue:
    root: Path
    items: list[CatalogueItem]
    errors: list[RowError]
    shard: Shard | None = None  # set when this is one worker's slice of a larger catalogue
    source: str = "catalogue"  # the image source of its items: "catalogue", or "upload" (the API's)


def read_catalogue(source: Path) -> Catalogue:
    """Read a folder or a manifest; per-row problems are collected, not raised."""
    source = Path(source)
    if source.is_dir():
        root, rows = source, _folder_rows(source)
    elif source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES:
        root, rows = source.parent, _manifest_rows(source)
    elif source.exists():
        raise CatalogueError(
            f"{source} is neither a folder nor a manifest ({', '.join(MANIFEST_SUFFIXES)}); set "
            "CATALOGUE_DIR or pass a folder of category sub-folders or a CSV/JSONL manifest"
        )
    else:
        raise CatalogueError(
            f"catalogue {source} does not exist: set CATALOGUE_DIR or pass the catalogue path "
            "(a folder of category sub-folders, or a CSV/JSONL manifest)"
        )
    return _validate(root.resolve(), rows)


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` of ``count`` (0-based): each item id belongs to exactly one slice, by hash."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"``, e.g. ``"0/3"``."""
        index, _, count = text.partition("/")
        if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
            raise CatalogueError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/3")
        return cls(int(index), int(count))

    def holds(self, item_id: str) -> bool:
        digest = hashlib.sha1(item_id.encode(), usedforsecurity=False).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


def take_shard(catalogue: Catalogue, shard: Shard) -> Catalogue:
    """The part of a catalogue that one of several parallel ingest workers handles."""
    items = [item for item in catalogue.items if shard.holds(item.id)]
    errors = [error for error in catalogue.errors if error.item_id is None or shard.holds(error.item_id)]
    return Catalogue(catalogue.root, items, errors, shard, catalogue.source)


def derive_item_id(image: str) -> str:
    """The id of an item that has none: its relative path, without suffix, '/' -> '-'. A path an
    id cannot spell (a space, an accent, a bracket: "Running Shoes/red shoe (2).jpg") gets an
    ASCII form of it and a short hash of the path, so two such paths never share an id."""
    plain = str(PurePosixPath(image).with_suffix("")).replace("/", "-")
    if ITEM_ID_PATTERN.match(plain):
        return plain
    ascii_form = unicodedata.normalize("NFKD", plain).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9._:@+=-]+", "_", ascii_form).strip("_.:@+=-")[:180] or "item"
    return f"{slug}-{hashlib.sha1(image.encode(errors='surrogateescape'), usedforsecurity=False).hexdigest()[:8]}"


def _folder_rows(root: Path) -> Iterator[dict[str, Any]]:
    """``<category>/<file>`` rows; a photo beside the categories or a folder inside one is a row
    error (reported, never silently left out), hidden files are skipped."""
    visible = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    suffixes = image_suffixes()  # files beside the category folders with these are misplaced photos
    for photo in (p for p in visible if p.is_file() and p.suffix.lower() in suffixes):
        yield {"image": photo.name, "_error": "not in a category folder: images go in <category>/<file>"}
    for category_dir in (p for p in visible if p.is_dir()):
        try:
            images = sorted(category_dir.iterdir())
        except OSError as e:  # one unreadable category fails its own row, not the catalogue
            yield {"image": category_dir.name, "_error": f"cannot read the category folder: {e.strerror or e}"}
            continue
        for image in images:
            if image.name.startswith("."):
                continue
            relative = f"{category_dir.name}/{image.name}"
            if image.is_dir():
                yield {"image": relative, "_error": "a folder inside a category folder is not read: <category>/<file>"}
                continue
            yield {"id": derive_item_id(relative), "image": relative, "category": category_dir.name}


def _manifest_rows(manifest: Path) -> Iterator[dict[str, Any]]:
    try:
        text = manifest.read_text(encoding="utf-8-sig", errors="surrogateescape")
    except OSError as e:
        raise CatalogueError(f"cannot read manifest {manifest}: {e}") from e
    if manifest.suffix.lower() == ".csv":
        yield from _csv_rows(manifest, text)
    else:
        yield from _jsonl_rows(text)


def _csv_rows(manifest: Path, text: str) -> Iterator[dict[str, Any]]:
    """Rows as the csv module splits them (a quoted cell may hold line breaks, and ``str.splitlines``
    would also cut at Unicode separators), each with the line it starts on."""
    lines = io.StringIO(text, newline="")
    reader = csv.reader(lines, delimiter=_delimiter(text), skipinitialspace=True)  # "id, image" too
    columns, types = _typed_header(next(reader, []))
    if not _names_required_columns(columns):
        raise CatalogueError(f"manifest {manifest} needs the columns id, image, category; it has {', '.join(columns)}")
    image_column = "image" if "image" in columns else "path"
    ended = reader.line_num
    for cells in reader:
        line, ended = ended + 1, reader.line_num
        if not cells:  # a blank line
            continue
        if len(cells) > len(columns):
            yield {"_error": f"line {line}: {len(cells) - len(columns)} cells more than the header has"}
            continue
        values = {k: v for k, v in zip(columns, cells, strict=False) if v != ""}  # fewer cells: absent
        values["image"] = values.pop(image_column, None)
        values["_line"] = line
        try:
            values.update({k: CELL_TYPES[types[k]](v) for k, v in values.items() if k in types})
        except ValueError as e:  # the row fails, named by its id and image
            values = {"_error": f"line {line}: {e}", "id": values.get("id"), "image": values["image"]}
        yield values


def _delimiter(text: str) -> str:
    """The comma, unless the header names the required columns only when cut at ";" or a tab: a
    spreadsheet saved as CSV where the decimal mark is a comma uses ";"."""
    header = text.split("\n", 1)[0]
    for delimiter in (",", ";", "\t"):
        if _names_required_columns([name.strip().strip('"').partition(":")[0] for name in header.split(delimiter)]):
            return delimiter
    return ","


def _names_required_columns(columns: list[str]) -> bool:
    """Whether a header has an image column (``image``, or ``path`` as the shared manifest) and ``category``."""
    return "category" in columns and ("image" in columns or "path" in columns)


def _typed_header(header: list[str]) -> tuple[list[str], dict[str, str]]:
    """Column names without their type suffix, and the declared types: ``price:number``,
    ``stock:int``, ``on_sale:bool`` (a column without one is text)."""
    columns, types = [], {}
    for column in header:
        name, _, kind = column.partition(":")
        if kind and kind not in CELL_TYPES:
            raise CatalogueError(f"column {column!r}: the type after ':' is one of {', '.join(CELL_TYPES)}")
        name = name if kind else column
        if name in columns:  # its later cell would silently win
            raise CatalogueError(f"column {name!r} appears twice in the header")
        columns.append(name)
        if kind:
            types[name] = kind
    return columns, types


def _number(text: str) -> float:
    if not NUMBER.fullmatch(text.strip()) or not math.isfinite(value := float(text)):
        raise ValueError(f"{text!r} is not a number")
    return value


def _integer(text: str) -> int:
    if not INTEGER.fullmatch(text.strip()):
        raise ValueError(f"{text!r} is not an integer")
    return int(text)


def _boolean(text: str) -> bool:
    if text.strip().lower() not in ("true", "false"):
        raise ValueError(f"{text!r} is not true or false")
    return text.strip().lower() == "true"


#: Declared CSV column types and how a cell becomes one (JSONL values are typed already).
CELL_TYPES = {"text": str, "number": _number, "int": _integer, "bool": _boolean}


def _jsonl_rows(text: str) -> Iterator[dict[str, Any]]:
    for line, raw in enumerate(text.split("\n"), start=1):  # JSON Lines: "\n" alone ends a row
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            yield {"_error": f"line {line}: not JSON ({e.msg})"}
            continue
        if not isinstance(row, dict):
            yield {"_error": f"line {line}: not a JSON object"}
            continue
        row["_line"] = line
        yield row


def _validate(root: Path, rows: Iterator[dict[str, Any]]) -> Catalogue:
    items: list[CatalogueItem] = []
    errors: list[RowError] = []
    seen: set[str] = set()
    for row in rows:
        try:
            item = _row_to_item(root, row)
        except ValueError as e:
            image = row.get("image")
            errors.append(RowError(_str_or_none(row.get("id")), _str_or_none(image), str(e)))
            continue
        if item.id in seen:
            errors.append(RowError(item.id, item.image, f"duplicate id {item.id!r}"))
            continue
        seen.add(item.id)
        items.append(item)
    return Catalogue(root=root, items=items, errors=errors)


def _row_to_item(root: Path, row: dict[str, Any]) -> CatalogueItem:
    if "_error" in row:
        raise ValueError(row["_error"])
    where = f"line {row['_line']}: " if "_line" in row else ""
    if any(_has_surrogates(v) for v in row.values()):
        raise ValueError(f"{where}not valid UTF-8: save the manifest as UTF-8 (a spreadsheet's 'CSV UTF-8')")
    image, category = row.get("image"), row.get("category")
    if not isinstance(image, str) or not image.strip():
        raise ValueError(f"{where}no image path")
    if not isinstance(category, str) or not category.strip():
        raise ValueError(f"{where}no category")
    item_id = str(row.get("id") or derive_item_id(image)).strip()
    if not ITEM_ID_PATTERN.match(item_id):
        raise ValueError(f"{where}id {item_id!r} must be 1-200 characters of A-Z a-z 0-9 . _ : @ + = -")
    product_id = row.get("product_id")
    if isinstance(product_id, bool) or not isinstance(product_id, str | int | None):
        raise ValueError(f"{where}product_id must be a text or a number")
    product = "" if product_id is None else str(product_id).strip()  # blank: a product of its own
    if len(product) > 200:
        raise ValueError(f"{where}product_id is longer than 200 characters")
    if URL.match(image.strip()):
        raise ValueError(
            f"{where}image {image!r} is a URL: the manifest lists photos on disk, by their path relative to it "
            "(download the feed's photos first)"
        )
    if "\\" in image and not (root / image).exists():  # written on Windows: shoes\red.jpg
        image = image.replace("\\", "/")
    path = resolve_inside(root, image)
    if path.exists() and not path.is_file():  # a FIFO would block the reader forever
        raise ValueError(f"{where}image path {image!r} is not a regular file")
    metadata = {k: v for k, v in row.items() if k not in RESERVED_COLUMNS and not k.startswith("_")}
    image_name = path.relative_to(root).as_posix()
    return CatalogueItem(item_id, path, image_name, category.strip(), metadata, product or None)


def resolve_inside(root: Path, relative: str) -> Path:
    """``root / relative`` with links resolved, or ValueError if that leaves ``root``."""
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).anchor or Path(relative).is_absolute():
        raise ValueError(f"image path {relative!r} is absolute; paths are relative to the catalogue root")
    try:
        path = (root / relative).resolve()
    except (RuntimeError, OSError):  # a symlink loop: RuntimeError before Python 3.13, OSError since
        raise ValueError(f"image path {relative!r} is a symbolic link loop") from None
    if not path.is_relative_to(root):
        raise ValueError(f"image path {relative!r} leaves the catalogue root")
    return path


def _has_surrogates(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)

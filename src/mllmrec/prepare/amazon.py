"""Readers for the raw Amazon review files: the 2014 McAuley release and the 2018 Ni et al. release.

Interactions come back as a pyarrow table ``user, item, rating, timestamp`` (nullable: rows with a
missing field are dropped later, as MMRec's ``dropna`` does). Metadata comes back as one dict per
wanted ASIN. Lines that cannot be read are skipped, counted and reported with their line numbers
(:class:`BadLines`); nothing in a file is ever executed (metadata is parsed with ``json.loads`` or
``ast.literal_eval``, never ``eval``).

Formats:
    2014 ``ratings_<Cat>.csv``: no header, ``user,asin,rating,unix_time``.
    2014 ``meta_<Cat>.json.gz``: one Python dict literal per line (single quotes).
    2018 ``<Cat>_5.json.gz`` / ``<Cat>.json.gz``: strict JSON lines with ``reviewerID, asin, overall,
    unixReviewTime`` (other keys ignored).
    2018 ``meta_<Cat>.json.gz``: strict JSON lines.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from mllmrec.data.errors import DatasetError
from mllmrec.data.text import clean_text

log = logging.getLogger(__name__)

INTERACTION_SCHEMA = pa.schema(
    [("user", pa.string()), ("item", pa.string()), ("rating", pa.float64()), ("timestamp", pa.int64())]
)
# the 2018 review keys, in INTERACTION_SCHEMA's order
REVIEW_KEYS_2018 = ("reviewerID", "asin", "overall", "unixReviewTime")
# how many bad lines are quoted in the warning (all are counted)
MAX_EXAMPLES = 10

__all__ = [
    "BadLines",
    "INTERACTION_SCHEMA",
    "open_maybe_gzip",
    "read_ratings_2014",
    "read_reviews_2018",
    "read_interactions",
    "parse_meta_line",
    "read_meta",
    "item_fields",
]


@dataclass
class BadLines:
    """Lines of one file that were skipped: a total count and the first few (line, reason, text)."""

    path: Path
    count: int = 0
    examples: list[tuple[int | None, str, str]] = field(default_factory=list)

    def add(self, line: int | None, reason: str, text: str | bytes = "") -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            if isinstance(text, bytes):
                text = text.decode("utf-8", errors="replace")
            text = text.rstrip("\r\n")
            self.examples.append((line, reason, text[:120] + ("..." if len(text) > 120 else "")))

    def message(self, what: str) -> str:
        """One human-readable paragraph: how many lines were skipped and where."""
        shown = "; ".join(f"line {n}: {reason}: {text!r}" for n, reason, text in self.examples)
        more = f" (first {len(self.examples)} shown)" if self.count > len(self.examples) else ""
        return f"{self.path}: skipped {self.count:,} malformed {what} line(s){more}: {shown}"

    def report(self, what: str) -> None:
        """Log a warning when any line was skipped."""
        if self.count:
            log.warning("%s", self.message(what))


def open_maybe_gzip(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading, decompressing when it starts with the gzip magic bytes."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return io.BufferedReader(gzip.open(path, "rb"), buffer_size=1 << 20)
    return open(path, "rb", buffering=1 << 20)


def _line_numbers(rows: np.ndarray, skipped_lines: Iterable[int]) -> np.ndarray:
    """Physical (1-based) line numbers of table ``rows`` when the lines in ``skipped_lines`` were
    dropped by the reader. Row r is the (r+1)-th line not skipped."""
    lines = np.asarray(rows, dtype=np.int64) + 1
    for skipped in sorted(skipped_lines):  # few: only malformed lines are skipped
        lines += lines >= skipped
    return lines


def read_ratings_2014(path: str | Path) -> tuple[pa.Table, BadLines]:
    """Read a 2014 ``ratings_<Cat>.csv`` (no header: user, asin, rating, unix time).

    Lines with the wrong number of fields and lines whose rating/time is not a number are skipped
    and reported with line numbers. Empty fields become nulls (dropped later with MMRec's dropna).
    Reading is done by pyarrow in C++; only a file with bad values is read a second time to find them.
    """
    path = Path(path)
    bad = BadLines(path)
    skipped: list[int] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        skipped.append(row.number)
        bad.add(row.number, f"expected 4 comma-separated fields, got {row.actual_columns}", row.text)
        return "skip"

    names = [f.name for f in INTERACTION_SCHEMA]

    def read(types: dict[str, pa.DataType]) -> pa.Table:
        bad.count = 0  # a second read reports every bad line again
        bad.examples.clear()
        skipped.clear()
        return pacsv.read_csv(
            path,
            # one thread: pyarrow only knows physical line numbers when it reads serially
            read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=1 << 24),
            # empty lines become all-null rows so row numbers keep matching line numbers
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(
                column_types=types, strings_can_be_null=True, null_values=[""],
                quoted_strings_can_be_null=False,
            ),
        )

    try:
        try:
            table = read({f.name: f.type for f in INTERACTION_SCHEMA})
        except pa.ArrowInvalid as err:
            if "conversion error to double" not in str(err) and "conversion error to int64" not in str(err):
                raise
            table = _coerce_numeric(read({name: pa.string() for name in names}), bad, skipped)
    except (pa.ArrowInvalid, OSError) as err:
        raise DatasetError(
            f"{path}: cannot be read as a ratings CSV (user,asin,rating,unix_time; no header): {err}. "
            "Is it the right file, complete and not compressed?"
        ) from err
    return table, bad


def _coerce_numeric(table: pa.Table, bad: BadLines, skipped: list[int]) -> pa.Table:
    """Convert the all-string rating/timestamp columns; rows with non-numeric values (or a
    fractional time) are dropped and reported with their physical line numbers."""
    rating_s = table.column("rating").to_pandas()
    time_s = table.column("timestamp").to_pandas()
    rating = pd.to_numeric(rating_s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    timestamp = pd.to_numeric(time_s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad_rating = np.isnan(rating) & rating_s.notna().to_numpy()
    fractional = ~np.isnan(timestamp) & (timestamp != np.floor(timestamp))
    bad_time = (np.isnan(timestamp) & time_s.notna().to_numpy()) | fractional
    bad_rows = np.flatnonzero(bad_rating | bad_time)
    bad_records = table.take(pa.array(bad_rows, type=pa.int64())).to_pylist()
    for row, line, record in zip(bad_rows, _line_numbers(bad_rows, skipped), bad_records):
        text = ",".join("" if v is None else str(v) for v in record.values())
        bad.add(int(line), "rating is not a number" if bad_rating[row] else "timestamp is not an integer", text)
    keep = np.ones(table.num_rows, dtype=bool)
    keep[bad_rows] = False
    rating, timestamp = rating[keep], timestamp[keep]
    no_time = np.isnan(timestamp)
    return pa.table(
        {
            "user": table.column("user").filter(pa.array(keep)),
            "item": table.column("item").filter(pa.array(keep)),
            "rating": pa.array(rating, mask=np.isnan(rating), type=pa.float64()),
            "timestamp": pa.array(np.where(no_time, 0, timestamp).astype(np.int64), mask=no_time, type=pa.int64()),
        },
        schema=INTERACTION_SCHEMA,
    )


def read_reviews_2018(path: str | Path) -> tuple[pa.Table, BadLines]:
    """Read a 2018 review file (JSON lines; ``reviewerID, asin, overall, unixReviewTime`` are used).

    The fast path is pyarrow's JSON reader; a file it rejects (a broken line, a value of the wrong
    type) is read line by line so each bad line is reported with its number and skipped.
    """
    path = Path(path)
    schema = pa.schema([
        ("reviewerID", pa.string()), ("asin", pa.string()), ("overall", pa.float64()),
        ("unixReviewTime", pa.int64()),
    ])
    try:
        with _decompressed(path) as stream:
            raw = pajson.read_json(
                stream,
                parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
            )
        table = pa.Table.from_arrays([raw.column(k) for k in REVIEW_KEYS_2018], schema=INTERACTION_SCHEMA)
        return table, BadLines(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass  # fall through to the line-by-line reader, which says which lines are bad
    except OSError as err:
        raise DatasetError(f"{path}: cannot be read as JSON lines ({err}).") from err
    return _read_reviews_2018_slow(path)


def _decompressed(path: Path) -> pa.NativeFile:
    """A stream of the file's bytes (gzip detected by content, not by name)."""
    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    return pa.CompressedInputStream(pa.OSFile(str(path)), "gzip") if gz else pa.OSFile(str(path))


def _read_reviews_2018_slow(path: Path) -> tuple[pa.Table, BadLines]:
    bad = BadLines(path)
    cols: dict[str, list[Any]] = {k: [] for k in REVIEW_KEYS_2018}
    with open_maybe_gzip(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                bad.add(number, f"not a JSON object ({err})", line)
                continue
            if not isinstance(obj, dict):
                bad.add(number, f"a JSON {type(obj).__name__}, not an object", line)
                continue
            try:
                row = _review_row(obj)
            except (TypeError, ValueError) as err:
                bad.add(number, str(err), line)
                continue
            for key, value in zip(REVIEW_KEYS_2018, row):
                cols[key].append(value)
    arrays = [pa.array(cols[k], type=f.type) for k, f in zip(REVIEW_KEYS_2018, INTERACTION_SCHEMA)]
    return pa.Table.from_arrays(arrays, schema=INTERACTION_SCHEMA), bad


def _review_row(obj: dict) -> tuple[str | None, str | None, float | None, int | None]:
    """The four fields of one 2018 review; missing ones are None, wrongly typed ones raise."""
    user, item, rating, ts = (obj.get(k) for k in REVIEW_KEYS_2018)
    for key, value in (("reviewerID", user), ("asin", item)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{key} is a {type(value).__name__}, not a string")
    try:
        rating = None if rating is None else float(rating)
    except (TypeError, ValueError):
        raise ValueError(f"overall {rating!r} is not a number") from None
    try:
        ts_val = None if ts is None else float(ts)
    except (TypeError, ValueError):
        raise ValueError(f"unixReviewTime {ts!r} is not a number") from None
    if ts_val is not None and ts_val != int(ts_val):
        raise ValueError(f"unixReviewTime {ts!r} is not an integer")
    return user or None, item or None, rating, None if ts_val is None else int(ts_val)


def read_interactions(path: str | Path, release: int) -> tuple[pa.Table, BadLines]:
    """Dispatch on the release: 2014 ratings CSV or 2018 review JSON lines."""
    if release == 2014:
        return read_ratings_2014(path)
    if release == 2018:
        return read_reviews_2018(path)
    raise DatasetError(f"source.release must be 2014 or 2018, got {release!r}.")


# the key 'asin' as the 2014 (Python repr) and 2018 (json.dumps) files spell it
_ASIN_KEYS = (b"'asin': '", b'"asin": "')


def _asins_in(line: bytes) -> list[bytes]:
    """Values following an ``asin`` key in a raw line, found with ``bytes.find`` (a regex scanning
    every quote of a 1 KB line is several times slower, and Clothing's file has 1.5M lines)."""
    found = []
    for key in _ASIN_KEYS:
        start = line.find(key)
        while start != -1:
            begin = start + len(key)
            end = line.find(key[-1:], begin)
            if end == -1:
                break
            found.append(line[begin:end])
            start = line.find(key, end)
    return found


def parse_meta_line(text: str) -> dict:
    """One metadata line -> dict. Strict JSON (2018) or a Python literal (2014); never executed.

    Raises ValueError for anything that is not a dict literal with a string ``asin``.
    """
    obj: Any = None
    if text.startswith('{"'):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
    if obj is None:
        try:
            obj = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
            raise ValueError(f"not a dict literal ({type(err).__name__})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"a {type(obj).__name__} literal, not a dict")
    if not isinstance(obj.get("asin"), str) or not obj["asin"]:
        raise ValueError("no 'asin' string")
    return obj


def read_meta(
    path: str | Path, wanted: set[str] | None = None, progress: bool = False
) -> tuple[dict[str, dict], BadLines]:
    """Read a metadata file; returns ``{asin: dict}`` for the ``wanted`` ASINs (all when None).

    Lines whose ``asin`` is visibly not wanted are skipped without parsing (Clothing's file has
    1.5M lines; the 5-core keeps 23k). Every other line is parsed and, when it is not a dict
    literal, counted and reported with its number. The first line of a repeated ASIN wins.
    """
    from tqdm import tqdm

    path = Path(path)
    bad = BadLines(path)
    found: dict[str, dict] = {}
    wanted_bytes = None if wanted is None else {w.encode("utf-8") for w in wanted}
    try:
        with open_maybe_gzip(path) as f:
            lines = tqdm(enumerate(f, start=1), desc=f"meta {path.name}", unit=" lines", disable=not progress,
                         mininterval=1.0)
            for number, line in lines:
                if not line.strip():
                    continue
                if wanted_bytes is not None:
                    keys = _asins_in(line)
                    if keys and wanted_bytes.isdisjoint(keys):
                        continue  # visibly another item: not worth a parse
                try:
                    obj = parse_meta_line(line.decode("utf-8").strip())
                except UnicodeDecodeError:
                    bad.add(number, "not UTF-8 text", line)
                    continue
                except ValueError as err:
                    bad.add(number, str(err), line)
                    continue
                asin = obj["asin"]
                if (wanted is None or asin in wanted) and asin not in found:
                    found[asin] = obj
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DatasetError(
            f"{path}: cannot read the metadata file ({err}). A truncated download? Delete it and "
            "re-run to download it again."
        ) from err
    return found, bad


def _first_path(categories: Any) -> list[str]:
    """The first category path: 2014 stores a list of paths, 2018 a single flat path."""
    if not isinstance(categories, (list, tuple)) or not categories:
        return []
    first = categories[0] if isinstance(categories[0], (list, tuple)) else categories
    return [c for c in (clean_text(x) for x in first if isinstance(x, (str, int, float))) if c]


def _join_text(value: Any) -> str:
    """A description may be a string (2014) or a list of paragraphs (2018)."""
    if isinstance(value, (list, tuple)):
        return clean_text(" ".join(str(v) for v in value if v is not None))
    return clean_text(value)


def item_fields(meta: dict | None) -> dict[str, Any]:
    """``title, brand, categories, description, image_url`` of one item, cleaned.

    Reads either release: 2014 ``categories`` (list of paths) + ``imUrl``; 2018 ``category`` (one
    path) + ``image`` (URL list, first taken). Missing fields are '' / [] / None.
    """
    meta = meta or {}
    image = meta.get("imUrl")
    if not image and isinstance(meta.get("image"), (list, tuple)) and meta["image"]:
        image = meta["image"][0]
    categories = meta.get("categories", meta.get("category"))
    return {
        "title": clean_text(meta.get("title")),
        "brand": clean_text(meta.get("brand")),
        "categories": _first_path(categories),
        "description": _join_text(meta.get("description")),
        "image_url": image.strip() if isinstance(image, str) and image.strip() else None,
    }

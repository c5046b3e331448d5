"""Interactions from tables with named columns: a researcher's own data (`--dataset interactions`) and Amazon
Reviews 2023 (`--dataset amazon-2023`, the McAuley lab's `reviews` and `meta` JSONL of one category).

A table is a CSV, TSV (or any one-character separator), JSONL or Parquet file, gzipped or not; the format comes
from the name (`.csv`, `.tsv`/`.tab`, `.jsonl`/`.ndjson`, `.parquet`, each optionally `.gz`) or from a separator
flag. A file without a header row gets its column names from a names flag (the first N columns, the rest ignored).
Columns are named by flags: a wrong name is one line naming the flag, the file and the columns it has; values that
do not parse (a rating that is no number, a label that is not 0/1/true/false, a timestamp that is neither a number
nor a date, an item without a title) are malformed rows, counted and reported (`--bad_row_tolerance`), the first
one named by file and row (data rows, 1-based, the header not counted). Timestamps: numbers are kept as they are
(seconds, milliseconds: only their order matters), dates are read as UTC and written as Unix seconds.
Parquet is read by pandas, which needs pyarrow or fastparquet installed (not a dependency of TLRec).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import math
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .loaders import DEFAULT_BAD_ROW_TOLERANCE, MissingRawFiles, RawRatings, RowProblems

SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
JSONL_SUFFIXES = (".jsonl", ".ndjson")
COLUMN_FLAGS = ("--user_column", "--item_column", "--rating_column", "--label_column", "--timestamp_column")
LABELS = {"0": 0, "1": 1, "false": 0, "true": 1, "0.0": 0, "1.0": 1}


def separator(text: str | None) -> str | None:
    """A separator flag's value: one character, or the words/escapes for a tab ('\\t', 'tab')."""
    if text is None:
        return None
    return "\t" if text in ("\\t", "tab", "TAB") else text


def column_names(text: str | None) -> list[str] | None:
    """A names flag ('user,item,rating,time') as a list; None when not given."""
    return None if text is None else [n.strip() for n in str(text).split(",")]


def item_text_fields(template: str, flag: str = "--item_text") -> list[str]:
    """The column names a `--item_text` template uses ('"{title}" written by {author}'); an InputError for
    anything but plain {column} fields."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InputError(f"{flag} {template!r}: not a template of {{column}} fields ({exc})") from None
    names = [f for _, f, _, _ in parsed if f is not None]
    if not names or any(spec or conv or not f or any(c in f for c in ".[]") for _, f, spec, conv in parsed
                        if f is not None):
        raise InputError(f"{flag} {template!r}: use plain {{column}} fields, at least one (e.g. '{{title}}')")
    return list(dict.fromkeys(names))


@dataclass
class Table:
    path: Path
    columns: dict[str, list]  # column name -> values in file order (str from CSV, JSON values from JSONL)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def _suffixes(path: Path) -> list[str]:
    suffixes = [s.lower() for s in path.suffixes]
    return suffixes[:-1] if suffixes and suffixes[-1] == ".gz" else suffixes


def _open_text(path: Path, encoding: str):
    return gzip.open(path, "rt", encoding=encoding, newline="") if path.suffix == ".gz" else open(
        path, encoding=encoding, newline="")


def _missing_columns(path: Path, wanted: list[tuple[str, str]], have, names_flag: str | None) -> InputError:
    flag, name = next((f, c) for f, c in wanted if c not in have)
    have = ", ".join(map(str, have)) or "none"
    hint = f" (a file without a header row needs {names_flag})" if names_flag else ""
    return InputError(f"{flag} {name!r}: {path} has no such column (its columns: {have}){hint}")


def read_table(path, wanted: list[tuple[str, str]], sep: str | None = None, names: list[str] | None = None,
               encoding: str = "utf-8", flag: str = "--interactions_file", names_flag: str | None = None) -> Table:
    """The `wanted` columns ([(what names it in an error, e.g. its flag, column name)]) of a table, in file
    order."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{flag} {path}: file not found")
    suffixes = _suffixes(path)
    kind = ("jsonl" if sep is None and suffixes and suffixes[-1] in JSONL_SUFFIXES else
            "parquet" if sep is None and suffixes and suffixes[-1] == ".parquet" else "csv")
    sep = sep if sep is not None else SEPARATORS.get(suffixes[-1] if suffixes else "")
    if kind == "csv" and sep is None:
        raise InputError(f"{flag} {path}: cannot tell the format from the name (.csv, .tsv, .jsonl, .parquet, "
                         f"optionally .gz); give its separator ({flag.replace('_file', '_sep')})")
    try:
        if kind == "jsonl":
            return _read_jsonl(path, wanted, encoding, names_flag)
        if kind == "parquet":
            try:
                frame = pd.read_parquet(path)
            except ImportError as exc:
                raise InputError(f"{flag} {path}: reading Parquet needs pyarrow or fastparquet installed ({exc}); "
                                 "or write the table as CSV or JSONL") from None
        else:
            frame = pd.read_csv(path, sep=sep, header=None if names else 0, dtype=str, keep_default_na=False,
                                na_filter=False, encoding=encoding, quoting=csv.QUOTE_MINIMAL if sep == "," else
                                csv.QUOTE_NONE, engine="c" if len(sep) == 1 else "python")
    except UnicodeDecodeError as exc:
        raise InputError(f"{flag} {path}: not {encoding} text ({exc.reason} at byte {exc.start}); give its "
                         "--encoding") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError, EOFError) as exc:
        raise InputError(f"{flag} {path}: not a readable table ({' '.join(str(exc).split())})") from None
    if names:
        if frame.shape[1] < len(names):
            raise InputError(f"{names_flag} {','.join(names)}: {path} has {frame.shape[1]} column(s), "
                             f"fewer than the {len(names)} named")
        frame = frame.iloc[:, :len(names)].set_axis(names, axis=1)
    if any(c not in frame.columns for _, c in wanted):
        raise _missing_columns(path, wanted, list(frame.columns), None if names else names_flag)
    return Table(path, {c: frame[c].tolist() for c in dict.fromkeys(c for _, c in wanted)})


def _read_jsonl(path: Path, wanted: list[tuple[str, str]], encoding: str, names_flag) -> Table:
    names = list(dict.fromkeys(c for _, c in wanted))
    columns = {c: [] for c in names}
    seen: set[str] = set()
    keys: list[str] = []  # the first object's, for an error naming what the file has
    with _open_text(path, encoding) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path} row {n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path} row {n}: expected a JSON object, got {type(row).__name__}")
            keys = keys or list(row)
            if len(seen) < len(names):
                seen.update(c for c in names if c in row)
            for c in names:
                columns[c].append(row.get(c))
    if len(seen) < len(names):
        raise _missing_columns(path, [(f, c) for f, c in wanted if c not in seen], keys, None)
    return Table(path, columns)


def _text(value) -> str:
    """A cell as text, exactly as in the file (no stripping: titles keep their bytes); JSON numbers without a
    trailing '.0' where they are whole, None as ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value) -> float | None:
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def read_items(path, id_column: str, title_column: str, item_text: str | None = None, sep=None, names=None,
               encoding: str = "utf-8", tolerance: float = DEFAULT_BAD_ROW_TOLERANCE,
               flags=("--items_file", "--item_id_column", "--title_column", "--items_names")) -> dict[str, str]:
    """item id -> item text (the title, or `item_text` filled from the row's columns). An item without an id or
    a title is a malformed row."""
    file_flag, id_flag, title_flag, names_flag = flags
    fields = item_text_fields(item_text) if item_text else []
    wanted = [(id_flag, id_column), (title_flag, title_column)] + [("--item_text", f) for f in fields]
    table = read_table(path, wanted, sep, names, encoding, file_flag, names_flag)
    problems, items = RowProblems(table.path, tolerance), {}
    ids, titles = table.columns[id_column], table.columns[title_column]
    for n, (item_id, title) in enumerate(zip(ids, titles)):
        item_id, title = _text(item_id), _text(title)
        if not item_id.strip() or not title.strip():
            problems.add(n + 1, f"item {item_id!r} has no {'title' if item_id else 'id'} (column "
                         f"{title_column if item_id else id_column!r})", unit="row")
            continue
        items[item_id] = (item_text.format_map({f: _text(table.columns[f][n]) for f in fields}) if item_text
                          else title)
    problems.finish(len(table))
    if not items:
        raise InputError(f"{file_flag} {table.path}: no item with an id and a title")
    return items


def _timestamps(values: list, problems: RowProblems, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(Unix-time-like numbers as int64 or float64, ok mask): numbers as they are, dates as UTC seconds."""
    as_text = pd.Series([_text(v) for v in values], dtype=object)
    out = pd.to_numeric(as_text, errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(out)
    if ok.sum() * 2 <= len(out):  # mostly not numbers: dates
        dates = pd.to_datetime(as_text, errors="coerce", utc=True, format="mixed")
        ok = dates.notna().to_numpy()
        out = (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=float)
    for i in np.flatnonzero(~ok)[:1]:
        problems.add(int(i) + 1, f"timestamp {_text(values[i])!r} (column {column!r}) is not a number or a date",
                     n=int((~ok).sum()), unit="row")
    out = np.where(ok, out, 0.0)
    return (out.astype(np.int64) if np.all(out == np.floor(out)) else out), ok


def read_interactions(path, user_column: str, item_column: str, rating_column: str | None = None,
                      label_column: str | None = None, timestamp_column: str | None = None, sep=None, names=None,
                      encoding: str = "utf-8", tolerance: float = DEFAULT_BAD_ROW_TOLERANCE,
                      file_flag: str = "--interactions_file", flags: tuple[str, ...] = COLUMN_FLAGS,
                      ) -> tuple[pd.DataFrame, int, RowProblems]:
    """(ratings frame as RawRatings holds it, file rows, the row problems). With `label_column` the rating is the
    0/1 label; with neither a rating nor a label column every interaction is liked (rating 1). `flags`: how an
    error names each of the five columns."""
    columns = (user_column, item_column, rating_column, label_column, timestamp_column)
    wanted = [(flag, column) for flag, column in zip(flags, columns) if column is not None]
    table = read_table(path, wanted, sep, names, encoding, file_flag, "--interactions_names")
    problems = RowProblems(table.path, tolerance)
    n = len(table)
    users = [_text(v) for v in table.columns[user_column]]
    items = [_text(v) for v in table.columns[item_column]]
    ok = np.array([bool(u.strip()) and bool(i.strip()) for u, i in zip(users, items)], dtype=bool)
    for i in np.flatnonzero(~ok)[:1]:
        no_user = not users[i].strip()
        problems.add(int(i) + 1, f"no {'user' if no_user else 'item'} id (column "
                     f"{user_column if no_user else item_column!r})", n=int((~ok).sum()), unit="row")
    if rating_column is not None:
        ratings = np.array([_number(v) for v in table.columns[rating_column]], dtype=float)
        what = "a number"
    elif label_column is not None:
        ratings = np.array([LABELS.get(_text(v).lower(), np.nan) for v in table.columns[label_column]], dtype=float)
        what, rating_column = "0, 1, true or false", label_column
    else:
        ratings = np.ones(n)
    bad = ok & np.isnan(ratings)
    for i in np.flatnonzero(bad)[:1]:
        value = table.columns[rating_column][i]
        problems.add(int(i) + 1, f"{value!r} (column {rating_column!r}) is not {what}", n=int(bad.sum()), unit="row")
    ok &= ~np.isnan(ratings)
    if timestamp_column is not None:
        stamps, stamp_ok = _timestamps(table.columns[timestamp_column], problems, timestamp_column)
        ok &= stamp_ok
    else:
        stamps = None
    keep = np.flatnonzero(ok)
    frame = pd.DataFrame({
        "user_id": np.array(users, dtype=object)[keep], "item_id": np.array(items, dtype=object)[keep],
        "rating": ratings[keep], "timestamp": stamps[keep] if stamps is not None else None,
    })
    return frame, n, problems


def table_path(cfg, name: str) -> str:
    """A table of `--dataset interactions` as given, or under `--raw_dir` when it is relative and a raw_dir is
    given (a pipeline's DATA_DIR/SUBDIR: `target_prepare_args: [--interactions_file, u.data, ...]`)."""
    if cfg.raw_dir and not Path(name).is_absolute():
        return str(Path(cfg.raw_dir) / name)
    return name


def load_interactions(cfg) -> RawRatings:
    """`--dataset interactions`: the interactions and items files of a PrepareConfig (table_path)."""
    cfg = dataclasses.replace(cfg, interactions_file=table_path(cfg, cfg.interactions_file),
                              items_file=table_path(cfg, cfg.items_file))
    items_file = cfg.items_file
    items = read_items(items_file, cfg.item_id_column or cfg.item_column, cfg.title_column, cfg.item_text,
                       separator(cfg.items_sep), column_names(cfg.items_names), cfg.encoding, cfg.bad_row_tolerance)
    frame, n, problems = read_interactions(
        cfg.interactions_file, cfg.user_column, cfg.item_column, cfg.rating_column, cfg.label_column,
        cfg.timestamp_column, separator(cfg.interactions_sep), column_names(cfg.interactions_names), cfg.encoding,
        cfg.bad_row_tolerance)
    problems.finish(n)
    if frame.empty:
        raise InputError(f"--interactions_file {cfg.interactions_file}: no interactions (empty file or no valid rows)")
    return RawRatings(frame, items, [Path(cfg.interactions_file), Path(items_file)],
                      "s" if cfg.timestamp_column else None, {"malformed_rows": problems.count},
                      like_threshold=None if cfg.rating_column else 0)


# ---------------------------------------------------------------- Amazon Reviews 2023 (McAuley lab)
AMAZON_2023_URL = "https://amazon-reviews-2023.github.io/"


def amazon_2023_files(raw_dir, category: str) -> tuple[Path, Path]:
    """The category's `reviews` and `meta` files as published: CATEGORY.jsonl and meta_CATEGORY.jsonl, gzipped
    or not."""
    raw_dir = Path(raw_dir)
    names = [f"{category}.jsonl", f"meta_{category}.jsonl"]
    if not raw_dir.is_dir():
        raise MissingRawFiles("amazon-2023", raw_dir, names, what="directory not found")
    found = [next((raw_dir / (n + gz) for gz in ("", ".gz") if (raw_dir / (n + gz)).is_file()), None) for n in names]
    if None in found:
        raise MissingRawFiles("amazon-2023", raw_dir, [n + "[.gz]" for n, f in zip(names, found) if f is None])
    return found[0], found[1]


def load_amazon_2023(raw_dir, category: str, tolerance: float = DEFAULT_BAD_ROW_TOLERANCE) -> RawRatings:
    """One category of Amazon Reviews 2023: reviews (user_id, parent_asin, rating 1-5, timestamp in ms) and meta
    (parent_asin, title). Items are parent ASINs (the product, whatever its variant), their text the meta title;
    a meta row without a title is skipped (counted): its item's reviews are dropped as of unknown items."""
    reviews, meta = amazon_2023_files(raw_dir, category)
    items = read_items(meta, "parent_asin", "title", tolerance=1.0, flags=("meta file", "column", "column", None))
    frame, n, problems = read_interactions(reviews, "user_id", "parent_asin", "rating", None, "timestamp",
                                           tolerance=tolerance, file_flag="reviews file", flags=("column",) * 5)
    problems.finish(n)
    if frame.empty:
        raise InputError(f"{reviews}: no reviews (empty file or no valid rows)")
    return RawRatings(frame, items, [reviews, meta], "s", {"malformed_rows": problems.count})

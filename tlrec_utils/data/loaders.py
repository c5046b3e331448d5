"""Loaders of the public datasets (the table of them: dataset_registry.DATASETS).

A raw-ratings loader returns `RawRatings`: a DataFrame with one row per rating (`user_id`, `item_id`, `rating`,
`timestamp`, compact dtypes, file order) and `items` (item_id as str -> item text as it appears in prompts).
A loader of an already windowed and split release returns `PreparedSplits` (records per split).
Malformed rows are skipped, counted and reported while they stay below a tolerance (a fraction of the
rows); above it the loader raises InputError naming the file, the first bad line and the problem.
The Netflix loader streams the files in chunks into numpy arrays: no Python object per rating.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .records import SPLITS, build_record, load_records

logger = logging.getLogger(__name__)

DEFAULT_BAD_ROW_TOLERANCE = 0.01  # fraction of a file's rows that may be malformed (skipped and reported)


@dataclass
class RawRatings:
    ratings: pd.DataFrame  # user_id, item_id, rating, timestamp (None column where the data has no time)
    items: dict[str, str]  # item_id -> text ("Toy Story (1995)", '"Title" written by Author')
    sources: list[Path]
    timestamp_unit: str | None = "s"  # "s" (unix seconds), "day" (days since 1970-01-01), None (no time)
    stats: dict = field(default_factory=dict)
    like_threshold: float | None = None  # liked = rating > this where the data decides it (labels: 0), else None


@dataclass
class PreparedSplits:
    splits: dict[str, list[dict]]  # train/valid/test -> records
    items: dict[str, str]  # the catalog: item_id -> text
    kind: str  # "movie" | "book"
    sources: list[Path]
    stats: dict = field(default_factory=dict)


class MissingRawFiles(InputError):
    """Raw files not found. The loaders do not know where a dataset is published (that is the registry's table,
    which imports them), so the registry adds the `where_to_get` hint as the error passes (registry.load)."""

    def __init__(self, dataset: str, raw_dir, names, what: str = "missing", where_to_get: str = ""):
        self.dataset, self.raw_dir, self.names, self.what = dataset, raw_dir, list(names), what
        listed = ", ".join(str(n) for n in self.names)
        hint = f"; get it from {where_to_get}" if where_to_get else ""
        super().__init__(f"{raw_dir}: {what} ({listed}) for dataset {dataset}{hint}")

    def with_hint(self, where_to_get: str) -> MissingRawFiles:
        return MissingRawFiles(self.dataset, self.raw_dir, self.names, self.what, where_to_get)


_skipped_rows: dict | None = None  # {file: malformed rows skipped}, collected inside counting_skipped_rows()


@contextlib.contextmanager
def counting_skipped_rows():
    """Yields {file: malformed rows skipped} of every file any loader reads inside the block (0 for a clean
    file), for meta.json."""
    global _skipped_rows
    previous, _skipped_rows = _skipped_rows, {}
    try:
        yield _skipped_rows
    finally:
        _skipped_rows = previous


class RowProblems:
    """Counts a file's malformed rows, keeps the first few, and decides: report or fail."""

    def __init__(self, path, tolerance: float):
        self.path, self.tolerance = Path(path), tolerance
        self.count, self.examples = 0, []

    def add(self, line: int, problem: str, n: int = 1, unit: str = "line") -> None:
        """`n` malformed rows, the first at `unit` `line` (1-based; unit 'row' where fields span lines)."""
        self.count += n
        if len(self.examples) < 3:
            self.examples.append(f"{unit} {line}: {problem}")

    def finish(self, total_rows: int) -> int:
        if self.count and self.count > self.tolerance * total_rows:
            raise InputError(
                f"{self.path} {self.examples[0]}; {self.count} of {total_rows} rows malformed, above the "
                f"tolerance of {self.tolerance:.2%} (--bad_row_tolerance)"
            )
        if self.count:
            logger.warning("%s: skipped %d malformed row(s) of %d (%s)", self.path, self.count, total_rows,
                           "; ".join(self.examples))
        if _skipped_rows is not None:
            _skipped_rows[str(self.path)] = _skipped_rows.get(str(self.path), 0) + self.count
        return self.count



class CheckedCsv:
    """A csv reader whose malformed input (a field over the csv module's size limit, e.g. an unclosed quote
    swallowing the file; bytes that are not the file's encoding) is an InputError naming the file and line."""

    def __init__(self, reader, path):
        self._reader, self._path = reader, path

    def __iter__(self):
        return self

    def __next__(self):
        return self._checked(lambda: next(self._reader))

    @property
    def fieldnames(self):
        return self._checked(lambda: self._reader.fieldnames)

    def _checked(self, read):
        try:
            return read()
        except csv.Error as exc:
            raise InputError(f"{self._path} line {self._reader.line_num}: malformed CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise InputError(f"{self._path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None

    def __getattr__(self, name):  # line_num
        return getattr(self._reader, name)


def _find(raw_dir, names: list[str], dataset: str) -> list[Path]:
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise MissingRawFiles(dataset, raw_dir, names, what="directory not found")
    missing = [n for n in names if not (raw_dir / n).is_file()]
    if missing:
        raise MissingRawFiles(dataset, raw_dir, missing)
    return [raw_dir / n for n in names]


def _no_ratings(path) -> InputError:
    return InputError(f"{path}: no ratings (empty file or no valid rows)")


def _frame(users, items, ratings, timestamps) -> pd.DataFrame:
    return pd.DataFrame({"user_id": users, "item_id": items, "rating": ratings, "timestamp": timestamps})


# ---------------------------------------------------------------- MovieLens-100K
def load_ml100k(raw_dir, tolerance: float = DEFAULT_BAD_ROW_TOLERANCE) -> RawRatings:
    """`u.data` (user, item, rating, unix time; tab-separated) and `u.item` (id|title|...; ISO-8859-1)."""
    raw_dir = Path(raw_dir)
    if not (raw_dir / "u.data").is_file() and (raw_dir / "ml-100k" / "u.data").is_file():
        raw_dir = raw_dir / "ml-100k"  # the zip's own folder
    data_path, item_path = _find(raw_dir, ["u.data", "u.item"], "ml-100k")

    items, problems, n = {}, RowProblems(item_path, tolerance), 0
    with open(item_path, encoding="iso-8859-1", newline="") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\r\n").split("|")
            if len(parts) < 2 or not parts[0].isdigit():
                problems.add(n, f"expected 'id|title|...', got {line.strip()[:60]!r}")
                continue
            items[parts[0]] = parts[1]
    problems.finish(n)

    cols = [[], [], [], []]
    problems, n = RowProblems(data_path, tolerance), 0
    with open(data_path, encoding="iso-8859-1", newline="") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 4 or not all(p.isdigit() for p in parts) or not 1 <= int(parts[2]) <= 5:
                problems.add(n, f"expected 'user<TAB>item<TAB>rating 1-5<TAB>time', got {line.strip()[:60]!r}")
                continue
            for col, value in zip(cols, parts):
                col.append(int(value))
    problems.finish(n)
    if not cols[0]:
        raise _no_ratings(data_path)
    ratings = _frame(
        np.array(cols[0], dtype=np.int32), np.array(cols[1], dtype=np.int32),
        np.array(cols[2], dtype=np.int8), np.array(cols[3], dtype=np.int64),
    )
    return RawRatings(ratings, items, [data_path, item_path], "s",
                      {"malformed_rows": problems.count})


# ---------------------------------------------------------------- BookCrossing
def load_bookcrossing(raw_dir, tolerance: float = DEFAULT_BAD_ROW_TOLERANCE, keep_implicit: bool = False) -> RawRatings:
    """`BX-Book-Ratings.csv` ("User-ID";"ISBN";"Book-Rating") and `BX-Books.csv` ("ISBN";"Book-Title";
    "Book-Author";...): `;`-separated, quoted, latin-1. Read with the csv module's lenient quoting, which is
    how the TALLRec release got its titles (e.g. `\\O\\" Is for Outlaw"`). Rating 0 is an implicit
    interaction: dropped unless `keep_implicit` (then it is a dislike). No timestamps: file order."""
    ratings_path, books_path = _find(raw_dir, ["BX-Book-Ratings.csv", "BX-Books.csv"], "bookcrossing")

    items, problems, n = {}, RowProblems(books_path, tolerance), 0
    with open(books_path, encoding="latin-1", newline="") as f:
        reader = CheckedCsv(csv.reader(f, delimiter=";"), books_path)
        next(reader, None)  # header
        for n, row in enumerate(reader, 2):  # noqa: B007 (n counts the rows for problems.finish)
            if len(row) != 8 or not row[0] or not row[1]:
                problems.add(reader.line_num, f"expected 8 ';'-separated fields with ISBN and title, got {len(row)}")
                continue
            items[row[0]] = f'"{row[1]}" written by {row[2]}'
    problems.finish(max(n - 1, 0))

    users, isbns, scores = [], [], []
    problems, n, implicit = RowProblems(ratings_path, tolerance), 0, 0
    with open(ratings_path, encoding="latin-1", newline="") as f:
        reader = CheckedCsv(csv.reader(f, delimiter=";"), ratings_path)
        next(reader, None)
        for n, row in enumerate(reader, 2):  # noqa: B007 (n counts the rows for problems.finish)
            if len(row) != 3 or not row[0].isdigit() or not row[2].isdigit() or int(row[2]) > 10:
                problems.add(reader.line_num, f"expected \"User-ID\";\"ISBN\";\"Book-Rating 0-10\", got {row!r:.80}")
                continue
            score = int(row[2])
            if score == 0 and not keep_implicit:
                implicit += 1
                continue
            users.append(int(row[0]))
            isbns.append(row[1])
            scores.append(score)
    problems.finish(max(n - 1, 0))
    if not users:
        raise _no_ratings(ratings_path)
    ratings = _frame(np.array(users, dtype=np.int32), np.array(isbns, dtype=object),
                     np.array(scores, dtype=np.int8), None)
    return RawRatings(ratings, items, [ratings_path, books_path], None,
                      {"malformed_rows": problems.count, "implicit_ratings_dropped": implicit})


# ---------------------------------------------------------------- Netflix Prize
NETFLIX_CHUNK_ROWS = 1_000_000


def netflix_rating_files(raw_dir) -> list[Path]:
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise MissingRawFiles("netflix", raw_dir, ["combined_data_1.txt", "movie_titles.csv"],
                                  what="directory not found")
    files = sorted(raw_dir.glob("combined_data_*.txt"))
    if not files:
        raise MissingRawFiles("netflix", raw_dir, ["combined_data_*.txt"])
    return files


def _count_lines(path) -> int:
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def read_netflix_ratings(path, tolerance: float = DEFAULT_BAD_ROW_TOLERANCE, chunk_rows: int = NETFLIX_CHUNK_ROWS):
    """One `combined_data_*.txt` ('MovieID:' lines, then 'CustomerID,Rating,YYYY-MM-DD' rows) as compact
    arrays (customer int32, movie int16, rating int8, day int32 = days since 1970-01-01), in file order."""
    path = Path(path)
    problems = RowProblems(path, tolerance)
    out = {"user": [], "movie": [], "rating": [], "day": []}
    current_movie, line_offset, parsed_lines = np.nan, 0, 0
    # a fourth column catches rows with one field too many without shifting line numbers
    reader = pd.read_csv(path, header=None, names=["a", "b", "c", "d"], dtype=str, skip_blank_lines=False,
                         na_filter=False, on_bad_lines="skip", chunksize=chunk_rows, engine="c",
                         quoting=csv.QUOTE_NONE, encoding="latin-1")
    for chunk in reader:
        first = chunk["a"]
        is_header = first.str.endswith(":").to_numpy() & (chunk["b"] == "").to_numpy()
        movie = pd.to_numeric(first.where(is_header).str[:-1], errors="coerce")
        if np.isnan(movie.iloc[0]) if len(movie) else False:
            movie.iloc[0] = current_movie
        movie = movie.ffill().to_numpy()
        bad_header = is_header & np.isnan(movie)
        rows = ~is_header
        user = pd.to_numeric(first, errors="coerce").to_numpy()
        rating = pd.to_numeric(chunk["b"], errors="coerce").to_numpy()
        day = pd.to_datetime(chunk["c"], format="%Y-%m-%d", errors="coerce").to_numpy()
        ok = (rows & ~np.isnan(user) & ~np.isnan(movie) & np.isin(rating, [1, 2, 3, 4, 5]) & ~np.isnat(day)
              & (chunk["d"] == "").to_numpy())
        bad = np.flatnonzero((rows & ~ok) | bad_header)
        if len(bad):
            problems.add(line_offset + int(bad[0]) + 1, f"expected 'CustomerID,Rating 1-5,YYYY-MM-DD' or "
                         f"'MovieID:', got {','.join(chunk.iloc[bad[0]].tolist()).rstrip(',')!r:.80}", n=len(bad))
        out["user"].append(user[ok].astype(np.int32))
        out["movie"].append(movie[ok].astype(np.int16))
        out["rating"].append(rating[ok].astype(np.int8))
        out["day"].append(day[ok].astype("datetime64[D]").astype(np.int32))
        if len(movie):
            current_movie = movie[-1]
        line_offset += len(chunk)
        parsed_lines += len(chunk)
    dropped_by_parser = _count_lines(path) - parsed_lines  # lines with too many fields
    if dropped_by_parser > 0:
        problems.add(0, f"{dropped_by_parser} line(s) with more than 4 comma-separated fields", n=dropped_by_parser)
    problems.finish(max(parsed_lines + max(dropped_by_parser, 0), 1))
    arrays = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items()}
    return arrays, problems.count


def read_netflix_titles(path, tolerance: float = DEFAULT_BAD_ROW_TOLERANCE) -> dict[str, str]:
    """`movie_titles.csv`: 'MovieID,YearOfRelease,Title' (titles contain commas; latin-1) -> 'Title (Year)'.
    A NULL year is written '(<NA>)', as in the TLRec release's item_mapping.csv."""
    items, problems, n = {}, RowProblems(path, tolerance), 0
    with open(path, encoding="latin-1", newline="") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\r\n").split(",", 2)
            if len(parts) != 3 or not parts[0].isdigit() or not (parts[1].isdigit() or parts[1] == "NULL"):
                problems.add(n, f"expected 'MovieID,Year,Title', got {line.strip()[:60]!r}")
                continue
            year = parts[1] if parts[1] != "NULL" else "<NA>"
            items[parts[0]] = f"{parts[2]} ({year})"
    problems.finish(n)
    return items


def load_netflix(raw_dir, tolerance: float = DEFAULT_BAD_ROW_TOLERANCE) -> RawRatings:
    files = netflix_rating_files(raw_dir)
    (titles_path,) = _find(raw_dir, ["movie_titles.csv"], "netflix")
    items = read_netflix_titles(titles_path, tolerance)
    parts, malformed = [], 0
    for path in files:
        logger.info("reading %s", path)
        arrays, bad = read_netflix_ratings(path, tolerance)
        parts.append(arrays)
        malformed += bad
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if len(cat["user"]) == 0:
        raise _no_ratings(files[0])
    ratings = _frame(cat["user"], cat["movie"], cat["rating"], cat["day"])
    return RawRatings(ratings, items, files + [titles_path], "day", {"malformed_rows": malformed})


# ---------------------------------------------------------------- Amazon Books (Kaggle)
AMAZON_RATING_COLUMNS = ["Id", "Title", "User_id", "review/score", "review/time"]


def _authors_text(value) -> str:
    """books_data.csv keeps authors as a list literal ("['A', 'B']"): 'A, B' (ast.literal_eval, never eval)."""
    if not isinstance(value, str) or not value.strip():
        return ""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    if isinstance(parsed, (list, tuple)):
        return ", ".join(str(a) for a in parsed)
    return str(parsed)


def load_amazon_books(raw_dir, tolerance: float = DEFAULT_BAD_ROW_TOLERANCE, chunk_rows: int = 500_000) -> RawRatings:
    """Kaggle "Amazon Books Reviews": `Books_rating.csv` (Id, Title, User_id, review/score, review/time, ...)
    and `books_data.csv` (Title, authors, ...). Item id = Id; text '"Title" written by A, B'. Reviews without
    a user id are anonymous and dropped (counted)."""
    ratings_path, books_path = _find(raw_dir, ["Books_rating.csv", "books_data.csv"], "amazon-books")
    try:
        books = pd.read_csv(books_path, usecols=["Title", "authors"], dtype=str, on_bad_lines="skip")
    except ValueError as exc:
        raise InputError(f"{books_path}: expected columns Title, authors ({exc})") from None
    authors = dict(zip(books["Title"], books["authors"].map(_authors_text)))

    problems, total, anonymous = RowProblems(ratings_path, tolerance), 0, 0
    frames, items = [], {}
    try:
        reader = pd.read_csv(ratings_path, usecols=AMAZON_RATING_COLUMNS, dtype=str, chunksize=chunk_rows,
                             on_bad_lines="skip")
        for chunk in reader:
            score = pd.to_numeric(chunk["review/score"], errors="coerce")
            when = pd.to_numeric(chunk["review/time"], errors="coerce")
            no_user = chunk["User_id"].isna().to_numpy()
            ok = (score.between(1, 5) & when.notna() & chunk["Id"].notna() & chunk["Title"].notna()).to_numpy()
            bad = np.flatnonzero(~ok)
            if len(bad):
                problems.add(total + int(bad[0]) + 1, f"bad score/time/id in {chunk.iloc[bad[0]].tolist()!r:.80}",
                             n=len(bad), unit="row")
            anonymous += int((ok & no_user).sum())
            keep = ok & ~no_user
            part = chunk[keep]
            frames.append(_frame(part["User_id"].to_numpy(), part["Id"].to_numpy(),
                                 score[keep].to_numpy().astype(np.int8), when[keep].to_numpy().astype(np.int64)))
            for item_id, title in zip(part["Id"], part["Title"]):
                if item_id not in items:
                    by = authors.get(title, "")
                    items[item_id] = f'"{title}" written by {by}' if by else f'"{title}"'
            total += len(chunk)
    except ValueError as exc:
        raise InputError(f"{ratings_path}: expected columns {', '.join(AMAZON_RATING_COLUMNS)} ({exc})") from None
    problems.finish(max(total, 1))
    ratings = pd.concat(frames, ignore_index=True) if frames else _frame([], [], [], [])
    if ratings.empty:
        raise _no_ratings(ratings_path)
    return RawRatings(ratings, items, [ratings_path, books_path], "s",
                      {"malformed_rows": problems.count, "anonymous_reviews_dropped": anonymous})


# ---------------------------------------------------------------- already windowed (TLRec release layout)
WINDOW_COLUMNS = ["user_id", "history_movie_id", "history_rating", "movie_id", "rating", "timestamp"]


def read_item_mapping(raw_dir, tolerance: float = DEFAULT_BAD_ROW_TOLERANCE) -> tuple[Path, dict[str, str]]:
    """`item_mapping.csv` under the header 'movie_id,movie_name': rows 'id,name' (Netflix release: the text is
    the name) or 'id,title,authors' (Amazon-Book release, authors a list literal such as "['A', 'B']"): the
    text is '"Title" written by A', 'B', the list cut by its first and last two characters exactly as the
    authors' instrument_data/preprocess_data_book.py (ljy2222/TLRec@38fca0f) wrote their records."""
    path = Path(raw_dir) / "item_mapping.csv"
    if not path.is_file():
        raise InputError(
            f"{path}: file not found; windows-csv needs item texts (item_mapping.csv: movie_id,movie_name); "
            "--download fetches it for the published releases (--release netflix or amazon-book)"
        )
    items, problems, n = {}, RowProblems(path, tolerance), 0
    with open(path, encoding="utf-8", newline="") as f:
        reader = CheckedCsv(csv.reader(f), path)
        next(reader, None)
        for n, row in enumerate(reader, 1):  # noqa: B007 (n counts the rows for problems.finish)
            if len(row) == 2:
                items[row[0]] = row[1]
            elif len(row) == 3:
                items[row[0]] = f'"{row[1]}" written by {row[2][2:-2]}'
            else:
                problems.add(reader.line_num, "expected 'item_id,item_text' or 'item_id,title,authors'")
    problems.finish(n)
    return path, items


def read_windows_csv(path, items: dict[str, str], tolerance: float = DEFAULT_BAD_ROW_TOLERANCE) -> list[dict]:
    """Rows of a windowed split file: history ids/ratings are list literals (ast.literal_eval, never eval);
    rating 1 = liked. Returns dicts with user_id, history [(item_id, liked)], target item_id, label, timestamp."""
    path = Path(path)
    if not path.is_file():
        raise MissingRawFiles("windows-csv", path.parent, [path.name])
    rows, problems, n = [], RowProblems(path, tolerance), 0
    with open(path, encoding="utf-8", newline="") as f:
        reader = CheckedCsv(csv.DictReader(f), path)
        missing = [c for c in WINDOW_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path} line 1: missing column(s) {', '.join(missing)}")
        for n, row in enumerate(reader, 1):  # noqa: B007 (n counts the rows for problems.finish)
            try:
                ids = ast.literal_eval(row["history_movie_id"])
                liked = ast.literal_eval(row["history_rating"])
                ok = (isinstance(ids, list) and isinstance(liked, list) and len(ids) == len(liked) > 0
                      and all(v in (0, 1) for v in liked) and row["rating"] in ("0", "1"))
            except (ValueError, SyntaxError, TypeError, MemoryError):
                ok = False
            if not ok:
                problems.add(reader.line_num, "history columns must be equal-length lists, ratings 0/1")
                continue
            unknown = [str(i) for i in ids + [row["movie_id"]] if str(i) not in items]
            if unknown:
                problems.add(reader.line_num, f"item {unknown[0]!r} not in item_mapping.csv")
                continue
            ts = row["timestamp"]
            rows.append({
                "user_id": row["user_id"],
                "history": [(str(i), bool(v)) for i, v in zip(ids, liked)],
                "target": str(row["movie_id"]),
                "label": int(row["rating"]),
                "timestamp": int(ts) if ts.lstrip("-").isdigit() else ts,
            })
    problems.finish(n)
    return rows


def load_windows_csv(raw_dir, item_kind: str, target_style: str = "wrap",
                     tolerance: float = DEFAULT_BAD_ROW_TOLERANCE) -> PreparedSplits:
    """The splits of an already windowed release (train/valid/test.csv + item_mapping.csv), as records."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise MissingRawFiles("windows-csv", raw_dir, ["train.csv"], what="directory not found")
    mapping_path, items = read_item_mapping(raw_dir, tolerance)
    splits, sources = {}, []
    for split in SPLITS:
        path = raw_dir / f"{split}.csv"
        rows = read_windows_csv(path, items, tolerance)
        sources.append(path)
        splits[split] = [
            build_record(
                user_id=r["user_id"],
                history=[{"item_id": i, "title": items[i], "liked": v} for i, v in r["history"]],
                target={"item_id": r["target"], "title": items[r["target"]]},
                label=r["label"], kind=item_kind, timestamp=r["timestamp"], target_style=target_style,
            )
            for r in rows
        ]
    if not splits["train"]:
        raise InputError(f"{raw_dir / 'train.csv'}: no records")
    return PreparedSplits(splits, items, item_kind, sources + [mapping_path])


def load_published_records(raw_dir, item_kind: str) -> PreparedSplits:
    """Published TALLRec-format splits taken as they are (text untouched), structured fields recovered by
    the record parser; the catalog is every item they mention. Item ids are the item texts (the files have
    no ids); records without a user id keep `user_id: None`. The kind is the records' own, else `item_kind`."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise MissingRawFiles("records", raw_dir, ["train.json"], what="directory not found")
    missing = [f"{s}.json" for s in SPLITS if not (raw_dir / f"{s}.json").is_file()]
    if missing:
        raise MissingRawFiles("records", raw_dir, missing)
    splits, items, kinds, unparsed = {}, {}, set(), 0
    for split in SPLITS:
        out = []
        for rec in load_records(raw_dir / f"{split}.json"):
            kinds.add(rec.pop("kind", None))
            rec.pop("target_style", None)
            unparsed += "history" not in rec
            for item in rec.get("history", []) + ([rec["target"]] if "target" in rec else []):
                items.setdefault(item["item_id"], item["title"])
            out.append({**rec, "user_id": rec.get("user_id"), "timestamp": rec.get("timestamp")})
        splits[split] = out
    if not splits["train"]:
        raise InputError(f"{raw_dir / 'train.json'}: no records")
    kinds.discard(None)
    if len(kinds) > 1:
        raise InputError(f"{raw_dir}: records mix item kinds ({', '.join(sorted(kinds))})")
    kind = kinds.pop() if kinds else item_kind
    return PreparedSplits(splits, items, kind, [raw_dir / f"{s}.json" for s in SPLITS],
                          {"records_without_structure": unparsed})

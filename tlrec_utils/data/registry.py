"""The datasets run_prepare_data.py prepares: one table, `DATASETS`, from which its --dataset choices, help
texts, error hints and the docs' dataset table (`python -m tlrec_utils.data.registry`) are generated.

A new dataset: its loader (in raw_datasets.py or a module of its own) and one line in `DATASETS`. A loader
takes the run's PrepareConfig and returns either `RawRatings` (ratings in file order: prepare.py cuts
windows, labels them with `like_threshold` and splits them) or `PreparedSplits` (a release that is already
windowed and split). A published copy that `--download` fetches is a `release` of download.RELEASES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InputError
from . import interactions
from . import loaders as raw
from .download import ML100K_URL

# PrepareConfig fields that only windowing raw ratings uses (left out of meta.json for prepared releases)
WINDOWING_PARAMS = ("history_len", "max_windows", "split_ratio", "like_threshold", "keep_implicit", "shuffle_seed")
# PrepareConfig fields of one dataset only (left out of meta.json for the others; the two files are in its sources)
INTERACTIONS_PARAMS = ("user_column", "item_column", "rating_column", "label_column", "timestamp_column", "implicit",
                       "negatives", "negative_seed", "item_id_column", "title_column", "item_text", "interactions_sep",
                       "items_sep", "interactions_names", "items_names", "encoding")
OWN_PARAMS = INTERACTIONS_PARAMS + ("interactions_file", "items_file", "category")

# Amazon Reviews 2023 categories whose items have a kind of their own (prompts.ITEM_KINDS); the others are "item"
AMAZON_2023_KINDS = {"Books": "book", "Kindle_Store": "book", "Movies_and_TV": "movie", "Video_Games": "game"}


@dataclass(frozen=True)
class Dataset:
    load: Callable  # PrepareConfig -> raw.RawRatings | raw.PreparedSplits
    what: str  # one line for --help and the docs
    item_kind: str | None  # "movie" | "book"; None: --item_kind, else `default_kind` (records: their own first)
    like_threshold: float | None  # liked = rating > threshold; None: the labels come with the data (or the flag)
    where_to_get: str  # shown when its files are missing
    release: str | dict[str, str] | None = None  # download.RELEASES read by default: one, or one per --item_kind
    unused_params: tuple[str, ...] = ("item_kind",)  # PrepareConfig fields it ignores (left out of meta.json)
    default_kind: Callable = lambda cfg: "movie"  # PrepareConfig -> the item kind when --item_kind is not given
    own_params: tuple[str, ...] = ()  # the OWN_PARAMS it reads
    uses_raw_dir: bool = True  # False: its files are named by its own flags
    kind_help: str = "--item_kind"  # the docs' "items" cell where item_kind is None
    threshold_help: str = "labels in the data"  # the docs' "liked" cell where like_threshold is None

    def default_release(self, item_kind: str) -> str | None:
        return self.release.get(item_kind) if isinstance(self.release, dict) else self.release


# like thresholds: MovieLens/Netflix 4-5 stars and BookCrossing 6-10 are liked (TALLRec); Amazon Books 4-5 stars
DATASETS: dict[str, Dataset] = {
    "ml-100k": Dataset(
        lambda c: raw.load_ml100k(c.raw_dir, c.bad_row_tolerance), "MovieLens-100K ratings (Movie target)",
        "movie", 3, f"{ML100K_URL} (or pass --download); put u.data and u.item into --raw_dir", release="ml-100k"),
    "bookcrossing": Dataset(
        lambda c: raw.load_bookcrossing(c.raw_dir, c.bad_row_tolerance, keep_implicit=c.keep_implicit),
        "Book-Crossing ratings (Book target)", "book", 5, "a copy of the Book-Crossing dump BX-CSV-Dump.zip (the "
        "original page, www2.informatik.uni-freiburg.de/~cziegler/BX/, is offline; copies exist on Kaggle and the "
        "Internet Archive); put BX-Book-Ratings.csv and BX-Books.csv into --raw_dir"),
    "netflix": Dataset(
        lambda c: raw.load_netflix(c.raw_dir, c.bad_row_tolerance), "Netflix Prize ratings (Movie source)",
        "movie", 3, "Kaggle 'netflix-inc/netflix-prize-data' (login required); put combined_data_1.txt .. "
        "combined_data_4.txt and movie_titles.csv into --raw_dir"),
    "amazon-books": Dataset(
        lambda c: raw.load_amazon_books(c.raw_dir, c.bad_row_tolerance), "Amazon Books reviews (Book source)",
        "book", 3, "Kaggle 'mohamedbakhet/amazon-books-reviews' (login required); put Books_rating.csv and "
        "books_data.csv into --raw_dir"),
    "windows-csv": Dataset(
        lambda c: raw.load_windows_csv(c.raw_dir, c.item_kind, c.target_style, c.bad_row_tolerance),
        "an already windowed release: train/valid/test.csv + item_mapping.csv (the TLRec authors' Netflix and "
        "Amazon-Books)", None, None, "a processed release (--release netflix or amazon-book with --download "
        "fetches the TLRec authors' one); --raw_dir must hold train.csv, valid.csv, test.csv and item_mapping.csv",
        release={"movie": "netflix", "book": "amazon-book"}, unused_params=WINDOWING_PARAMS),
    "records": Dataset(
        lambda c: raw.load_published_records(c.raw_dir, c.item_kind), "published TALLRec-format records, text "
        "kept as it is (TALLRec's Movie and Book)", None, None, "published records (--release book or movie "
        "with --download fetches TALLRec's); --raw_dir must hold train.json, valid.json and test.json",
        release={"movie": "movie", "book": "book"},
        unused_params=WINDOWING_PARAMS + ("item_kind", "target_style", "bad_row_tolerance")),
    "interactions": Dataset(
        interactions.load_interactions, "your own interactions and items tables, columns named by flags (docs/data.md)",
        None, None, "your own files: --interactions_file and --items_file", unused_params=(),
        default_kind=lambda c: "item", own_params=OWN_PARAMS[:-1], uses_raw_dir=False,
        kind_help="--item_kind (default item)", threshold_help="--like_threshold, --label_column or --implicit"),
    "amazon-2023": Dataset(
        lambda c: interactions.load_amazon_2023(c.raw_dir, c.category, c.bad_row_tolerance),
        "Amazon Reviews 2023, one --category (reviews + meta JSONL)", None, 3,
        f"{interactions.AMAZON_2023_URL} (the McAuley lab; no verified download): put CATEGORY.jsonl and "
        "meta_CATEGORY.jsonl (gzipped or not) into --raw_dir", unused_params=(),
        default_kind=lambda c: AMAZON_2023_KINDS.get(c.category, "item"), own_params=("category",),
        kind_help="--item_kind, else by --category (Video_Games: game, Books: book, ...; others item)"),
}


def dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise InputError(f"--dataset {name!r}: unknown dataset; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def load_raw(name: str, cfg):
    """The dataset's loader run on a PrepareConfig; a missing-files error gains where to get the files."""
    try:
        return dataset(name).load(cfg)
    except raw.MissingRawFiles as error:
        spec = DATASETS.get(error.dataset)
        raise (error.with_hint(spec.where_to_get) if spec else error) from None


def missing_files(name: str, raw_dir, names, what: str = "missing") -> raw.MissingRawFiles:
    """The missing-files error of dataset `name`, with where to get its files."""
    return raw.MissingRawFiles(name, raw_dir, names, what, dataset(name).where_to_get)


def releases() -> list[str]:
    """Every published release a dataset reads, in table order."""
    names = []
    for spec in DATASETS.values():
        for name in spec.release.values() if isinstance(spec.release, dict) else [spec.release]:
            if name and name not in names:
                names.append(name)
    return names


def dataset_help() -> str:
    return "one of " + ", ".join(DATASETS)


def like_threshold_help() -> str:
    by_value: dict[float, list[str]] = {}
    for name, spec in DATASETS.items():
        if spec.like_threshold is not None:
            by_value.setdefault(spec.like_threshold, []).append(name)
    defaults = ", ".join(f"{t:g} for {'/'.join(names)}" for t, names in by_value.items())
    return f"liked = rating > T (default: {defaults})"


def release_help() -> str:
    return f"published release to read and --download: {', '.join(releases())} (default: the dataset's)"


def markdown_table() -> str:
    """The docs' dataset table."""
    rows = ["| --dataset | what | items | liked = rating > | default --release | where to get it |",
            "|---|---|---|---|---|---|"]
    for name, spec in DATASETS.items():
        release = (", ".join(f"{r} ({k})" for k, r in spec.release.items()) if isinstance(spec.release, dict)
                   else spec.release or "none")
        threshold = spec.threshold_help if spec.like_threshold is None else f"{spec.like_threshold:g}"
        rows.append(f"| {name} | {spec.what} | {spec.item_kind or spec.kind_help} | {threshold} | {release} | "
                    f"{spec.where_to_get} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())

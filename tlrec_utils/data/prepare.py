"""Data preparation: raw ratings -> windowed rec-tuning records, split, catalog and metadata (run_prepare_data.py).

Output directory: train.json / valid.json / test.json (records, see `records`), items.json (item_id -> text:
the catalog ranking negatives are sampled from), meta.json (dataset, parameters, counts, like rate, source
files with SHA-256, and for downloaded files their URL, commit and verified hash). Written through a staging
directory: a failed run leaves no partial output.

What each dataset is, how it loads, its like threshold and release: dataset_registry.DATASETS. The raw files
come from `raw_dir`, else from the data directory's folder of a published release (tlrec_utils.data.download.RELEASES;
`--download` fetches what it lacks, verified).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import __version__, prompts
from ..errors import InputError
from ..fileio import atomic_write_json, sha256_file, staged_output_dir
from . import download as dl
from . import loaders as raw_datasets
from .interactions import column_names, item_text_fields, separator
from .kshot import k_shot_filename, sample_k_shot
from .loaders import RawRatings, counting_skipped_rows
from .paths import data_dir as resolve_data_dir
from .records import SPLITS, build_record, load_records, save_records
from .registry import OWN_PARAMS, dataset_help, like_threshold_help, load_raw, missing_files, release_help
from .registry import dataset as dataset_spec
from .windows import negative_sampler, parse_split_ratio, sliding_windows, split_sizes

logger = logging.getLogger(__name__)


@dataclass
class PrepareConfig:
    """What run_prepare_data.py prepares (its flags: the field names)."""

    dataset: str | None = field(default=None, metadata={"help": dataset_help()})
    raw_dir: str | None = field(
        default=None, metadata={"help": "Folder with the raw files (default: DATA_DIR/RELEASE; see README: data)."}
    )
    output_dir: str = field(default=None, metadata={"help": "Prepared folder (written atomically).", "required": True})
    history_len: int = field(default=10, metadata={"help": "History items per window."})
    max_windows: int = field(default=10000, metadata={"help": "Keep the last N windows (0: all)."})
    split_ratio: str = field(default="8:1:1", metadata={"help": "train:valid:test, split in order."})
    like_threshold: float | None = field(
        default=None,
        metadata={"help": like_threshold_help()},
    )
    download: bool = field(default=False, metadata={"help": "Fetch the release's missing files (verified)."})
    keep_implicit: bool = field(
        default=False,
        metadata={"help": "bookcrossing: keep rating 0 (implicit) as a dislike, as TALLRec's release did."},
    )
    shuffle_seed: int | None = field(
        default=None, metadata={"help": "bookcrossing (no timestamps): shuffle each user's ratings with this seed "
                                        "instead of keeping file order."},
    )
    item_kind: str | None = field(
        default=None, metadata={"help": "Item wording of windows-csv, records, interactions and amazon-2023: "
                                        "movie, book, game, item (prompts.ITEM_KINDS), NOUN/VERB or NOUN/PLURAL/VERB "
                                        "(default: movie; interactions: item; amazon-2023: by --category). "
                                        "windows-csv and records: also picks the default release."}
    )
    target_style: str = field(
        default="wrap", metadata={"help": "Target quoting: wrap (TALLRec) or item (TLRec Amazon-Books release)."}
    )
    bad_row_tolerance: float = field(
        default=raw_datasets.DEFAULT_BAD_ROW_TOLERANCE,
        metadata={"help": "Fraction of malformed rows skipped (and reported) before failing."},
    )
    interactions_file: str | None = field(
        default=None, metadata={"help": "interactions: the interactions table (.csv, .tsv, .jsonl, .parquet, "
                                        "optionally .gz; or any name with --interactions_sep)."})
    items_file: str | None = field(
        default=None, metadata={"help": "interactions: the items table (item id -> title, optional extra text)."})
    user_column: str = field(default="user_id", metadata={"help": "interactions: the user id column."})
    item_column: str = field(default="item_id", metadata={"help": "interactions: the item id column."})
    rating_column: str | None = field(
        default=None, metadata={"help": "interactions: the rating column (liked = rating > --like_threshold)."})
    label_column: str | None = field(
        default=None, metadata={"help": "interactions: a 0/1 (true/false) liked column instead of a rating."})
    timestamp_column: str | None = field(
        default=None, metadata={"help": "interactions: the time column: numbers (any unit) or dates (UTC; written "
                                        "as Unix seconds); without one, file order."})
    implicit: bool = field(
        default=False, metadata={"help": "interactions: implicit feedback, no rating or label: every interaction is "
                                         "liked; --negatives items the user never interacted with are drawn per "
                                         "window as disliked targets."})
    negatives: int = field(default=1, metadata={"help": "interactions --implicit: disliked targets drawn per window."})
    negative_seed: int = field(default=0, metadata={"help": "interactions --implicit: seed of the negative draw."})
    item_id_column: str | None = field(
        default=None, metadata={"help": "interactions: the items file's id column (default: --item_column)."})
    title_column: str = field(default="title", metadata={"help": "interactions: the items file's title column."})
    item_text: str | None = field(
        default=None, metadata={"help": "interactions: the item text from the items file's columns, e.g. "
                                        "'\"{title}\" written by {author}' (default: the title)."})
    interactions_sep: str | None = field(
        default=None, metadata={"help": "interactions: the interactions file's separator ('\\t' for a tab; "
                                        "default: from the file name)."})
    items_sep: str | None = field(default=None, metadata={"help": "interactions: the items file's separator."})
    encoding: str = field(default="utf-8", metadata={"help": "interactions: the text encoding of both files."})
    interactions_names: str | None = field(
        default=None, metadata={"help": "interactions: column names of a file without a header row, comma-separated "
                                        "(its first N columns; e.g. user,item,rating,time)."})
    items_names: str | None = field(
        default=None, metadata={"help": "interactions: column names of an items file without a header row."})
    category: str | None = field(
        default=None, metadata={"help": "amazon-2023: the category (file CATEGORY.jsonl[.gz] and "
                                        "meta_CATEGORY.jsonl[.gz] in --raw_dir), e.g. Video_Games."})
    data_dir: str | None = field(
        default=None, metadata={"help": "Where the published releases live (default: $TLREC_DATA_DIR, else "
                                        "~/.cache/tlrec)."},
    )
    release: str | None = field(
        default=None, metadata={"help": release_help()},
    )
    mirror: str | None = field(
        default=None, metadata={"help": "Download from MIRROR/HOST/PATH instead of https://HOST/PATH (default: "
                                        "$TLREC_MIRROR)."},
    )
    download_stall_s: float | None = field(
        default=None, metadata={"help": f"Give a download up when no byte came for this many seconds (default: "
                                        f"${dl.STALL_ENV}, else {dl.STALL_S:g})."},
    )
    download_deadline_s: float | None = field(
        default=None, metadata={"help": f"Give a file's download up when not complete after this many seconds "
                                        f"(default: ${dl.DEADLINE_ENV}, else {dl.DEADLINE_S:g})."},
    )


def check_config(cfg: PrepareConfig) -> tuple[int, int, int]:
    dataset_spec(cfg.dataset)  # an unknown name is a one-line error listing the known ones
    if cfg.history_len < 1:
        raise InputError(f"--history_len must be at least 1, got {cfg.history_len}")
    if cfg.max_windows < 0:
        raise InputError(f"--max_windows must be >= 0 (0 keeps all), got {cfg.max_windows}")
    if cfg.item_kind is not None:
        prompts.item_kind(cfg.item_kind)  # a name of the table or NOUN/[PLURAL/]VERB, else one line
    if cfg.dataset == "interactions":
        check_interactions_config(cfg)
    if cfg.dataset == "amazon-2023" and not cfg.category:
        raise InputError("--category is required for --dataset amazon-2023 (e.g. Video_Games: the files "
                         "Video_Games.jsonl and meta_Video_Games.jsonl)")
    if cfg.target_style not in ("wrap", "item"):
        raise InputError(f"--target_style must be wrap or item, got {cfg.target_style!r}")
    if not 0 <= cfg.bad_row_tolerance <= 1:
        raise InputError(f"--bad_row_tolerance must be a fraction in [0, 1], got {cfg.bad_row_tolerance}")
    dl.download_limits(cfg.download_stall_s, cfg.download_deadline_s)
    return parse_split_ratio(cfg.split_ratio)


def check_interactions_config(cfg: PrepareConfig) -> None:
    for flag in ("interactions_file", "items_file"):
        if not getattr(cfg, flag):
            raise InputError(f"--{flag} is required for --dataset interactions")
    feedback = [f"--{f}" for f in ("rating_column", "label_column") if getattr(cfg, f)] + (
        ["--implicit"] if cfg.implicit else [])
    if len(feedback) != 1:
        raise InputError(f"--dataset interactions: give one of --rating_column (with --like_threshold), "
                         f"--label_column or --implicit{', not ' + ' and '.join(feedback) if feedback else ''}")
    if cfg.rating_column and cfg.like_threshold is None:
        raise InputError("--like_threshold is required with --rating_column (liked = rating > T)")
    if not cfg.rating_column and cfg.like_threshold is not None:
        raise InputError(f"--like_threshold applies to --rating_column only, not to {feedback[0]}")
    if cfg.implicit and cfg.negatives < 1:
        raise InputError(f"--negatives must be at least 1 with --implicit, got {cfg.negatives}")
    for flag in ("interactions_sep", "items_sep"):
        sep = separator(getattr(cfg, flag))
        if sep is not None and (len(sep) != 1 or sep in '"\n\r'):
            raise InputError(f"--{flag} {getattr(cfg, flag)!r}: a separator is one character ('\\t' for a tab)")
    for flag in ("interactions_names", "items_names"):
        names = column_names(getattr(cfg, flag))
        if names is not None and (not all(names) or len(set(names)) != len(names)):
            raise InputError(f"--{flag} {getattr(cfg, flag)!r}: give distinct, non-empty names separated by commas")
    if cfg.item_text is not None:
        item_text_fields(cfg.item_text)
    try:
        "".encode(cfg.encoding)
    except LookupError:
        raise InputError(f"--encoding {cfg.encoding!r}: unknown text encoding") from None


def item_kind_of(cfg: PrepareConfig) -> str:
    """The item kind the records are worded in (a spec of prompts.item_kind): the dataset's own, else --item_kind,
    else the dataset's default."""
    spec = dataset_spec(cfg.dataset)
    return prompts.item_kind(spec.item_kind or cfg.item_kind or spec.default_kind(cfg)).spec


def release_name(cfg: PrepareConfig) -> str | None:
    return cfg.release or dataset_spec(cfg.dataset).default_release(cfg.item_kind or "movie")


def fetch_raw_files(cfg: PrepareConfig) -> Path | None:
    """The raw directory (`raw_dir`, else DATA_DIR/RELEASE), with the release's missing files downloaded
    (verified) when `download` is set; for a dataset whose files are named by its own flags, `raw_dir` as given
    (relative file names are read from it: interactions.table_path; `--release R --download` fetches release R
    there, e.g. MovieLens-100K's u.data for the generic reader) or None."""
    name = release_name(cfg)
    if name is not None:
        dl.release(name)  # an unknown --release is an error even without --download
    if not dataset_spec(cfg.dataset).uses_raw_dir and not (name and cfg.download):  # else: fetch the release
        return Path(cfg.raw_dir) if cfg.raw_dir else None
    if cfg.raw_dir:
        raw_dir = Path(cfg.raw_dir)
    elif name is None:
        raise InputError(f"--raw_dir is required for --dataset {cfg.dataset} (no published release to read)")
    else:
        raw_dir = resolve_data_dir(cfg.data_dir) / name
    if cfg.download and name is not None:  # the folder --download fills: a file or a locked folder fails now
        from ..validation import check_output_dir

        if not cfg.raw_dir:  # the data directory itself first: a file there is named as --data_dir
            check_output_dir(raw_dir.parent, "--data_dir" if cfg.data_dir else "data directory")
        check_output_dir(raw_dir, "--raw_dir" if cfg.raw_dir else "--data_dir")
    if name is not None and (cfg.download or cfg.release or not cfg.raw_dir):  # the release's own folder
        dl.verify_present(name, raw_dir, cfg.download)
    if cfg.download:
        if name is None:
            raise missing_files(cfg.dataset, raw_dir, ["raw files"], what="--download has no published "
                                      f"release for this dataset (only for {', '.join(dl.RELEASES)})")
        dl.fetch_missing(name, raw_dir, cfg.mirror, stall_s=cfg.download_stall_s, deadline_s=cfg.download_deadline_s)
    return raw_dir


def _format_timestamp(value, unit):
    if unit is None:
        return None
    if unit == "day":
        return str(np.datetime64(int(value), "D"))
    return int(value)


def window_records(raw: RawRatings, cfg: PrepareConfig, like_threshold: float, kind: str):
    """All kept windows as records, in output order, and the catalog of the rated items."""
    df = raw.ratings
    codes, uniques = pd.factorize(df["item_id"], sort=False)
    known_unique = np.array([str(u) in raw.items for u in uniques], dtype=bool)
    known = known_unique[codes] if len(codes) else np.zeros(0, dtype=bool)
    raw.stats["ratings_with_unknown_item_dropped"] = int((~known).sum())
    if not known.all():
        df = df[known].reset_index(drop=True)
        codes = codes[known]
    if df.empty:
        raise InputError(f"{raw.sources[0]}: no ratings of items with a known text")

    if raw.timestamp_unit is not None:
        order_key = df["timestamp"].to_numpy()
    elif cfg.shuffle_seed is not None:
        order_key = np.random.default_rng(cfg.shuffle_seed).permutation(len(df))
    else:
        order_key = np.arange(len(df))  # file order
    history_rows, target_rows = sliding_windows(df["user_id"].to_numpy(), order_key, cfg.history_len,
                                                cfg.max_windows)
    if len(target_rows) == 0:
        raise InputError(f"{raw.sources[0]}: no user has more than --history_len={cfg.history_len} ratings")

    item_ids = df["item_id"].to_numpy()
    users = df["user_id"].to_numpy()
    liked = df["rating"].to_numpy() > like_threshold
    stamps = df["timestamp"].to_numpy()

    def item(row):
        item_id = str(item_ids[row])
        return item_id, raw.items[item_id]

    rated_ids = uniques[np.unique(codes)]
    negatives = (negative_sampler(users, item_ids, rated_ids, cfg.negatives, cfg.negative_seed)
                 if cfg.implicit else None)
    records = []
    for hist, tgt in tqdm(zip(history_rows, target_rows), total=len(target_rows), desc="records",
                          mininterval=2, disable=len(target_rows) < 50000):
        history = []
        for row in hist:
            item_id, title = item(row)
            history.append({"item_id": item_id, "title": title, "liked": bool(liked[row])})
        target_id, target_title = item(tgt)
        records.append(build_record(
            user_id=users[tgt], history=history, target={"item_id": target_id, "title": target_title},
            label=int(liked[tgt]), kind=kind, timestamp=_format_timestamp(stamps[tgt], raw.timestamp_unit),
            target_style=cfg.target_style,
        ))
        for negative in negatives(users[tgt]) if negatives else ():  # implicit feedback: drawn dislikes
            records.append(build_record(
                user_id=users[tgt], history=history, target={"item_id": negative, "title": raw.items[negative]},
                label=0, kind=kind, timestamp=records[-1]["timestamp"], target_style=cfg.target_style,
            ))
    rated = {str(u) for u in rated_ids}
    catalog = {k: v for k, v in raw.items.items() if k in rated}
    stats = {"n_ratings": int(len(df)), "n_users": int(pd.unique(users).size), "n_items": len(catalog),
             "like_rate_ratings": float(liked.mean())}
    return records, catalog, stats


def _like_rate(records):
    return float(np.mean([r["label"] for r in records])) if records else None


def _source_entry(path: Path) -> dict:
    entry = {"file": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    downloaded = dl.provenance_of(path)
    if downloaded:
        entry["downloaded"] = downloaded  # url, commit, verified hash
    return entry


def prepare_dataset(cfg: PrepareConfig) -> dict:
    """Run the whole preparation; returns meta.json's content."""
    ratio = check_config(cfg)
    spec = dataset_spec(cfg.dataset)
    like_threshold = cfg.like_threshold if cfg.like_threshold is not None else spec.like_threshold
    extra = {}
    raw_dir = fetch_raw_files(cfg)
    cfg = dataclasses.replace(cfg, raw_dir=None if raw_dir is None else str(raw_dir), item_kind=item_kind_of(cfg))
    with counting_skipped_rows() as malformed:
        loaded = load_raw(cfg.dataset, cfg)
    if isinstance(loaded, RawRatings):
        kind = cfg.item_kind
        threshold = loaded.like_threshold if loaded.like_threshold is not None else like_threshold
        records, catalog, extra = window_records(loaded, cfg, threshold, kind)
        n_train, n_valid, _ = split_sizes(len(records), ratio)
        splits = {"train": records[:n_train], "valid": records[n_train:n_train + n_valid],
                  "test": records[n_train + n_valid:]}
        sources, skipped = loaded.sources, loaded.stats
    else:  # an already windowed and split release
        splits, catalog, kind, sources, skipped = (loaded.splits, loaded.items, loaded.kind, loaded.sources,
                                                   loaded.stats)

    skipped = {**skipped, "malformed_rows": sum(malformed.values()), "malformed_rows_by_file": malformed}
    params = asdict(cfg)
    params.update(like_threshold=like_threshold, split_ratio=":".join(map(str, ratio)))
    for key in ("raw_dir", "output_dir", "download", "data_dir", "mirror", "download_stall_s",
                "download_deadline_s") + spec.unused_params:
        params.pop(key)
    for key in OWN_PARAMS:  # another dataset's settings; the files are in the sources
        if key not in spec.own_params or key.endswith("_file"):
            params.pop(key)
    all_records = [r for s in SPLITS for r in splits[s]]
    meta = {
        "dataset": cfg.dataset,
        "kind": kind,
        "tlrec_version": __version__,
        "params": params,
        "counts": {s: len(splits[s]) for s in SPLITS},
        "like_rate": {**{s: _like_rate(splits[s]) for s in SPLITS}, "all": _like_rate(all_records)},
        **extra,
        "skipped": skipped,
        "sources": [_source_entry(p) for p in sources],
    }
    with staged_output_dir(cfg.output_dir) as stage:
        for split in SPLITS:
            save_records(stage / f"{split}.json", splits[split])
        atomic_write_json(stage / "items.json", catalog, indent=1)
        atomic_write_json(stage / "meta.json", meta)
        remove_stale_k_shots(Path(cfg.output_dir), stage / "train.json")
    logger.info("wrote %s: %s", cfg.output_dir, meta["counts"])
    return meta


def remove_stale_k_shots(prepared_dir: Path, new_train: Path) -> None:
    """K-shot files drawn from a train.json that this preparation replaces with different records."""
    old_train = prepared_dir / "train.json"
    stale = sorted(prepared_dir.glob(k_shot_filename("*", "*")))
    if stale and (not old_train.is_file() or sha256_file(old_train) != sha256_file(new_train)):
        for path in stale:
            path.unlink()
        logger.info("%s: removed %d K-shot file(s) drawn from the previous train.json (%s)", prepared_dir,
                    len(stale), ", ".join(p.name for p in stale))


def write_k_shot(prepared_dir, k: int, seed: int) -> Path:
    """K records drawn reproducibly from `prepared_dir/train.json` into train_k{K}_seed{S}.json."""
    prepared_dir = Path(prepared_dir)
    train_path = prepared_dir / "train.json"
    if not train_path.is_file():
        raise InputError(f"{train_path}: file not found (run run_prepare_data.py on --output_dir first)")
    pool = load_records(train_path)
    sample = sample_k_shot(pool, k, seed, source=str(train_path))
    out = prepared_dir / k_shot_filename(k, seed)
    save_records(out, sample)
    logger.info("wrote %s (%d records)", out, len(sample))
    return out

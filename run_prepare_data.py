"""Prepare rec-tuning records from a raw public dataset, or draw a K-shot sample from prepared records.

    python run_prepare_data.py --dataset ml-100k --output_dir data/movie --download     # DATA_DIR/ml-100k
    python run_prepare_data.py --dataset windows-csv --release netflix --output_dir data/netflix --download
    python run_prepare_data.py --dataset records --release book --output_dir data/book --download  # TALLRec
    python run_prepare_data.py --dataset bookcrossing --raw_dir data/bx --output_dir data/book --like_threshold 5
    python run_prepare_data.py --k_shot 64 --seed 0 --output_dir data/movie      # -> train_k64_seed0.json
"""

import argparse

from tlrec_utils.dataset_registry import dataset_help, like_threshold_help, release_help
from tlrec_utils.errors import InputError, cli_entry, exit_status
from tlrec_utils.prepare import PrepareConfig, check_config, prepare_dataset, write_k_shot
from tlrec_utils.raw_datasets import DEFAULT_BAD_ROW_TOLERANCE
from tlrec_utils.validation import check_output_dir


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help=dataset_help())
    p.add_argument("--raw_dir", help="folder with the raw files (default: DATA_DIR/RELEASE; see README: data)")
    p.add_argument("--data_dir", help="where the published releases live (default: $TLREC_DATA_DIR, else "
                                      "~/.cache/tlrec)")
    p.add_argument("--release", help=release_help())
    p.add_argument("--output_dir", required=True, help="prepared folder (written atomically)")
    p.add_argument("--history_len", type=int, default=10)
    p.add_argument("--max_windows", type=int, default=10000, help="keep the last N windows (0: all)")
    p.add_argument("--split_ratio", default="8:1:1", help="train:valid:test, split in order")
    p.add_argument("--like_threshold", type=float, default=None, help=like_threshold_help())
    p.add_argument("--download", action="store_true", help="fetch the release's missing files (verified)")
    p.add_argument("--mirror", help="download from MIRROR/HOST/PATH instead of https://HOST/PATH "
                                    "(default: $TLREC_MIRROR)")
    p.add_argument("--keep_implicit", action="store_true",
                   help="bookcrossing: keep rating 0 (implicit) as a dislike, as TALLRec's release did")
    p.add_argument("--shuffle_seed", type=int, default=None,
                   help="bookcrossing (no timestamps): shuffle each user's ratings with this seed "
                        "instead of keeping file order")
    p.add_argument("--item_kind", default="movie",
                   help="windows-csv: movie or book wording (also picks the default release)")
    p.add_argument("--target_style", default="wrap",
                   help="target quoting: wrap (TALLRec) or item (TLRec Amazon-Books release)")
    p.add_argument("--bad_row_tolerance", type=float, default=DEFAULT_BAD_ROW_TOLERANCE,
                   help="fraction of malformed rows skipped (and reported) before failing")
    p.add_argument("--k_shot", type=int, default=None, help="draw K records from OUTPUT_DIR/train.json")
    p.add_argument("--seed", type=int, default=0, help="K-shot sampling seed")
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    check_output_dir(args.output_dir, "--output_dir")
    if args.k_shot is not None:
        return write_k_shot(args.output_dir, args.k_shot, args.seed)
    if not args.dataset:
        raise InputError("--dataset is required (or --k_shot K on a prepared --output_dir)")
    cfg = PrepareConfig(**{k: v for k, v in vars(args).items() if k not in ("k_shot", "seed")})
    check_config(cfg)
    return prepare_dataset(cfg)


if __name__ == "__main__":
    raise SystemExit(exit_status(main()))

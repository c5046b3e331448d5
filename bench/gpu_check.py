"""GPU proof of the documented throughput and memory figures (docs/scaling.md, docs/measurements.md), on a
LLaMA-7B-shaped model with random bf16 weights.

Nothing is downloaded: the model is built from a config on the GPU, the tokenizer is trained here on synthetic
records (tests/helpers.py). One table: LoRA training (r=8 on q_proj,v_proj, records <= 512 tokens) padded (micro
batch 4, as the docs/scaling.md one-GPU row) vs packed, micro batches of at most 8192/16384 tokens (optimizer steps of
64 records), with and without gradient checkpointing (all layers, half), sdpa and flash_attention_2 where installed:
real (non-padding) tokens/s, peak memory and MFU by the 4N convention (LoRA: forward + input gradients, 4 x
parameters FLOPs a token) against the card's dense bf16 peak; the figures go to bench/measured_throughput.json
(--record), which the dry run's GPU-hours estimate reads. Then full-prompt scoring vs `--eval_mode generate` on the
same 256 prompts; shared-prefix ranking (packed and KV cache) vs full prompts; each next to the documented figure.
Exits 1 when a check fails. Run by bench/gpu_check.sh; `--cpu` builds a tiny model instead (wiring check, no
figures).

    python bench/gpu_check.py [--cpu] [--work_dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

# docs/scaling.md "GPUs, DeepSpeed and memory": bf16 weights 13.5 GB.
DOCS_WEIGHTS_GB = 13.5
GOALS = {"generate": 10.0, "ranking": 3.0}  # docs/measurements.md: score vs untuned generate >= 10x; ranking >= 3x


def build(cpu: bool, work: Path):
    import torch
    from helpers import synthetic_records
    from transformers import LlamaConfig, LlamaForCausalLM

    from tlrec_utils.model.tiny_llm import iter_texts, train_tokenizer

    records, catalog = synthetic_records(n=400, history_len=40, n_users=80)
    texts = list(iter_texts([])) + [r["instruction"] + " " + r["input"] for r in records] + list(catalog.values())
    tokenizer = train_tokenizer(texts, vocab_size=1000 if cpu else 8000)
    tokenizer.padding_side = "left"
    shape = ({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "vocab_size": len(tokenizer)} if cpu else
             {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
              "vocab_size": 32000})  # huggyllama/llama-7b
    config = LlamaConfig(**shape, max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    device = "cpu" if cpu else "cuda"
    dtype = torch.float32 if cpu else torch.bfloat16
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaForCausalLM(config)  # random weights, created where they live
    torch.set_default_dtype(default)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, records, catalog


def gigabytes(n_bytes) -> float:
    return n_bytes / 1e9


class Memory:
    """Peak GPU memory of a block (bytes; 0 on CPU)."""

    def __enter__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.started
        self.peak = torch.cuda.max_memory_allocated() if self.cuda else 0


# peak dense bf16 tensor throughput (FLOP/s, no sparsity) by card name, from the vendors' data sheets
CARD_PEAK_FLOPS = {"H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
                   "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def card_peak(name: str) -> float | None:
    return next((peak for key, peak in CARD_PEAK_FLOPS.items() if key.lower() in name.lower()), None)


# the training rows: (label, key in the measurements file, settings); records <= 512 tokens, LoRA r=8 on q,v
TRAIN_ROWS = [
    ("padded, micro batch 4", "padded", {}),
    ("padded, micro batch 4, checkpointing", "padded_checkpointing", {"ckpt": 1.0}),
    ("packed, micro batch 4", "packed", {"packing": True}),
    ("packed, <= 8192 tokens", "packed_budget", {"budget": 8192}),
    ("packed, <= 16384 tokens, checkpointing", "packed_budget_checkpointing", {"budget": 16384, "ckpt": 1.0}),
    ("packed, <= 16384 tokens, checkpointing 1/2 layers", "packed_budget_checkpointing_half",
     {"budget": 16384, "ckpt": 0.5}),
]
CPU_BUDGETS = {8192: 1024, 16384: 2048}  # --cpu: the tiny model's records are shorter


def train_check(model, tokenizer, records, work: Path, cpu: bool, settings: dict, steps: int):
    """LoRA steps through TLRecTrainer; (model, real tokens/s after the first optimizer step, peak bytes, final
    loss, mean record length). `settings`: packing, budget (tokens; optimizer steps of 64 records), ckpt (the
    fraction of layers checkpointed)."""
    import torch
    from transformers import TrainerCallback

    from tlrec_utils.arguments import LoraArguments, TuningTrainingArguments
    from tlrec_utils.model.loading import prepare_for_training
    from tlrec_utils.model.tokenization import RecordEncoder
    from tlrec_utils.tuning.packing import PACKING_KERNELS, PackedCollator
    from tlrec_utils.tuning.training import TLRecTrainer, TuningCollator, token_budget, training_dataset

    features = training_dataset(records, RecordEncoder(tokenizer, 512), "synthetic")
    budget = settings.get("budget")
    budget = CPU_BUDGETS.get(budget, budget) if cpu else budget
    lora = LoraArguments(lora_r=8, lora_alpha=16, lora_dropout=0.05, lora_target_modules="q_proj,v_proj")
    ckpt = settings.get("ckpt")
    peft_model = prepare_for_training(model, lora, gradient_checkpointing=bool(ckpt), checkpoint_fraction=ckpt or 1)
    args = TuningTrainingArguments(
        output_dir=str(work / "train"), per_device_train_batch_size=4, gradient_accumulation_steps=16 if budget else 1,
        max_steps=steps, learning_rate=3e-4, warmup_steps=0, bf16=not cpu, use_cpu=cpu, save_strategy="no",
        report_to="none", logging_steps=1, train_sampling_strategy="sequential", disable_tqdm=True,
        dataloader_num_workers=0, max_tokens_per_batch=budget)
    plan = token_budget(features, args)
    packing = bool(settings.get("packing") or budget)
    flash = model.config._attn_implementation in PACKING_KERNELS
    marks = []

    class Mark(TrainerCallback):
        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    trainer = TLRecTrainer(model=peft_model, args=args, train_dataset=features,
                           data_collator=TuningCollator(tokenizer.pad_token_id), callbacks=[Mark()],
                           packed_collator=PackedCollator(flash_kwargs=flash) if packing else None, budget=plan)
    try:
        with Memory() as mem:
            result = trainer.train()
    finally:
        model = peft_model.unload()  # the bare base model again for the next check
        if ckpt:
            model.gradient_checkpointing_disable()
    per_step = 64 if budget else 4
    lengths = [len(f["input_ids"]) for f in features[: steps * per_step]]
    tokens_after_first = sum(lengths[per_step:])
    tokens_per_s = tokens_after_first / (marks[-1] - marks[0]) if len(marks) > 1 else float("nan")
    return model, tokens_per_s, mem.peak, result.training_loss, sum(lengths) / len(lengths)


def training_rows(model, tokenizer, records, work: Path, cpu: bool, n_params: int, rows: list, failed: list) -> dict:
    """The training table (padded vs packed, token budgets, checkpointing; sdpa, and flash_attention_2 where
    installed): real tokens/s, peak memory, MFU by the 4N convention. Returns {key: tokens/s}."""
    import numpy as np
    import torch
    from transformers.utils import is_flash_attn_2_available

    peak = None if cpu else card_peak(torch.cuda.get_device_name())
    kernels = ["sdpa"] + (["flash_attention_2"] if not cpu and is_flash_attn_2_available() else [])
    measured = {}
    for kernel in kernels:
        model.set_attn_implementation(kernel)
        for label, key, settings in TRAIN_ROWS:
            if kernel != "sdpa" and not (settings.get("packing") or settings.get("budget")):
                continue  # the padded rows once, with sdpa
            if cpu and settings.get("budget"):
                label = label.replace(str(settings["budget"]), str(CPU_BUDGETS[settings["budget"]]))
            label, key = f"LoRA r=8 q,v, {label}, {kernel}", f"{key}_{kernel}"
            steps = (3 if cpu else 4) if settings.get("budget") else (3 if cpu else 12)
            try:
                model, tps, mem, loss, mean_len = train_check(model, tokenizer, records, work, cpu, settings, steps)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                rows.append((label, "out of memory", "", ""))
                continue
            if not np.isfinite(loss):
                failed.append(f"{label}: loss {loss}")
            mfu = f"MFU {100 * tps * 4 * n_params / peak:.0f}% (4N)" if peak else "MFU n/a (CPU or unknown card)"
            rows.append((f"{label} (mean {mean_len:.0f})", f"{tps:,.0f} real tokens/s", f"{gigabytes(mem):.1f} GB",
                         mfu))
            measured[key] = round(tps, 1)
    model.set_attn_implementation("sdpa")
    return measured


def record_measurements(path: Path, device: str, measured: dict, n_params: int) -> None:
    """The training figures for the dry run's GPU-hours estimate (tlrec_utils/experiments/estimate.py)."""
    import datetime
    import json
    import re

    card = re.search(r"\b([A-Z]\d{2,3}[A-Z]?)\b", device)
    path.write_text(json.dumps({
        "card": card.group(1) if card else device, "device": device, "date": datetime.date.today().isoformat(),
        "model": f"LLaMA-7B-shaped, {n_params / 1e9:.2f} B parameters, bf16, LoRA r=8 q,v (bench/gpu_check.py)",
        "train_tokens_per_s": measured}, indent=1) + "\n")
    print(f"training figures written to {path} (the dry run's GPU-hours estimate reads them)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="tiny model on the CPU: checks the wiring only")
    ap.add_argument("--work_dir")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--rank_targets", type=int, default=16)
    ap.add_argument("--record", default=str(ROOT / "bench" / "measured_throughput.json"),
                    help="write the training figures here (GPU only): the dry run's GPU-hours estimate reads them")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from tlrec_utils.evaluation.evaluate import ranking_candidates
    from tlrec_utils.evaluation.scoring import (
        candidate_group_stats,
        generation_answer_stats,
        p_yes_from_stats,
        prompt_answer_stats,
        shared_prefix_stats,
    )
    from tlrec_utils.model.tokenization import RecordEncoder, derive_answer_tokens

    if not args.cpu and not torch.cuda.is_available():
        print("FAIL no CUDA GPU visible (run with CPU_CHECK=1 for the CPU wiring check)")
        return 1
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_check_"))
    rows, failed = [], []
    started = time.perf_counter()
    model, tokenizer, records, catalog = build(args.cpu, work)
    n_params = sum(p.numel() for p in model.parameters())
    device = "CPU" if args.cpu else torch.cuda.get_device_name()
    print(f"model: LLaMA-shaped, {n_params / 1e9:.2f} B parameters, {next(model.parameters()).dtype}, on {device}; "
          f"built in {time.perf_counter() - started:.0f} s")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights_note = f"weights {gigabytes(weights):.1f} GB (docs bf16: {DOCS_WEIGHTS_GB} GB)"

    # 1. LoRA training: padded vs packed, token budgets, checkpointing, sdpa vs flash-attention
    peak = None if args.cpu else card_peak(device)
    print(f"card peak (dense bf16): {peak / 1e12:,.0f} TFLOP/s" if peak else "card peak: unknown (MFU not shown)")
    measured = training_rows(model, tokenizer, records, work, args.cpu, n_params, rows, failed)
    if args.record and not args.cpu:
        record_measurements(Path(args.record), device, measured, n_params)
    model.eval()

    # 2. full-prompt scoring vs the authors' generate method on the same prompts
    answer = derive_answer_tokens(tokenizer)
    encoder = RecordEncoder(tokenizer, 512, answer)
    test = records[: args.prompts]
    encodings = encoder.prompt_ids_many(test, ["synthetic"] * len(test))
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    with Memory() as m_score:
        scored = prompt_answer_stats(model, encodings, answer, pad, batch_size=16, progress=False)
    with Memory() as m_gen:
        generated, n_new = generation_answer_stats(model, encodings, answer, pad, eos, batch_size=16,
                                                   max_new_tokens=128, progress=False)
    diff = np.abs(p_yes_from_stats(scored) - p_yes_from_stats(generated)).max()
    ratio = m_gen.seconds / m_score.seconds
    rows.append((f"scoring, {len(encodings)} prompts, batch 16", f"{len(encodings) / m_score.seconds:,.1f} prompts/s",
                 f"{gigabytes(m_score.peak):.1f} GB", weights_note))
    rows.append((f"--eval_mode generate, same prompts ({n_new.mean():.0f} new tokens)",
                 f"{len(encodings) / m_gen.seconds:,.1f} prompts/s ({ratio:.1f}x slower)",
                 f"{gigabytes(m_gen.peak):.1f} GB", f"goal: scoring >= {GOALS['generate']:.0f}x faster"))
    if diff > (1e-4 if args.cpu else 5e-2):
        failed.append(f"scoring and generate disagree: max |dP(Yes)| {diff:.3g}")
    if not args.cpu and ratio < GOALS["generate"]:
        failed.append(f"scoring only {ratio:.1f}x faster than generate (goal: >= {GOALS['generate']:.0f}x)")

    # 3. shared-prefix ranking vs full prompts (51 candidates per target)
    cands = ranking_candidates(records, catalog, 50, seed=0)[: args.rank_targets]
    groups = [encoder.prompt_ids_many(cs, ["synthetic"] * len(cs)) for _, cs in cands]
    flat = [e for g in groups for e in g]
    with Memory() as m_full:
        full = prompt_answer_stats(model, flat, answer, pad, batch_size=16, progress=False)
    with Memory() as m_pack:
        packed = np.concatenate(candidate_group_stats(model, groups, answer, pad, progress=False))
    with Memory() as m_cache:
        cached = np.concatenate([shared_prefix_stats(model, g, answer, pad, batch_size=64) for g in groups])
    diff = max(np.abs(p_yes_from_stats(x) - p_yes_from_stats(full)).max() for x in (packed, cached))
    what = f"{len(groups)} targets x 51 candidates"
    rows.append((f"ranking, full prompts, {what}", f"{len(flat) / m_full.seconds:,.1f} prompts/s",
                 f"{gigabytes(m_full.peak):.1f} GB", weights_note))
    for name, m in (("packed shared prefix", m_pack), ("KV-cache shared prefix", m_cache)):
        speed = f"{len(flat) / m.seconds:,.1f} prompts/s ({m_full.seconds / m.seconds:.1f}x)"
        rows.append((f"ranking, {name}", speed, f"{gigabytes(m.peak):.1f} GB",
                     f"goal: >= {GOALS['ranking']:.0f}x"))
    if diff > (1e-4 if args.cpu else 5e-2):
        failed.append(f"shared-prefix ranking disagrees with full prompts: max |dP(Yes)| {diff:.3g}")
    if not args.cpu and m_full.seconds / m_pack.seconds < GOALS["ranking"]:
        failed.append(f"packed ranking only {m_full.seconds / m_pack.seconds:.1f}x faster than full prompts")

    width = max(len(r[0]) for r in rows)
    print(f"\n{'check':<{width}} | {'throughput':<36} | {'peak mem':>8} | estimate or goal")
    print("-" * (width + 70))
    for r in rows:
        print(f"{r[0]:<{width}} | {r[1]:<36} | {r[2]:>8} | {r[3]}")
    print(f"\nwall time {time.perf_counter() - started:.0f} s")
    for f in failed:
        print(f"FAIL {f}")
    if not failed:
        print("PASS gpu_check table" + (" (CPU wiring check: figures are not GPU figures)" if args.cpu else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

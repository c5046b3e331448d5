"""GPU proof of the documented throughput and memory figures (docs/scaling.md, docs/measurements.md), on a
LLaMA-7B-shaped model with random bf16 weights.

Nothing is downloaded: the model is built from a config on the GPU, the tokenizer is trained here on synthetic
records (tests/helpers.py). One table: LoRA training (r=8 on q_proj,v_proj, max length 512, micro batch 4, as the
docs/scaling.md one-GPU row) tokens/s and peak memory; full-prompt scoring vs `--eval_mode generate` on the same 256
prompts; shared-prefix ranking (packed and KV cache) vs full prompts; each next to the documented figure. Exits 1
when a check fails. Run by bench/gpu_check.sh; `--cpu` builds a tiny model instead (wiring check, no figures).

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

# docs/scaling.md "GPUs, DeepSpeed and memory": 7B LoRA bf16, gradient checkpointing, batch 4, one GPU: ~16 GB;
# the 8-GPU LoRA row (batch 4, no checkpointing flag): ~23 GB each; bf16 weights 13.5 GB.
DOCS_TRAIN_GB = {"checkpointing": 16.0, "no checkpointing": 23.0}
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


def train_check(model, tokenizer, records, work: Path, cpu: bool, checkpointing: bool, steps: int):
    """LoRA steps through TLRecTrainer; (real tokens/s after the first step, peak bytes, final loss)."""
    import torch
    from transformers import TrainerCallback

    from tlrec_utils.arguments import LoraArguments, TuningTrainingArguments
    from tlrec_utils.model.loading import prepare_for_training
    from tlrec_utils.model.tokenization import RecordEncoder
    from tlrec_utils.tuning.training import TLRecTrainer, TuningCollator, training_dataset

    encoder = RecordEncoder(tokenizer, 512)
    features = training_dataset(records, encoder, "synthetic")
    batch = 4
    lora = LoraArguments(lora_r=8, lora_alpha=16, lora_dropout=0.05, lora_target_modules="q_proj,v_proj")
    peft_model = prepare_for_training(model, lora, gradient_checkpointing=checkpointing)
    args = TuningTrainingArguments(
        output_dir=str(work / "train"), per_device_train_batch_size=batch, max_steps=steps, learning_rate=3e-4,
        warmup_steps=0, bf16=not cpu, use_cpu=cpu, save_strategy="no", report_to="none", logging_steps=1,
        train_sampling_strategy="sequential", disable_tqdm=True, dataloader_num_workers=0,
    )
    stamps = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    trainer = TLRecTrainer(model=peft_model, args=args, train_dataset=features,
                           data_collator=TuningCollator(tokenizer.pad_token_id), callbacks=[Stamp()])
    with Memory() as mem:
        result = trainer.train()
    lengths = [len(f["input_ids"]) for f in features[: steps * batch]]
    tokens_after_first = sum(lengths[batch:])
    tokens_per_s = tokens_after_first / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    model = peft_model.unload()  # the bare base model again for the next check
    if checkpointing:
        model.gradient_checkpointing_disable()
    return model, tokens_per_s, mem.peak, result.training_loss, sum(lengths) / len(lengths)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="tiny model on the CPU: checks the wiring only")
    ap.add_argument("--work_dir")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--rank_targets", type=int, default=16)
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

    # 1. LoRA training at the paper's settings, with and without gradient checkpointing
    steps = 3 if args.cpu else 12
    for label, ckpt in (("checkpointing", True), ("no checkpointing", False)):
        try:
            model, tps, peak, loss, mean_len = train_check(model, tokenizer, records, work, args.cpu, ckpt, steps)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append((f"LoRA r=8 q,v, batch 4, len<=512, {label}", "out of memory", "",
                         f"docs ~{DOCS_TRAIN_GB[label]:.0f} GB"))
            failed.append(f"LoRA training ({label}): out of memory")
            continue
        if not np.isfinite(loss):
            failed.append(f"LoRA training ({label}): loss {loss}")
        rows.append((f"LoRA r=8 q,v, batch 4, len<=512 (mean {mean_len:.0f}), {label}", f"{tps:,.0f} tokens/s",
                     f"{gigabytes(peak):.1f} GB", f"docs ~{DOCS_TRAIN_GB[label]:.0f} GB"))
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

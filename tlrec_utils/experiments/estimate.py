"""The grid's plan (`run_experiments.py --dry_run`): every command, and a GPU-hours estimate from measured and
assumed throughputs and record counts.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from ..errors import mask_secrets
from ..evaluation.metrics import NUM_NEGATIVES
from .cells import Cell, cell_argv, cell_phases, cell_pipeline_config, is_finished
from .command_line import flags

# Measured training throughput per GPU (bench/gpu_check.sh writes it; docs/measurements.md, GPU checks): LoRA r=8
# on q,v of a LLaMA-7B-shaped model, records <= 512 tokens (mean 424), bf16, one GPU; a row per batch setting
MEASURED_FILE = Path(__file__).resolve().parents[2] / "bench" / "measured_throughput.json"
MEASURED_BACKBONE_B = 7.0  # the measured model's size (billions of parameters)


ESTIMATE_DEFAULTS = {
    # a config's `estimate:` mapping overrides any of these; train_tokens_per_s None: the measured figure above
    # (with or without gradient checkpointing, as the cell's tuning settings say; a backbone larger than ~8B
    # scaled by 7B / its size, an assumption); the forward figure is an assumption
    "train_tokens_per_s": None,
    "eval_tokens_per_s": 15000.0,  # forward passes only (assumed; bench/gpu_check.sh: scoring 56.4 prompts/s)
    "tokens_per_record": {"rec": 300, "cot": 700},
    "liked_share": 0.55,  # test records ranked among the negatives (sampled NDCG)
    # record counts of files that do not exist yet: the known release sizes (KNOWN_RECORDS), else these, marked
    # assumed (CoT: users hit x 3 records, x the share of stages trained)
    "records": {"cot": 3000, "source": 8000, "valid": 1000, "test": 1000, "target": 8000},
}


# records per split of the published releases at the pipeline's defaults (max_windows 10000, split 8:1:1): the
# TLRec authors' Netflix and Amazon-Book (preprocess_data_book.py @561abcf lines 9-12: the last 10,000 windows,
# 8:1:1; the release's csv files), MovieLens-100K prepared as TALLRec (docs/data.md), TALLRec's Book records
# (valid.json and test.json of data/book @c1db29c; its train.json is not counted here)
KNOWN_RECORDS = {
    "netflix": {"train": 8000, "valid": 1000, "test": 1000},
    "amazon-book": {"train": 8000, "valid": 1000, "test": 1000},
    "ml-100k": {"train": 8000, "valid": 1000, "test": 1000},
    "movie": {"train": 8000, "valid": 1000, "test": 1000},
    "book": {"valid": 2427, "test": 2427},
}


def _last_flag(argv: list[str], name: str):
    value = None
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            value = argv[i + 1]
    return value


def _count_records(path, role: str, est: dict, cache: dict, subdirs: dict | None = None) -> int:
    """Records in `path` (read when the file exists), else the release's known size, else the assumed count;
    `cache["origin"]` notes where each count came from (the dry run prints it)."""
    origin = cache.setdefault("origin", {})
    if path and path not in cache:
        p = Path(path)
        if p.is_file():
            cache[path] = len(json.loads(p.read_text(encoding="utf-8")))
            origin[path] = "read"
        else:
            which, split = p.parent.name, p.stem
            known = KNOWN_RECORDS.get((subdirs or {}).get(which, ""), {}).get(split)
            if p.parent.parent.name == "data" and known:
                cache[path] = known
                origin[path] = f"known size of the {subdirs[which]} release"
            else:
                cache[path] = est["records"][role]
                origin[path] = f"assumed (estimate.records.{role})"
    return cache.get(path) or est["records"][role]


def phase_tokens(phase, est: dict, cache: dict, subdirs: dict | None = None) -> tuple[float, float]:
    """(training tokens, forward-only tokens) of one pipeline phase: records x epochs x tokens per record,
    validation passes, and test prompts (with the ranking candidates); an upper bound (early stopping may stop
    sooner)."""
    import math

    argv = phase.argv
    tpr = est["tokens_per_record"]
    if phase.kind == "tuning":
        train = _last_flag(argv, "--train_files")
        role = "cot" if "cot" in phase.key else ("source" if "source" in phase.key else "target")
        n = _count_records(train, role, est, cache, subdirs)
        if role == "cot" and "--stages" in argv:  # stages: the values after the flag
            i = argv.index("--stages") + 1
            while i < len(argv) and not argv[i].startswith("--"):
                i += 1
            n = n * (i - argv.index("--stages") - 1) / 3
        if _last_flag(argv, "--k_shot"):
            n = min(n, int(_last_flag(argv, "--k_shot")))
        epochs = float(_last_flag(argv, "--num_train_epochs") or 1)
        train_tokens = n * epochs * tpr["cot" if role == "cot" else "rec"]
        forward = 0.0
        if _last_flag(argv, "--val_file"):
            batch = int(_last_flag(argv, "--per_device_train_batch_size") or 8) * int(
                _last_flag(argv, "--gradient_accumulation_steps") or 1)
            steps = math.ceil(n * epochs / batch)
            evals = steps // max(1, int(float(_last_flag(argv, "--eval_steps") or 10)))
            n_val = _count_records(_last_flag(argv, "--val_file"), "valid", est, cache, subdirs)
            max_val = _last_flag(argv, "--max_val_records")
            forward = evals * min(n_val, int(max_val) if max_val else n_val) * tpr["rec"] * 2  # loss + answer
        return train_tokens, forward
    if phase.kind == "eval":
        n = _count_records(_last_flag(argv, "--test_file"), "test", est, cache, subdirs)
        if _last_flag(argv, "--limit"):
            n = min(n, int(_last_flag(argv, "--limit")))
        negatives = int(_last_flag(argv, "--num_negatives") or NUM_NEGATIVES)
        return 0.0, n * (1 + est["liked_share"] * (negatives + 1)) * tpr["rec"]
    return 0.0, 0.0


def _tuning_setting(pipeline_config, key: str):
    values = [(getattr(pipeline_config, name) or {}).get(key)
              for name in ("tuning", "cot_tuning", "source_tuning", "kshot_tuning")]
    return next((v for v in values if v not in (None, "")), None)


def measured_train_figure(pipeline_config) -> tuple[float, str]:
    """(tokens/s, where from): the MEASURED_FILE row of the cell's batches (padded, or packed micro batches when
    --max_tokens_per_batch), checkpointing and attention kernel; the padded row when that one was not measured."""
    ckpt = "_checkpointing" if str(_tuning_setting(pipeline_config, "gradient_checkpointing")).lower() == "true" else ""
    kernel = "flash_attention_2" if _tuning_setting(pipeline_config, "attn_implementation") == "flash_attention_2" \
        else "sdpa"
    rows = "packed_budget" if _tuning_setting(pipeline_config, "max_tokens_per_batch") else "padded"
    measured = json.loads(MEASURED_FILE.read_text(encoding="utf-8"))
    figures = measured["train_tokens_per_s"]
    key = next(k for k in (f"{rows}{ckpt}_{kernel}", f"{rows}{ckpt}_sdpa", f"padded{ckpt}_sdpa") if k in figures)
    figure = float(figures[key])
    return figure, (f"measured {figure:,.0f} tokens/s: LoRA 7B on one {measured['card']} "
                    f"{'with' if ckpt else 'without'} gradient checkpointing, {key.replace('_', ' ')} "
                    f"({measured['date']}, bench/{MEASURED_FILE.name})")


def train_throughput(est: dict, pipeline_config) -> tuple[float, str]:
    """(training tokens/s per GPU, where the figure comes from) for a pipeline cell."""
    if est.get("train_tokens_per_s"):
        return float(est["train_tokens_per_s"]), "estimate.train_tokens_per_s of the config"
    import re

    figure, what = measured_train_figure(pipeline_config)
    match = re.search(r"(\d+(?:\.\d+)?)b\b", str(pipeline_config.base_model or "").lower())
    size = float(match.group(1)) if match else None
    if size and size > 8:
        figure = figure * MEASURED_BACKBONE_B / size
        what += f" x 7/{size:g} for a {size:g}B backbone (assumed: inversely proportional to its size)"
    elif not pipeline_config.base_model:
        what += " (the cell builds the tiny model: far faster in fact)"
    return figure, what


def dry_run(config, cells: list[Cell], out=None) -> float:
    """Print the setup steps and every cell's commands (each pipeline phase's exact command line: `accelerate
    launch ...` when the pipeline's launcher is accelerate) and a GPU-hours estimate. Works on a machine with no
    data and no model: nothing is read beyond the config, nothing fetched or written; missing data shows as
    setup steps to do, record counts come from the known release sizes or are marked assumed. Returns the
    GPU-hours."""
    from .phases import domains, raw_dir
    from .pipeline import plan_fingerprints

    out = out or sys.stdout
    est = {**ESTIMATE_DEFAULTS, **config.estimate}
    est["tokens_per_record"] = {**ESTIMATE_DEFAULTS["tokens_per_record"], **est["tokens_per_record"]}
    est["records"] = {**ESTIMATE_DEFAULTS["records"], **est["records"]}
    for n, step in enumerate(config.setup):
        state = "done" if Path(step.creates).exists() else "todo"
        print(f"{state}  setup {n}: {shlex.join([sys.executable, step.script, *flags(dict(step.args))])}", file=out)
    cache: dict = {}
    total_train = total_forward = 0.0
    rows, figures = [], {}
    for cell in cells:
        state = "done" if is_finished(config, cell) else "todo"
        if cell.script != "run_pipeline.py":
            command = mask_secrets(shlex.join([sys.executable, cell.script, *cell_argv(config, cell)]))
            print(f"{state}  {cell.path}\n      {command}", file=out)
            continue
        pipeline_config = cell_pipeline_config(config, cell)
        phases = cell_phases(config, cell, check_data=False)
        plan = plan_fingerprints(pipeline_config, phases)
        print(f"{state}  {cell.path}  ({len(phases)} phases)", file=out)
        for domain in domains(pipeline_config):
            if domain.spec.files:  # published files by name: no raw folder
                continue
            raw = raw_dir(pipeline_config, domain.spec.subdir)
            if not raw.is_dir():
                print(f"  todo  [data] {raw} not found: the run fetches it with --download (the "
                      f"{domain.spec.subdir} release) or reads a copy put there", file=out)
        # a mix of several sources has no known size: its records are read once prepared, else assumed
        subdirs = {d.folder: d.spec.subdir for d in domains(pipeline_config) if not pipeline_config.source_datasets
                   or d.which == "target"}
        speed, what = train_throughput(est, pipeline_config)
        figures.setdefault(what, []).append(cell.path)
        train = forward = 0.0
        for phase in phases:
            done = {"reused": "done", "rerun": "stale"}.get(plan[phase.key].status, "todo")
            print(f"  {done}  [{phase.key}]  {mask_secrets(shlex.join(phase.command_line(pipeline_config)))}",
                  file=out)
            t, f = phase_tokens(phase, est, cache, subdirs)
            train, forward = train + t, forward + f
        hours = train / speed / 3600 + forward / est["eval_tokens_per_s"] / 3600
        rows.append((cell.path, train, forward, hours))
        total_train, total_forward = total_train + train, total_forward + forward
    total = sum(r[3] for r in rows)
    print("\nGPU-hours estimate (an upper bound: early stopping ends phases sooner; baselines run on CPU):", file=out)
    for what, paths in figures.items():
        print(f"  training throughput per GPU: {what} [{', '.join(paths)}]", file=out)
    print(f"  forward throughput per GPU: {est['eval_tokens_per_s']:,.0f} tokens/s (assumed); tokens per record "
          f"{est['tokens_per_record']}", file=out)
    origins = {}
    for path, origin in cache.get("origin", {}).items():
        origins.setdefault(origin, []).append(f"{Path(path).parent.name}/{Path(path).name} {cache[path]:,}")
    for origin, counts in origins.items():
        print(f"  records ({origin}): {', '.join(dict.fromkeys(counts))}", file=out)
    for path, train, forward, hours in rows:
        print(f"  {path}: {train / 1e6:,.1f} M training + {forward / 1e6:,.1f} M forward tokens -> {hours:,.1f} "
              "GPU-hours", file=out)
    print(f"  total: {total_train / 1e6:,.1f} M training + {total_forward / 1e6:,.1f} M forward tokens -> "
          f"{total:,.1f} GPU-hours", file=out)
    return total
